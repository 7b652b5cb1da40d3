"""Follow-ups: a payment reminder schedules an "overdue" notice, cancelled when the order
is paid first; pending follow-ups survive a SIGKILL of the campaign worker."""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import yaml
from stages import kill, settle, stage
from test_router import load_profiles

from pipeline import kafka_io, topics
from pipeline.campaigns.runner import read_latest
from pipeline.rules.loader import load_ruleset
from pipeline.samples import make_profile, order_event, payment_event
from pipeline.settings import Settings


def follow_up_config(tmp_path: Path, src: Path, after: str = "20s") -> Path:
    dst = tmp_path / "config"
    shutil.copytree(src, dst)
    (dst / "campaigns").mkdir(exist_ok=True)
    rules = yaml.safe_load((dst / "rules.yaml").read_text(encoding="utf-8"))
    reminder = next(r for r in rules["rules"] if r["id"] == "payment_due_reminder")
    reminder["follow_up"] = {"after": after, "rule": "payment_overdue",
                             "unless": {"event": "order_status_changed",
                                        "when": {"status": "paid"}, "match": ["order_id"]}}
    rules["rules"].append({"id": "payment_overdue", "event": "payment_due",
                           "trigger": "follow_up", "template": "payment_overdue",
                           "lane": "transactional", "priority": 40, "ttl": "12h"})
    (dst / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    template = {"id": "payment_overdue", "description": "overdue notice",
                "locales": {"ru": "Счёт {{ event.invoice_id }} просрочен",
                            "en": "Invoice {{ event.invoice_id }} is overdue"}}
    (dst / "templates" / "payment_overdue.yaml").write_text(
        yaml.safe_dump(template, allow_unicode=True), encoding="utf-8")
    return dst


def test_follow_up_goes_out_unless_the_cancelling_event_came_first(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=follow_up_config(tmp_path, ns.config_dir))
    assert load_ruleset(cfg.config_dir)  # the config is valid
    rng = random.Random(31)
    profiles = [make_profile(rng, 3000 + i) for i in range(20)]
    now = int(time.time() * 1000)
    due = []
    for i, p in enumerate(profiles):
        due.append(payment_event(rng, p["customer_id"], now) | {"order_id": f"ORD-{i}"})
    paid = [order_event(rng, p["customer_id"], "paid", now) | {"order_id": f"ORD-{i}"}
            for i, p in enumerate(profiles) if i % 2 == 0]
    # Paid, but another order: does not cancel.
    paid.append(order_event(rng, profiles[1]["customer_id"], "paid", now) | {"order_id": "OTHER"})
    with stage(cfg, ["router"], tmp_path):
        load_profiles(cfg, profiles)
        with stage(cfg, ["campaign", "worker"], tmp_path) as worker:
            kafka_io.publish(cfg, topics.PAYMENT_DUE, [(e["customer_id"], e) for e in due],
                             "payment_due")
            deadline = time.monotonic() + 30
            while len(read_latest(cfg, topics.FOLLOW_UPS)) < len(due) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(read_latest(cfg, topics.FOLLOW_UPS)) == len(due), "one pending per reminder"
            kill(worker)  # pending follow-ups live in Kafka, not in the worker
        kafka_io.publish(cfg, topics.ORDER_STATUS, [(e["customer_id"], e) for e in paid],
                         "order_status_changed")
        with stage(cfg, ["campaign", "worker", "--loglevel", "debug"], tmp_path):
            kafka_io.read_topic(cfg, topics.REQUESTS_TRANSACTIONAL, lambda m: sum(
                1 for x in m if x.record["rule_id"] == "payment_overdue") >= len(due) // 2, 90)
            requests = settle(cfg, topics.REQUESTS_TRANSACTIONAL, idle=4.0, timeout=40)
    overdue = [m.record for m in requests if m.record["rule_id"] == "payment_overdue"]
    unpaid = {p["customer_id"] for i, p in enumerate(profiles) if i % 2 == 1}
    assert Counter(r["customer_id"] for r in overdue) == Counter(unpaid), "one per unpaid order"
    for r in overdue:
        assert "просрочен" in r["text"] or "overdue" in r["text"]
        assert r["event_id"].endswith("~payment_overdue")
    assert not read_latest(cfg, topics.FOLLOW_UPS), "nothing left pending"
