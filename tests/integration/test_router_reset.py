"""Resetting the router's consumer group replays every partition, and no SMS goes twice.

Regression: after a reset of the router's group to earliest, a partition was seen still at
its old committed offset, never re-read, while new events flowed. A reset only takes when
the group has no member: while a router runs (or for its 10 s session after a SIGKILL) the
broker refuses every partition with UNKNOWN_MEMBER_ID, and the AdminClient call returns
normally with the errors only on the partitions, so an ad hoc reset looked done and was
not. `rassylka reset-offsets` refuses while the group has members, resets every partition
of every event topic to its log start, checks each partition's answer and reads it back.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from sendkit import outcomes, phone, sender, simulator
from stages import profiles_read, read_raw, stage, wait_for

from pipeline import kafka_io, topics
from pipeline.offsets import committed_offsets
from pipeline.procs import settings_env
from pipeline.samples import make_profile, order_event, payment_event
from pipeline.settings import ROOT, Settings
from pipeline.topics import create_topics

CUSTOMERS = 24
EVENTS = (topics.ORDER_STATUS, topics.PAYMENT_DUE)
Offsets = dict[tuple[str, int], int | None]


def ends(settings: Settings, names: list[str]) -> dict[tuple[str, int], int]:
    """The end (high watermark) of every partition of catalog topics `names`."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ends"})
    try:
        out = {}
        for name in names:
            full = settings.topic(name)
            for p in consumer.list_topics(full, timeout=10).topics[full].partitions:
                out[(full, p)] = consumer.get_watermark_offsets(TopicPartition(full, p), timeout=10)[1]
        return out
    finally:
        consumer.close()


def committed(settings: Settings, group: str, names: list[str]) -> Offsets:
    return committed_offsets(settings.kafka_bootstrap, group, [TopicPartition(t, p) for t, p in ends(settings, names)])


def caught_up(settings: Settings, group: str, names: list[str], timeout: float = 60.0) -> Offsets:
    """Wait (bounded) until `group` has committed every partition of `names` to its end."""
    deadline = time.monotonic() + timeout
    while True:
        end = ends(settings, names)
        got = committed(settings, group, names)
        behind = {tp: (got[tp], e) for tp, e in end.items() if e and got[tp] != e}
        if not behind:
            return got
        assert time.monotonic() < deadline, f"{group} not at the end within {timeout}s: {behind}"
        time.sleep(0.5)


def rassylka(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          env=settings_env(settings), capture_output=True, text=True, timeout=90)


def test_reset_to_earliest_rereads_every_partition_and_sends_nothing_twice(
        settings: Settings, tmp_path: Path) -> None:
    cfg = replace(settings, partitions=3)
    create_topics(cfg)
    router_group, sender_group = f"{cfg.app_id}-router", f"{cfg.app_id}-sender"
    requests_lane = [topics.REQUESTS_TRANSACTIONAL, topics.REQUESTS_MARKETING]
    rng = random.Random(11)
    now = int(time.time() * 1000)
    profiles = [make_profile(rng, i) | {"phone": phone(500_000 + i)} for i in range(CUSTOMERS)]
    shipped = [order_event(rng, p["customer_id"], "shipped", now) for p in profiles]
    due = [payment_event(rng, p["customer_id"], now) for p in profiles]
    total = len(shipped) + len(due)

    with simulator(tmp_path, "--latency-ms", "1-5") as sim, sender(cfg, sim, tmp_path):
        with stage(cfg, ["router"], tmp_path):
            kafka_io.publish(cfg, topics.PROFILES, [(p["customer_id"], p) for p in profiles],
                             "customer_profile")
            profiles_read(cfg)
            kafka_io.publish(cfg, topics.ORDER_STATUS, [(e["customer_id"], e) for e in shipped],
                             "order_status_changed")
            kafka_io.publish(cfg, topics.PAYMENT_DUE, [(e["customer_id"], e) for e in due],
                             "payment_due")
            first = wait_for(cfg, topics.REQUESTS_TRANSACTIONAL, total)
            routed = caught_up(cfg, router_group, list(EVENTS))
            # While the router is a member the reset is refused, and nothing moves.
            refused = rassylka(cfg, "reset-offsets", "--stage", "router", "--to-earliest",
                               "--wait", "0")
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "member" in refused.stderr, refused.stderr
            assert committed(cfg, router_group, list(EVENTS)) == routed
        assert len(outcomes(cfg, total)) == total
        caught_up(cfg, sender_group, requests_lane)
        sent = len(sim.submits())  # segments: a long text is several submits
        assert sent >= total, f"{sent} submits for {total} requests before the reset"

        done = rassylka(cfg, "reset-offsets", "--stage", "router", "--to-earliest")
        assert done.returncode == 0, done.stdout + done.stderr
        reset_to = committed(cfg, router_group, list(topics.EVENT_TOPICS))
        assert set(reset_to.values()) == {0}, reset_to  # every partition, every event topic
        mark = ends(cfg, [topics.REQUESTS_TRANSACTIONAL])

        with stage(cfg, ["router"], tmp_path):
            caught_up(cfg, router_group, list(EVENTS))
            after = wait_for(cfg, topics.REQUESTS_TRANSACTIONAL, 2 * total)
        caught_up(cfg, sender_group, requests_lane)
        assert len(sim.submits()) == sent, "the replay sent SMS again"

    source = {}  # event id -> the input partition it was read from
    for name in EVENTS:
        for m in read_raw(cfg, cfg.topic(name), lambda msgs: len(msgs) >= CUSTOMERS):
            source[m.record["event_id"]] = (m.topic, m.partition)
    replayed = [m.record for m in after if m.offset >= mark[(m.topic, m.partition)]]
    per_event = Counter(r["event_id"] for r in replayed)
    per_partition = Counter(source[e] for e in per_event)
    assert per_partition == Counter(source.values()), "a partition was not re-read fully"
    assert set(per_event.values()) == {1}, "one more request per event"
    assert len(set(source.values())) == 2 * cfg.partitions, "events on every partition"
    assert {r["request_id"] for r in replayed} == {m.record["request_id"] for m in first}
