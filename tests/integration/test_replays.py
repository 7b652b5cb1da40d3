"""Replays end to end: a killed router, every event published three times and the
router's group reset to the start still give one outcome per request, one SMS per
number, and analytics equal to the ground truth.

Regression for a duplicate delivery of a request adding a `suppressed duplicate` outcome
with a later time, which replaced the request's real outcome in `rassylka.messages` (a
ReplacingMergeTree on the message id): the funnel then counted fewer sent than were sent.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from sendkit import config_with, one_outcome_per_request, opt_in, phone, sender, simulator
from stages import kill, stage
from test_router import load_profiles
from test_sink import query

from pipeline import kafka_io, topics
from pipeline.analytics.sink import SOURCE_TOPICS, progress
from pipeline.offsets import reset
from pipeline.samples import make_profile, payment_event, promotion_event
from pipeline.settings import Settings

CUSTOMERS = 120
OPTED_IN = range(0, 60)  # promotions to these are sent
OPTED_OUT = range(60, 75)  # suppressed opted_out; the rest: no_marketing_consent


def _each(requests: int, times: int):  # type: ignore[no-untyped-def]
    """A read_topic condition: every one of `requests` request ids seen `times` times."""
    def done(msgs: list[kafka_io.Received]) -> bool:
        seen = Counter(m.record["request_id"] for m in msgs if m.record)
        return len(seen) == requests and min(seen.values()) >= times
    return done


def _wait_sink_caught_up(settings: Settings, proc, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the sink's committed offsets stop moving within a transaction marker per
    partition of the end (these topics are written in transactions: the last offset of
    a partition is often a commit marker, which no record's offset reaches)."""
    slack = len(SOURCE_TOPICS) * settings.partitions
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sink exited with {proc.returncode}"
        done, end = progress(settings)
        if done != last:
            last, still_since = done, time.monotonic()
        elif end - done <= slack and time.monotonic() - still_since > 3.0:
            return
        time.sleep(0.3)
    raise AssertionError(f"sink stored {last} of {end} records within {timeout}s")


def _publish_events(settings: Settings, events: list[tuple[str, str, dict]]) -> None:
    for topic, schema in ((topics.PAYMENT_DUE, "payment_due"), (topics.PROMOTION, "promotion")):
        kafka_io.publish(settings, topic, [(e["customer_id"], e) for t, _s, e in events
                                           if t == topic], schema)


@pytest.mark.parametrize("restarts", [
    pytest.param(False, id="replays"),
    pytest.param(True, id="replays-kill-reset"),
])
def test_replays_leave_one_outcome_per_request_and_exact_analytics(
        ns: Settings, tmp_path: Path, restarts: bool) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    rng = random.Random(8)
    now = int(time.time() * 1000)
    profiles = [make_profile(rng, i) | {"phone": phone(400_000 + i), "segments": [],
                                        "time_zone": "Europe/Moscow"}
                for i in range(CUSTOMERS)]
    events = []
    for p in profiles:
        events.append((topics.PAYMENT_DUE, "payment_due", payment_event(rng, p["customer_id"], now)))
        events.append((topics.PROMOTION, "promotion",
                       promotion_event(rng, p["customer_id"], now, "replay")))
    opt_in(cfg, [profiles[i]["phone"] for i in OPTED_IN])
    kafka_io.publish(cfg, topics.CONSENT, [
        (f"{profiles[i]['phone']}|marketing",
         {"phone": profiles[i]["phone"], "scope": "marketing", "status": "opt_out",
          "source": "web_form", "changed_at_ms": now - 30_000, "customer_id": None,
          "evidence": None}) for i in OPTED_OUT], "consent_change")
    truth = Counter({("submitted", None): CUSTOMERS + len(OPTED_IN),
                     ("suppressed", "opted_out"): len(OPTED_OUT),
                     ("suppressed", "no_marketing_consent"):
                         CUSTOMERS - len(OPTED_IN) - len(OPTED_OUT)})
    requests_total = sum(truth.values())
    with simulator(tmp_path, "--latency-ms", "1-5") as sim, sender(cfg, sim, tmp_path):
        with stage(cfg, ["router"], tmp_path) as router:
            load_profiles(cfg, profiles)  # in the router's table before any event
            _publish_events(cfg, events)
            deadline = time.monotonic() + 60
            while len(sim.submits()) < 20:  # SIGKILL it mid-stream
                assert time.monotonic() < deadline, "the router did not start routing"
                time.sleep(0.02)
            if restarts:
                kill(router)
            else:  # the same replays, all routed before this router stops
                _publish_events(cfg, events)
                _publish_events(cfg, events)
                kafka_io.read_topic(cfg, topics.OUTCOMES,
                                    lambda m: len({x.key for x in m}) >= requests_total, 180)
                kafka_io.read_topic(cfg, topics.REDELIVERIES, _each(requests_total, 2), 180)
        with stage(cfg, ["router"], tmp_path):
            one_by_one = kafka_io.read_topic(
                cfg, topics.OUTCOMES, lambda m: len({x.key for x in m}) >= requests_total, 180)
            if len({m.key for m in one_by_one}) != requests_total:
                lanes = [m for t in (topics.REQUESTS_TRANSACTIONAL, topics.REQUESTS_MARKETING)
                         for m in kafka_io.read_topic(cfg, t, None, 20, idle=2.0)]
                dead = kafka_io.read_topic(cfg, topics.DEAD_LETTERS, None, 10, idle=1.0)
                raise AssertionError(
                    f"{len({m.key for m in one_by_one})} outcomes of {requests_total}; requests "
                    f"on the lanes: {len({m.record['request_id'] for m in lanes})} distinct of "
                    f"{len(lanes)}; dead letters: {[d.record['reason'] for d in dead][:5]}")
            if restarts:
                _publish_events(cfg, events)
                _publish_events(cfg, events)
            # Every request arrives at least twice more; wait for those, then stop.
            before = kafka_io.read_topic(cfg, topics.REDELIVERIES, _each(requests_total, 2), 180)
        if restarts:
            reset(cfg, "router", to_earliest=True, wait_s=30)  # `rassylka reset-offsets`
        with stage(cfg, ["router"], tmp_path):
            # The reset replays the events again: wait until that has visibly started, then
            # until the redeliveries stop coming (every replayed request is one of them).
            if restarts:
                kafka_io.read_topic(cfg, topics.REDELIVERIES,
                                    lambda m: len(m) >= len(before) + requests_total, 180)
            again = kafka_io.read_topic(cfg, topics.REDELIVERIES, None, 180, idle=5.0)
        ids = {m.record["request_id"] for m in one_by_one if m.record is not None}
        got = one_outcome_per_request(cfg, [{"request_id": rid} for rid in ids])
        submits = [s for s in sim.submits() if s["status"] == 0]
    dead = kafka_io.read_topic(cfg, topics.DEAD_LETTERS, None, 10, idle=1.0)
    assert not dead, [d.record["reason"] for d in dead if d.record]
    repeats = Counter(m.record["request_id"] for m in again)
    assert set(repeats) == set(got), "every request was delivered again, and counted"
    assert min(repeats.values()) >= 2
    assert not restarts or len(again) >= len(before) + requests_total
    assert Counter((o["status"], o["reason"]) for o in got.values()) == truth
    parts = Counter((s["destination"], s["short_message"]) for s in submits)
    assert max(parts.values()) == 1, "no part of any SMS went twice"
    assert len({s["destination"] for s in submits}) == CUSTOMERS  # every payment reminder

    receipts = kafka_io.read_topic(cfg, topics.RECEIPTS, lambda m: len(m) >= len(submits), 60)
    delivered = {m.record["message_id"] for m in receipts if m.record["state"] == "DELIVRD"}
    with stage(cfg, ["sink"], tmp_path) as sink:
        _wait_sink_caught_up(cfg, sink)
    stored: Counter[tuple[str, str | None]] = Counter()
    for row in query(cfg, "SELECT status, reason, count() AS n FROM rassylka.messages FINAL "
                          "GROUP BY status, reason"):
        stored[(row["status"], row["reason"] or None)] = int(row["n"])
    assert stored == truth
    funnel = query(cfg, "SELECT sum(sent) AS sent, sum(delivered) AS delivered "
                        "FROM rassylka.funnel_daily")[0]
    assert int(funnel["sent"]) == truth[("submitted", None)]
    assert int(funnel["delivered"]) == len(delivered)
    replays = query(cfg, "SELECT count() AS n FROM rassylka.redeliveries FINAL")[0]
    assert int(replays["n"]) == len(again)
