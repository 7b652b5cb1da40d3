"""A slow gateway must not hold transactional traffic back behind a marketing backlog."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from confluent_kafka import TopicPartition
from sendkit import (
    NOW,
    check_stream,
    config_with,
    make_request,
    marketing,
    opt_in,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from pipeline import topics
from pipeline.offsets import committed_offsets
from pipeline.procs import kill
from pipeline.sender.worker import CONSUME_MAX
from pipeline.settings import Settings


def test_slow_gateway_does_not_hold_back_transactional(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    flood = [marketing(phone=phone(90_000 + i), text=f"Акция {i}. Отписка: STOP") for i in range(900)]
    payments = [make_request(phone=phone(95_000 + i), text=f"Оплатите счёт {i}") for i in range(20)]
    opt_in(cfg, [r["phone"] for r in flood])
    # 200-400 ms per answer, 2 binds x 32 in flight: the SMSC takes ~200 submits/s, far
    # below the route's 1000/s, so a marketing backlog builds up in front of the gateway.
    with simulator(tmp_path, "--latency-ms", "200-400") as sim, sender(cfg, sim, tmp_path):
        publish_requests(cfg, flood)
        deadline = time.monotonic() + 30
        while len(sim.submits()) < 150:  # the backlog is there and draining
            assert time.monotonic() < deadline, "the flood did not start"
            time.sleep(0.02)
        published_at = NOW()
        publish_requests(cfg, payments)
        got = outcomes(cfg, len(flood) + len(payments), timeout=60)
        submits = sim.submits()
    accepted = [s for s in submits if s["status"] == 0]
    assert Counter(s["destination"] for s in accepted).most_common(1)[0][1] == 1
    assert all(o["status"] == "submitted" for o in got.values())
    at = {s["destination"]: s["at_ms"] for s in accepted}
    waits = sorted(at[r["phone"][1:]] - published_at for r in payments)
    last_marketing = max(at[r["phone"][1:]] for r in flood)
    # Publishing, consuming and one slow answer ahead of them take well under 2 s; waiting
    # behind the backlog (~750 submits at ~200/s) would take about 4 s.
    assert waits[-1] < 2_000, f"payments reached the SMSC {waits} ms after publishing"
    assert last_marketing - published_at > waits[-1] + 1_000, "the flood must still be going"


def test_a_marketing_backlog_is_taken_as_the_route_drains_it(ns: Settings, tmp_path: Path) -> None:
    """The sender decides marketing only as the route makes room for it: a backlog waits
    undecided (not committed as read), not decided into the sender's queue, where taking it
    meant transactions of a thousand requests that a payment reminder waited behind."""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    flood = [marketing(phone=phone(60_000 + i), text=f"Акция {i}. Отписка: STOP")
             for i in range(1500)]
    payments = [make_request(phone=phone(65_000 + i), text=f"Оплатите счёт {i}") for i in range(20)]
    opt_in(cfg, [r["phone"] for r in flood])
    lane = cfg.topic(topics.REQUESTS_MARKETING)
    partitions = [TopicPartition(lane, p) for p in range(cfg.partitions)]
    # 2 binds x 100 submit_sm/s: the flood is 7.5 s of the route's time; the sender queues
    # 64 marketing requests ahead of it (MARKETING_AHEAD_MIN) and takes at most 100 at once.
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="100"):
        publish_requests(cfg, flood)
        deadline = time.monotonic() + 30
        while len(sim.submits()) < 300:
            assert time.monotonic() < deadline, "the flood did not start"
            time.sleep(0.05)
        taken = sum(o or 0 for o in committed_offsets(
            cfg.kafka_bootstrap, f"{cfg.app_id}-sender", partitions).values())
        sent = len([s for s in sim.submits() if s["status"] == 0])
        # queued (64 + 100 at most) plus on the wire (2 x 2 x 32) plus answers not recorded
        assert taken - sent < 500, f"{taken} marketing requests taken while {sent} were sent"
        assert sent < len(flood) - 500, "the flood must still be going"
        publish_requests(cfg, payments)
        got = outcomes(cfg, len(flood) + len(payments), timeout=60)
        submits = sim.submits()
    check_stream(flood + payments, got, submits)


def test_a_sender_killed_with_marketing_waiting_undecided_loses_none(ns: Settings,
                                                                     tmp_path: Path) -> None:
    """Marketing requests consumed but not decided yet were never committed as read: a
    sender SIGKILLed with a backlog waiting leaves them to its successor, and every request
    still ends in exactly one outcome, none sent twice."""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    flood = [marketing(phone=phone(70_000 + i), text=f"Акция {i}. Отписка: STOP")
             for i in range(1200)]
    opt_in(cfg, [r["phone"] for r in flood])
    with simulator(tmp_path) as sim:
        with sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="100") as proc:
            publish_requests(cfg, flood)
            deadline = time.monotonic() + 30
            while len(sim.submits()) < 200:
                assert time.monotonic() < deadline, "the flood did not start"
                time.sleep(0.05)
            kill(proc)  # hundreds consumed and waiting, undecided
        with sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="100"):
            got = outcomes(cfg, len(flood), timeout=90)
        submits = sim.submits()
    check_stream(flood, got, submits)


def test_a_marketing_backlog_held_in_memory_is_bounded(ns: Settings, tmp_path: Path) -> None:
    """A campaign's backlog is not read into memory whole: past RASSYLKA_MARKETING_WAITING_MAX
    requests waiting undecided, the sender pauses the marketing lane and resumes it at half
    as many. Before, it consumed the whole backlog (about 3,500 of these 4,000 at once), and
    a campaign of millions would have been held in its memory. Every request still ends in
    exactly one outcome, none sent twice, across the pauses."""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    flood = [marketing(phone=phone(80_000 + i), text=f"Акция {i}. Отписка: STOP")
             for i in range(4000)]
    opt_in(cfg, [r["phone"] for r in flood])
    most = 400
    # 2 binds x 400 submit_sm/s: the flood is 5 s of the route's time
    with simulator(tmp_path) as sim:
        with sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="400",
                    RASSYLKA_MARKETING_WAITING_MAX=str(most)):
            publish_requests(cfg, flood)
            got = outcomes(cfg, len(flood), timeout=90)
            submits = sim.submits()
    check_stream(flood, got, submits)
    log = next(tmp_path.glob("sender-*.log")).read_text(errors="replace")
    stats = re.search(r"marketing_waiting_peak=(\d+), lane_pauses=(\d+)", log)
    assert stats, f"the sender's stats line is missing: {log[-2000:]}"
    peak, pauses = int(stats.group(1)), int(stats.group(2))
    # one consume (CONSUME_MAX) can land on top of a full inbox before the pause
    assert most <= peak < most + CONSUME_MAX, f"{peak} marketing requests held at once"
    assert pauses >= 1 and log.count("marketing lane resumed") >= 1, log[-3000:]
