"""Config releases on the real broker: published, applied by a running router and sender
at the same instant, stamped on requests and outcomes, an invalid release refused by the
publisher and ignored by the workers, rolled back, and stored in ClickHouse."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sendkit import opt_in, sender, simulator
from stages import settle, stage
from test_replays import _wait_sink_caught_up
from test_router import load_profiles
from test_sink import query

from pipeline import kafka_io, releases, topics
from pipeline.errors import ConfigError
from pipeline.procs import settings_env
from pipeline.samples import make_profile, order_event
from pipeline.settings import ROOT, Settings

pytestmark = pytest.mark.integration

NEW_TEXT = "ru: 'Заказ {{ event.order_id }} уже в пути'\n  en: 'Order {{ event.order_id }} is on its way'\n"


def cli(cfg: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          env=settings_env(cfg) | {"RASSYLKA_AUTHOR": "ops@test"},
                          capture_output=True, text=True, timeout=120)


def shipped(rng: random.Random, profiles: list[dict], tag: str) -> list[tuple[str, dict]]:
    now = int(time.time() * 1000)
    return [(p["customer_id"], order_event(rng, p["customer_id"], "shipped", now)
             | {"order_id": f"{tag}-{i}", "event_id": f"{tag}-{i}"})
            for i, p in enumerate(profiles)]


def test_release_applies_everywhere_at_once_and_is_stamped_audited_and_rolled_back(
        ns: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(ns.config_dir, folder)
    cfg = replace(ns, config_dir=folder)

    # the publisher refuses an invalid config, naming the file; nothing reaches the topic
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "rules.yaml").write_text((broken / "rules.yaml").read_text(encoding="utf-8")
                                       .replace("lane: transactional", "lane: sideways", 1),
                                       encoding="utf-8")
    run = cli(cfg, "config", "publish", "-m", "broken", "--config-dir", str(broken))
    assert run.returncode == 1 and "rules.yaml" in run.stderr + run.stdout, run.stderr
    assert releases.history(cfg) == []
    run = cli(cfg, "config", "publish", "-m", "first release")
    assert run.returncode == 0, run.stderr
    v1 = releases.history(cfg)[-1]
    assert (v1.version, v1.author, v1.message) == ("v1", "ops@test", "first release")

    rng = random.Random(5)
    profiles = [make_profile(rng, 7000 + i) | {"phone": f"+7916700{i:04d}", "locale": "ru"}
                for i in range(6)]
    opt_in(cfg, [p["phone"] for p in profiles])
    # the workers read config/ nowhere: the folder they were given is emptied
    shutil.rmtree(folder)
    folder.mkdir()
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path), stage(cfg, ["router"], tmp_path):
        load_profiles(cfg, profiles)
        kafka_io.publish(cfg, topics.ORDER_STATUS, shipped(rng, profiles, "a"), "order_status_changed")
        first = kafka_io.read_topic(cfg, topics.OUTCOMES, lambda m: len(m) >= len(profiles), 60)
        assert {m.record["config_version"] for m in first} == {v1.stamp}

        changed = dict(v1.files)
        template = changed["templates/order_shipped.yaml"]
        changed["templates/order_shipped.yaml"] = template[:template.index("ru:")] + NEW_TEXT
        v2 = releases.publish(cfg, changed, "shorter shipped text", "ops@test")
        assert v2.diff == {"added": [], "removed": [], "changed": ["templates/order_shipped.yaml"]}
        # a release no worker can load, put on the topic past the publisher's check
        bad = replace(v2, number=3, files={**changed, "rules.yaml": "rules: [{id: x}]\n"},
                      activate_at_ms=v2.activate_at_ms)
        kafka_io.publish(cfg, topics.CONFIG, [("release:00000003", bad.to_json())])
        time.sleep(max(0.0, (v2.activate_at_ms - time.time() * 1000) / 1000) + 1.0)
        kafka_io.publish(cfg, topics.ORDER_STATUS, shipped(rng, profiles, "b"), "order_status_changed")
        outcomes = kafka_io.read_topic(cfg, topics.OUTCOMES, lambda m: len(m) >= 2 * len(profiles), 60)
        requests = settle(cfg, topics.REQUESTS_TRANSACTIONAL, idle=2.0)
    second = [m.record for m in outcomes if m.record["request_id"] not in
              {f.record["request_id"] for f in first}]
    assert len(second) == len(profiles)
    assert {o["config_version"] for o in second} == {v2.stamp}, "the sender switched; v3 ignored"
    later = [m.record for m in requests if m.record["event_id"].startswith("b-")]
    assert {r["config_version"] for r in later} == {v2.stamp}, "the router switched; v3 ignored"
    assert all("уже в пути" in r["text"] for r in later)

    run = cli(cfg, "config", "diff", "v1", "v2")
    assert run.returncode == 0 and "+  ru: 'Заказ {{ event.order_id }} уже в пути'" in run.stdout
    run = cli(cfg, "config", "rollback", "v1", "-m", "text was wrong")
    assert run.returncode == 0, run.stderr
    v4 = releases.history(cfg)[-1]
    assert (v4.number, v4.rollback_of, v4.content_hash) == (4, "v1", v1.content_hash)
    with pytest.raises(ConfigError, match="nothing to publish"):
        releases.publish(cfg, v1.files, "same again", "ops@test")
    run = cli(cfg, "config", "history")
    assert run.returncode == 0 and "rollback to v1" in run.stdout and "ops@test" in run.stdout

    with stage(cfg, ["sink"], tmp_path) as proc:
        _wait_sink_caught_up(cfg, proc)  # outcomes end in transaction markers
    stored = query(cfg, "SELECT version, author, rollback_of, changed FROM rassylka.config_releases "
                        "FINAL ORDER BY number")
    assert [r["version"] for r in stored] == ["v1", "v2", "v3", "v4"]
    assert stored[1]["changed"] == ["templates/order_shipped.yaml"] and stored[3]["rollback_of"] == "v1"
    joined = query(cfg, "SELECT r.version AS version, count() AS n FROM rassylka.messages AS m "
                        "FINAL INNER JOIN rassylka.config_releases AS r FINAL "
                        "ON m.config_version = r.stamp GROUP BY version ORDER BY version")
    assert joined == [{"version": "v1", "n": len(profiles)}, {"version": "v2", "n": len(profiles)}]
    assert json.dumps(stored)  # plain values


def test_a_worker_started_on_files_takes_the_first_release_when_it_comes(
        ns: Settings, tmp_path: Path) -> None:
    """RASSYLKA_CONFIG_SOURCE=auto with no release yet: config/ now, and the first release
    published later is applied without a restart (it was not, before: the worker stopped
    following the topic)."""
    live = releases.LiveConfig(ns, "probe")
    try:
        assert live.folder == ns.config_dir and live.stamp.startswith("files@")
        assert live.changed() is None
        v1 = releases.publish(ns, releases.read_files(ns.config_dir), "first", "ops@test",
                              activate_after_ms=0)
        deadline = time.monotonic() + 20
        change = None
        while change is None and time.monotonic() < deadline:
            change = live.changed()
            time.sleep(live.check_every_s)
        assert change is not None and change[1] == v1.stamp
        assert (change[0] / "rules.yaml").read_text(encoding="utf-8") == v1.files["rules.yaml"]
        assert live.changed() is None
    finally:
        live.close()
