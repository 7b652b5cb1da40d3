"""Campaigns on the real broker: a frozen audience fanned out exactly once across a SIGKILL
of the campaign worker, at its pace; pause, resume and cancel; the automatic decision."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from stages import kill, settle, stage

from pipeline import kafka_io, topics
from pipeline.campaigns.model import Campaign, assign, load_campaigns
from pipeline.campaigns.runner import (
    CampaignError,
    CampaignRunner,
    read_latest,
    send_command,
    start_campaign,
)
from pipeline.settings import Settings

RATE_PER_MINUTE = 3000  # 50 a second


def campaign_config(tmp_path: Path, src: Path, **changes: object) -> Path:
    """A copy of `src` with one campaign, `spring`, testing variants a and b."""
    dst = tmp_path / "config"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    shutil.rmtree(dst / "campaigns", ignore_errors=True)
    (dst / "campaigns").mkdir()
    (dst / "segments.yaml").write_text(
        "segments:\n  engaged:\n    description: Clicked in the last 30 days.\n"
        "    where: {clicked: {within_days: 30}}\n", encoding="utf-8")
    spec = {
        "id": "spring", "audience": {"segment": "engaged"}, "rule": "promotion_discount",
        "variants": ["a", "b"], "promotion": {"promo_code": "SPRING", "discount_percent": 10},
        "pacing": {"per_minute": RATE_PER_MINUTE},
        "test": {"fraction": 1.0, "holdout": 0.1, "evaluate_after": "1s"},
        "decision": {"min_sample_per_variant": 5000}, "on_no_winner": "stop",
    } | changes
    (dst / "campaigns" / "spring.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return dst


def started(ns: Settings, tmp_path: Path, members: int, **changes: object) -> tuple[Settings, Campaign, list[str]]:
    cfg = replace(ns, config_dir=campaign_config(tmp_path, ns.config_dir, **changes))
    campaign = load_campaigns(cfg.config_dir)["spring"]
    customers = [f"c{i:05d}" for i in range(members)]
    start_campaign(cfg, campaign, ("a", "b"), [(c, "Europe/Moscow") for c in customers])
    return cfg, campaign, customers


def campaign_events(cfg: Settings, count: int, timeout: float = 60.0) -> list[dict]:
    got = kafka_io.read_topic(cfg, topics.PROMOTION, lambda m: len(m) >= count, timeout)
    return [m.record for m in got if m.record and m.record["campaign_id"] == "spring"]


def status(cfg: Settings) -> dict:
    return read_latest(cfg, topics.CAMPAIGN_PROGRESS).get("spring") or {}


def sendable_of(campaign: Campaign, customers: list[str]) -> set[str]:
    """The members a campaign testing a and b sends to: all but its hold-out."""
    return {c for c in customers if assign(campaign, ("a", "b"), c)[0] != "holdout"}


def finish_and_count_once(cfg: Settings, tmp_path: Path, sendable: set[str]) -> None:
    """Run a worker until every sendable member has an event; each has exactly one."""
    with stage(cfg, ["campaign", "worker"], tmp_path):
        campaign_events(cfg, len(sendable), timeout=60)
    events = [m.record for m in settle(cfg, topics.PROMOTION, idle=2.0)]
    per_customer = Counter(e["customer_id"] for e in events)
    assert set(per_customer) == sendable and set(per_customer.values()) == {1}


def command_and_wait(cfg: Settings, command: str, wanted: str, timeout: float = 15.0) -> None:
    """Send `command` to the campaign and wait (bounded) until its status is `wanted`."""
    send_command(cfg, "spring", command)
    deadline = time.monotonic() + timeout
    while status(cfg).get("status") != wanted and time.monotonic() < deadline:
        time.sleep(0.2)


def test_campaign_sends_each_member_once_across_a_sigkill_at_its_pace(
        ns: Settings, tmp_path: Path) -> None:
    cfg, campaign, customers = started(ns, tmp_path, 400)
    expected = {c: assign(campaign, ("a", "b"), c) for c in customers}
    sendable = {c for c, (phase, _v) in expected.items() if phase != "holdout"}
    assert 20 < len(customers) - len(sendable) < 80, "about a tenth is held out"
    for _ in range(2):  # SIGKILL the worker twice mid-fan-out
        with stage(cfg, ["campaign", "worker"], tmp_path) as worker:
            campaign_events(cfg, 60 if _ == 0 else 180)
            kill(worker)
    with stage(cfg, ["campaign", "worker"], tmp_path):
        campaign_events(cfg, len(sendable), timeout=60)
        deadline = time.monotonic() + 30
        while status(cfg).get("status") not in ("stopped", "done") and time.monotonic() < deadline:
            time.sleep(0.5)
    events = [m.record for m in settle(cfg, topics.PROMOTION, idle=2.0)]
    per_customer = Counter(e["customer_id"] for e in events)
    assert set(per_customer) == sendable, "every member but the hold-out, nobody else"
    assert set(per_customer.values()) == {1}, "nobody twice"
    for e in events:
        assert e["event_id"] == f"campaign:spring:{e['customer_id']}"
        assert e["attributes"]["campaign_variant"] == expected[e["customer_id"]][1]
        assert e["attributes"]["campaign_rule"] == "promotion_discount"
    # Pacing: 50 a second at most (the first second's burst aside), SIGKILLs included.
    times = sorted(e["occurred_at_ms"] for e in events)
    assert (times[-1] - times[0]) / 1000 >= (len(events) - 50) / (RATE_PER_MINUTE / 60) * 0.9
    final = status(cfg)
    assert final["status"] == "stopped" and final["decision"]["action"] == "no_winner"
    assert final["sent"] == {"test": len(sendable)}


def test_a_campaign_started_while_its_worker_starts_is_run(ns: Settings, tmp_path: Path) -> None:
    """The start command lands after the worker has read the commands so far and before
    it follows the control topic (here: while its producer initialises its transactions).
    Before, the worker followed from the topic's end then and never ran the campaign.
    Records that are not JSON objects, before and after the start, are skipped."""
    cfg = replace(ns, config_dir=campaign_config(tmp_path, ns.config_dir))
    junk = kafka_io.producer(cfg)
    junk.produce(cfg.topic(topics.CAMPAIGN_CONTROL), key=b"junk", value=b"{not json")
    junk.flush(30)
    campaign = load_campaigns(cfg.config_dir)["spring"]
    customers = [f"c{i:05d}" for i in range(40)]
    sendable = sendable_of(campaign, customers)
    runner = CampaignRunner(cfg, {"spring": campaign}, worker_id="race")
    new_producer = runner._new_producer

    def started_meanwhile() -> object:
        producer = new_producer()
        start_campaign(cfg, campaign, ("a", "b"), [(c, "Europe/Moscow") for c in customers])
        junk.produce(cfg.topic(topics.CAMPAIGN_CONTROL), key=b"junk", value=b"[1, 2]")
        junk.flush(30)
        return producer

    runner._new_producer = started_meanwhile  # type: ignore[method-assign]
    worker = threading.Thread(target=runner.run, daemon=True)
    worker.start()
    try:
        events = campaign_events(cfg, len(sendable), timeout=30)
    finally:
        runner.stop()
        worker.join(30)
    assert {e["customer_id"] for e in events} == sendable
    assert status(cfg)["status"] in ("running", "evaluating")


def test_pause_resume_cancel_and_a_campaign_starts_once(ns: Settings, tmp_path: Path) -> None:
    cfg, campaign, customers = started(ns, tmp_path, 1000, pacing={"per_minute": 1200})
    try:
        start_campaign(cfg, campaign, ("a", "b"), [(c, "") for c in customers])
        raise AssertionError("a second start must be refused")
    except CampaignError as exc:
        assert "already started" in str(exc)
    with stage(cfg, ["campaign", "worker"], tmp_path):
        campaign_events(cfg, 40)
        command_and_wait(cfg, "pause", "paused")
        paused = len(settle(cfg, topics.PROMOTION, idle=2.0))
        time.sleep(2.0)
        assert len(settle(cfg, topics.PROMOTION, idle=1.0)) == paused, "nothing while paused"
        send_command(cfg, "spring", "resume")
        campaign_events(cfg, paused + 20)
        command_and_wait(cfg, "cancel", "cancelled")
        cancelled = len(settle(cfg, topics.PROMOTION, idle=2.0))
        time.sleep(2.0)
        assert len(settle(cfg, topics.PROMOTION, idle=1.0)) == cancelled, "nothing once cancelled"
    final = status(cfg)
    assert final["status"] == "cancelled"
    assert paused < cancelled < 900
    decisions = kafka_io.read_topic(cfg, topics.CAMPAIGN_DECISIONS, None, 5, idle=1.0)
    assert not decisions
    assert final["sent"]["test"] == cancelled


def test_a_paused_or_resumed_campaign_runs_on_after_its_worker_restarts(
        ns: Settings, tmp_path: Path) -> None:
    """The control topic keeps the newest command per campaign. Before, a worker that
    started after a pause or a resume found no start there and never ran the campaign
    again: a resumed campaign stopped for good at the worker's next restart. Every command
    now carries the start's audience, and a command written before that is completed from
    the start still in the topic."""
    cfg, campaign, customers = started(ns, tmp_path, 300, pacing={"per_minute": 1200})
    sendable = sendable_of(campaign, customers)
    with stage(cfg, ["campaign", "worker"], tmp_path):
        campaign_events(cfg, 20)
        command_and_wait(cfg, "pause", "paused")
    paused = len(settle(cfg, topics.PROMOTION, idle=1.0))
    assert status(cfg)["status"] == "paused" and paused < len(sendable)
    with stage(cfg, ["campaign", "worker"], tmp_path):  # a new worker, the campaign paused
        time.sleep(2.0)
        assert len(settle(cfg, topics.PROMOTION, idle=1.0)) == paused, "still paused"
        send_command(cfg, "spring", "resume")
        campaign_events(cfg, paused + 20)
    # the newest command is now a resume; a resume as older workers wrote it (without the
    # start's audience) as well: the worker after them runs the campaign to its end
    legacy = kafka_io.producer(cfg)
    legacy.produce(cfg.topic(topics.CAMPAIGN_CONTROL), key=b"spring",
                   value=b'{"command": "resume", "at_ms": 1}')
    legacy.flush(30)
    finish_and_count_once(cfg, tmp_path, sendable)


def test_a_campaign_whose_audience_the_retention_took_is_not_declared_done(
        ns: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The audience topic had the broker's retention (a day on the local broker): a worker
    that started after it found no members and declared the campaign done, every member
    "sent to". The topic now keeps snapshots 90 days, and a snapshot short of its members
    is reported and the campaign left as it is."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": ns.kafka_bootstrap})
    audience = ns.topic(topics.CAMPAIGN_AUDIENCE)
    resource = ConfigResource(ConfigResource.Type.TOPIC, audience)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert int(config["retention.ms"].value) == 90 * 24 * 3600 * 1000
    cfg, campaign, _customers = started(ns, tmp_path, 50)
    # what the broker's retention does to old segments
    cut = admin.delete_records([TopicPartition(audience, 0, 40)])
    for future in cut.values():
        future.result(timeout=30)
    runner = CampaignRunner(cfg, {"spring": campaign}, worker_id="retention")
    worker = threading.Thread(target=runner.run, daemon=True)
    with caplog.at_level("ERROR", logger="pipeline.campaigns.runner"):
        worker.start()
        try:
            time.sleep(3.0)
        finally:
            runner.stop()
            worker.join(30)
    assert "holds 10 of its 50 members" in caplog.text
    assert status(cfg) == {}, "left as it was, not done"
    assert not kafka_io.read_topic(cfg, topics.PROMOTION, None, 3, idle=1.0)


def test_a_campaign_started_twice_at_once_goes_on_with_its_first_snapshot(
        ns: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two operators start one campaign at the same moment: both pass the "already
    started" check before either start lands. Before, a worker restarted after that took
    the newer snapshot, found no progress for it and began the campaign again: every member
    it had reached got a second event. The progress's snapshot now wins."""
    from pipeline.campaigns import runner as runner_module

    cfg, campaign, customers = started(ns, tmp_path, 300, pacing={"per_minute": 1200})
    sendable = sendable_of(campaign, customers)
    with stage(cfg, ["campaign", "worker"], tmp_path):
        campaign_events(cfg, 40)
    # the second operator's start, as if its check had run before the first start landed
    monkeypatch.setattr(runner_module, "read_latest", lambda settings, name: {})
    start_campaign(cfg, campaign, ("a", "b"), [(c, "Europe/Moscow") for c in customers])
    monkeypatch.undo()
    finish_and_count_once(cfg, tmp_path, sendable)


def test_two_operators_starting_a_campaign_at_once_start_it_once(
        ns: Settings, tmp_path: Path) -> None:
    """Two starts of one campaign at the same moment. Before, both passed the "already
    started" check before either start landed, and both operators were told "started":
    two start commands, two audience snapshots. Now the start command is committed under
    the campaign's own transactional id, read after fencing any other start: exactly one
    start succeeds, the other operator gets an error naming the campaign."""
    cfg = replace(ns, config_dir=campaign_config(tmp_path, ns.config_dir))
    campaign = load_campaigns(cfg.config_dir)["spring"]
    members = [(f"c{i:05d}", "Europe/Moscow") for i in range(2000)]
    go = threading.Barrier(2)
    results: list[object] = []

    def operator() -> None:
        go.wait(10)
        try:
            results.append(start_campaign(cfg, campaign, ("a", "b"), members))
        except CampaignError as exc:
            results.append(exc)

    operators = [threading.Thread(target=operator) for _ in range(2)]
    for t in operators:
        t.start()
    for t in operators:
        t.join(120)
    assert len(results) == 2, "both starts answered"
    errors = [r for r in results if isinstance(r, CampaignError)]
    assert len(errors) == 1, f"exactly one start refused, got {results}"
    assert "spring" in str(errors[0])
    starts = [m for m in kafka_io.read_topic(cfg, topics.CAMPAIGN_CONTROL, None, 5, idle=1.0)
              if m.key == b"spring"]
    assert len(starts) == 1, f"one start command on the control topic, got {len(starts)}"


def test_campaign_decides_from_the_test_group_and_rolls_out_the_winner(
        ns: Settings, tmp_path: Path) -> None:
    """Through the real router, sender and SMSC simulator: customers of the test group
    click variant b's SMS far more often than a's; the worker decides b from the facts
    and the rest of the audience gets b. Every SMS carries the campaign's variant."""
    import random

    from sendkit import config_with, opt_in, phone, sender, simulator

    from pipeline.samples import make_profile

    base = config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={})
    cfg = replace(ns, config_dir=campaign_config(
        tmp_path, base, test={"fraction": 0.5, "holdout": 0.0, "evaluate_after": "25s"},
        decision={"min_sample_per_variant": 60, "win_probability": 0.95},
        guardrails={"max_opt_out_rate": 0.5, "max_failure_rate": 0.5, "min_sample": 50},
        on_no_winner="stop"))
    rng = random.Random(21)
    profiles = [make_profile(rng, i) | {"phone": phone(700_000 + i), "segments": [],
                                        "time_zone": "Europe/Moscow"} for i in range(300)]
    opt_in(cfg, [p["phone"] for p in profiles])
    kafka_io.publish(cfg, topics.PROFILES, [(p["customer_id"], p) for p in profiles],
                     "customer_profile")
    campaign = load_campaigns(cfg.config_dir)["spring"]
    members = [(p["customer_id"], "Europe/Moscow") for p in profiles]
    plan = {c: assign(campaign, ("a", "b"), c) for c, _z in members}
    test_group = {c for c, (phase, _v) in plan.items() if phase == "test"}
    with simulator(tmp_path, "--latency-ms", "1-5") as sim, sender(cfg, sim, tmp_path), \
            stage(cfg, ["router"], tmp_path), stage(cfg, ["campaign", "worker"], tmp_path):
        start_campaign(cfg, campaign, ("a", "b"), members)
        test_outcomes = kafka_io.read_topic(
            cfg, topics.OUTCOMES,
            lambda m: len({x.record["customer_id"] for x in m if x.record}) >= len(test_group), 90)
        clicks = []
        for o in (m.record for m in test_outcomes):
            assert o["campaign_id"] == "spring" and o["variant"] == plan[o["customer_id"]][1]
            share = 0.6 if o["variant"] == "b" else 0.05
            if o["status"] == "submitted" and rng.random() < share:
                clicks.append((o["message_id"], {
                    "click_id": f"k-{o['message_id']}", "code": "x", "message_id": o["message_id"],
                    "url": "https://shop.example.ru/sale", "clicked_at_ms": o["decided_at_ms"] + 1,
                    "user_agent": "test"}))
        kafka_io.publish(cfg, topics.CLICKS, clicks, "click")
        deadline = time.monotonic() + 120
        while status(cfg).get("status") not in ("done", "stopped") and time.monotonic() < deadline:
            time.sleep(1.0)
        outcomes = kafka_io.read_topic(cfg, topics.OUTCOMES, lambda m: len(m) >= len(members), 60)
    final = status(cfg)
    assert final["status"] == "done", final
    assert final["decision"]["action"] == "rollout" and final["winner"] == "b", final["decision"]
    by_customer = Counter(m.record["customer_id"] for m in outcomes)
    assert set(by_customer) == {c for c, _z in members} and set(by_customer.values()) == {1}
    for m in outcomes:
        phase, variant = plan[m.record["customer_id"]]
        assert m.record["variant"] == (variant if phase == "test" else "b")
    decisions = kafka_io.read_topic(cfg, topics.CAMPAIGN_DECISIONS, None, 5, idle=1.0)
    assert len(decisions) == 1


def test_plan_counts_the_audience_its_consent_and_cost_from_clickhouse(
        ns: Settings, tmp_path: Path) -> None:
    """Profiles and consent reach ClickHouse through the real sink; `rassylka campaign
    plan` (a dry run: it sends nothing) counts the segment minus the exclusion, the split,
    the members with marketing consent and the cost."""
    import random
    import subprocess
    import sys

    from sendkit import opt_in, phone
    from test_replays import _wait_sink_caught_up
    from test_sink import outcome

    from pipeline.procs import settings_env
    from pipeline.samples import make_profile
    from pipeline.settings import ROOT

    cfg = replace(ns, config_dir=campaign_config(
        tmp_path, ns.config_dir, audience={"segment": "engaged", "exclude": ["muscovites"]},
        test={"fraction": 0.5, "holdout": 0.2, "evaluate_after": "1h"}))
    (cfg.config_dir / "segments.yaml").write_text(
        "segments:\n  engaged:\n    description: Russian customers.\n    where: {country: RU}\n"
        "  muscovites:\n    description: Tagged msk.\n    where: {tag: msk}\n", encoding="utf-8")
    rng = random.Random(41)
    profiles = [make_profile(rng, 5000 + i) | {"phone": phone(800_000 + i), "country": "RU",
                                               "segments": ["msk"] if i % 5 == 0 else []}
                for i in range(100)]
    # numbers the sender would reject: not numbers, a Moscow landline, a US mobile
    odd = {1: "+7 123", 3: "not a phone", 7: "+74951234567", 9: "+12015550123"}
    for i, number in odd.items():
        profiles[i]["phone"] = number
    kafka_io.publish(cfg, topics.PROFILES, [(p["customer_id"], p) for p in profiles],
                     "customer_profile")
    opt_in(cfg, [p["phone"] for i, p in enumerate(profiles) if i % 2 == 0 or i in odd])
    # two marketing SMS in the last hour reach the 2-per-24h cap of config/limits.yaml
    capped = [i for i in range(100) if i % 5 and i % 2 == 0][:3]
    now = int(time.time() * 1000)
    kafka_io.publish(cfg, topics.OUTCOMES, [
        (f"cap-{i}-{n}", outcome(i * 10 + n, request_id=f"cap-{i}-{n}", lane="marketing",
                                 status="submitted", phone=profiles[i]["phone"],
                                 decided_at_ms=now - 600_000 * (n + 1)))
        for i in capped for n in range(2)], "send_outcome")
    with stage(cfg, ["sink"], tmp_path) as sink:
        _wait_sink_caught_up(cfg, sink)
    before = len(kafka_io.read_topic(cfg, topics.PROMOTION, None, 5, idle=1.0))
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "campaign", "plan", "spring"],
                         cwd=ROOT, env=settings_env(cfg), capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "80 in the audience" in out, out  # 100 minus the 20 tagged msk
    members = [i for i in range(100) if i % 5]
    valid = [i for i in members if i not in odd]
    opted = [i for i in valid if i % 2 == 0]
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in out.splitlines() if line.count("│") >= 5}
    assert rows["number is not a valid number"][:2] == ["-2", f"{len(members) - 2}"], rows
    assert rows["number is not a mobile"][:2] == ["-1", f"{len(members) - 3}"], rows
    assert rows["region outside allowed_regions"][:2] == ["-1", f"{len(valid)}"], rows
    assert rows["no marketing opt-in"][:2] == [f"-{len(valid) - len(opted)}", f"{len(opted)}"]
    assert rows["at a frequency cap now"][:2] == ["-3", f"{len(opted) - 3}"], rows
    assert "cost: about" in out and "holdout" in out and "the winner" in out
    assert len(kafka_io.read_topic(cfg, topics.PROMOTION, None, 5, idle=1.0)) == before, \
        "a plan sends nothing"


def test_guardrail_stops_a_campaign_whose_test_group_opts_out(ns: Settings, tmp_path: Path) -> None:
    """Through the real router, sender and SMSC simulator: a fifth of the test group opts
    out after its SMS (limit 5%); the worker stops the campaign with the guardrail, names
    the variant, and the rest of the audience gets nothing."""
    import random

    from sendkit import config_with, opt_in, phone, sender, simulator

    from pipeline.samples import make_profile

    base = config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={})
    cfg = replace(ns, config_dir=campaign_config(
        tmp_path, base, test={"fraction": 0.5, "holdout": 0.0, "evaluate_after": "15s"},
        decision={"min_sample_per_variant": 1000},
        guardrails={"max_opt_out_rate": 0.05, "max_failure_rate": 0.5, "min_sample": 30},
        on_no_winner="best_mean"))
    rng = random.Random(23)
    profiles = [make_profile(rng, 9000 + i) | {"phone": phone(900_000 + i), "segments": [],
                                               "time_zone": "Europe/Moscow"} for i in range(160)]
    opt_in(cfg, [p["phone"] for p in profiles])
    kafka_io.publish(cfg, topics.PROFILES, [(p["customer_id"], p) for p in profiles],
                     "customer_profile")
    campaign = load_campaigns(cfg.config_dir)["spring"]
    members = [(p["customer_id"], "Europe/Moscow") for p in profiles]
    plan = {c: assign(campaign, ("a", "b"), c) for c, _z in members}
    test_group = {c for c, (phase, _v) in plan.items() if phase == "test"}
    with simulator(tmp_path, "--latency-ms", "1-5") as sim, sender(cfg, sim, tmp_path), \
            stage(cfg, ["router"], tmp_path), stage(cfg, ["campaign", "worker"], tmp_path):
        start_campaign(cfg, campaign, ("a", "b"), members)
        sent = kafka_io.read_topic(
            cfg, topics.OUTCOMES,
            lambda m: len({x.record["customer_id"] for x in m if x.record}) >= len(test_group), 90)
        submitted = [m.record for m in sent if m.record["status"] == "submitted"]
        quitters = [o for o in submitted if o["variant"] == "a"][::3]  # a's SMS annoys
        kafka_io.publish(cfg, topics.CONSENT, [
            (f"{o['phone']}|marketing", {"phone": o["phone"], "scope": "marketing",
                                         "status": "opt_out", "source": "sms_reply",
                                         "changed_at_ms": o["decided_at_ms"] + 1000,
                                         "customer_id": o["customer_id"], "evidence": "STOP"})
            for o in quitters], "consent_change")
        deadline = time.monotonic() + 90
        while status(cfg).get("status") not in ("done", "stopped") and time.monotonic() < deadline:
            time.sleep(1.0)
        outcomes = settle(cfg, topics.OUTCOMES, idle=3.0)
    final = status(cfg)
    assert final["status"] == "stopped", final
    assert final["decision"]["action"] == "stop_guardrail", final["decision"]
    assert "opt-out" in final["decision"]["reason"] and "a" in final["decision"]["reason"]
    assert {m.record["customer_id"] for m in outcomes} == test_group, "no rollout"
    assert final["sent"] == {"test": len(test_group)}


def test_the_sending_window_holds_in_each_members_local_time(ns: Settings, tmp_path: Path) -> None:
    """A window of two hours around Moscow's time now: the Moscow members get their SMS,
    the members in Los Angeles (11 hours behind) wait, and the campaign goes on running."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo("Europe/Moscow"))
    window = {"from": (now - timedelta(hours=1)).strftime("%H:%M"),
              "to": (now + timedelta(hours=1)).strftime("%H:%M")}
    cfg = replace(ns, config_dir=campaign_config(tmp_path, ns.config_dir, window=window))
    campaign = load_campaigns(cfg.config_dir)["spring"]
    zone_of = {f"w{i:03d}": "Europe/Moscow" if i % 2 else "America/Los_Angeles"
               for i in range(120)}
    start_campaign(cfg, campaign, ("a", "b"), list(zone_of.items()))
    inside = {c for c, z in zone_of.items()
              if z == "Europe/Moscow" and assign(campaign, ("a", "b"), c)[0] != "holdout"}
    with stage(cfg, ["campaign", "worker"], tmp_path):
        campaign_events(cfg, len(inside), timeout=60)
        time.sleep(3.0)  # the worker ticks every 100 ms: thirty chances to send too many
        events = [m.record for m in settle(cfg, topics.PROMOTION, idle=2.0)]
        assert status(cfg).get("status") == "running"
    assert {e["customer_id"] for e in events} == inside
