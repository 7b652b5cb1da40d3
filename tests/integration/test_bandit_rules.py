"""Rules that learn: a `strategy: bandit` rule's weights are drawn from its own results,
recorded, and followed by the router."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import yaml
from stages import stage, wait_for
from test_router import load_profiles

from pipeline import kafka_io, topics
from pipeline.campaigns.learning import BanditLearner, current_weights
from pipeline.procs import settings_env
from pipeline.rules.loader import load_ruleset
from pipeline.samples import make_profile, promotion_event
from pipeline.settings import ROOT, Settings


def bandit_config(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / "config"
    shutil.copytree(src, dst)
    rules = yaml.safe_load((dst / "rules.yaml").read_text(encoding="utf-8"))
    rule = next(r for r in rules["rules"] if r["id"] == "promotion_discount")
    rule["strategy"] = "bandit"
    rule["bandit"] = {"metric": "click", "min_share": 0.1, "every": "1h"}
    (dst / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    return dst


def test_bandit_weights_follow_clicks_and_the_router_uses_them(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=bandit_config(tmp_path, ns.config_dir))
    now = int(time.time() * 1000)
    outcomes, clicks = [], []
    for variant, clicked in (("a", 4), ("b", 40)):
        for i in range(200):
            mid = f"m-{variant}-{i}"
            outcomes.append((f"r-{variant}-{i}", {
                "request_id": f"r-{variant}-{i}", "message_id": mid, "status": "submitted",
                "reason": None, "detail": None, "lane": "marketing", "rule_id": "promotion_discount",
                "template_id": f"promo_discount_{variant}", "variant": variant, "campaign_id": None,
                "customer_id": f"c-{variant}-{i}", "phone": f"+7916{i:07d}", "region": None,
                "operator": None, "gateway": "smpp", "gateway_message_ids": [f"g-{mid}"],
                "segments": 1, "encoding": "UCS2", "cost": 2.5, "event_occurred_at_ms": now,
                "decided_at_ms": now, "attempts": 1}))
            if i < clicked:
                clicks.append((mid, {"click_id": f"k-{mid}", "code": "x", "message_id": mid,
                                     "url": "https://shop.example.ru", "clicked_at_ms": now,
                                     "user_agent": "t"}))
    kafka_io.publish(cfg, topics.OUTCOMES, outcomes, "send_outcome")
    kafka_io.publish(cfg, topics.CLICKS, clicks, "click")

    learner = BanditLearner(cfg, load_ruleset(cfg.config_dir))
    assert learner.tick(now) == ["promotion_discount"]
    assert learner.tick(now + 1000) == [], "not again before `every`"
    record = current_weights(cfg)["promotion_discount"]
    assert record["weights"]["b"] > 0.85 and record["weights"]["a"] >= 0.1  # the floor
    assert record["inputs"]["variants"]["b"]["successes"] == 40
    decisions = kafka_io.read_topic(cfg, topics.CAMPAIGN_DECISIONS, None, 5, idle=1.0)
    assert len(decisions) == 1
    shown = subprocess.run([sys.executable, "-m", "pipeline.cli", "rules", "weights"], cwd=ROOT,
                           env=settings_env(cfg), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "promotion_discount (click)" in shown.stdout and "40" in shown.stdout, shown.stdout

    rng = random.Random(4)
    profiles = [make_profile(rng, 1000 + i) | {"segments": []} for i in range(300)]
    events = [promotion_event(rng, p["customer_id"], now, "") | {"discount_percent": 10}
              for p in profiles]
    with stage(cfg, ["router"], tmp_path):
        load_profiles(cfg, profiles)
        kafka_io.publish(cfg, topics.PROMOTION, [(e["customer_id"], e) for e in events], "promotion")
        requests = wait_for(cfg, topics.REQUESTS_MARKETING, len(events), timeout=60)
    shares = Counter(m.record["variant"] for m in requests)
    assert shares["b"] > 0.75 * len(events), shares  # the rule's own weights are 50/50
    assert shares["a"] > 0.04 * len(events), shares
