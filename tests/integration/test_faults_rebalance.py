"""A rebalance mid-run: a second sender joins, then leaves; nothing lost, nothing sent twice."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from sendkit import (
    Simulator,
    check_stream,
    config_with,
    make_request,
    marketing,
    one_outcome_per_request,
    one_receipt_per_part,
    opt_in,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)
from stages import kill

from pipeline.settings import Settings


def wait_for_sessions(sim: Simulator, count: int, timeout: float) -> bool:
    """Wait (bounded) until submits came over `count` distinct SMPP sessions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({s["session_id"] for s in sim.submits()}) >= count:
            return True
        time.sleep(0.05)
    return False


def test_second_worker_joins_and_leaves_mid_run(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    payments = [make_request(phone=phone(30_000 + i), text=f"Оплатите счёт {i}") for i in range(300)]
    promos = [marketing(phone=phone(40_000 + i), text=f"Акция {i}. Отписка: STOP")
              for i in range(100)]
    requests = payments + promos
    opt_in(cfg, [r["phone"] for r in promos])
    rate = {"RASSYLKA_RATE_PER_BIND": "15",  # 30/s per worker: the stream lasts ~13 s
            "RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30"}
    with simulator(tmp_path, "--latency-ms", "2-20") as sim:
        publish_requests(cfg, requests)
        with sender(cfg, sim, tmp_path, worker_id="0", **rate):
            deadline = time.monotonic() + 30
            while len(sim.submits()) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            with sender(cfg, sim, tmp_path, worker_id="1", **rate) as second:
                joined = wait_for_sessions(sim, 4, timeout=30)  # its two binds are sending
                time.sleep(1.0)
                assert second.poll() is None
                sent_when_leaving = len(sim.submits())
            # It leaves cleanly; with static membership its partitions come back after the
            # session timeout (10 s), and the first worker finishes the stream.
            outcomes(cfg, len(requests), timeout=60)
            got = one_outcome_per_request(cfg, requests)
            one_receipt_per_part(cfg, sim)
        submits = sim.submits()
    assert joined, "the second worker must have sent part of the stream"
    assert sent_when_leaving < len(requests), "the second worker must leave mid-stream"
    check_stream(requests, got, submits)


def test_second_worker_killed_after_taking_partitions(ns: Settings, tmp_path: Path) -> None:
    """The joiner dies instead of leaving: its partitions move back, in-doubt policy applies."""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    payments = [make_request(phone=phone(50_000 + i), text=f"Счёт {i} ждёт оплаты") for i in range(200)]
    promos = [marketing(phone=phone(60_000 + i), text=f"Распродажа {i}. Отписка: STOP")
              for i in range(100)]
    requests = payments + promos
    opt_in(cfg, [r["phone"] for r in promos])
    # 30/s per worker: the stream lasts ~10 s, long enough for the joiner to start, get
    # its partitions and send before it is killed.
    rate = {"RASSYLKA_RATE_PER_BIND": "15", "RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30"}
    with simulator(tmp_path, "--latency-ms", "5-30") as sim:
        publish_requests(cfg, requests)
        with sender(cfg, sim, tmp_path, worker_id="0", **rate):
            deadline = time.monotonic() + 30
            while len(sim.submits()) < 30 and time.monotonic() < deadline:
                time.sleep(0.05)
            with sender(cfg, sim, tmp_path, worker_id="1", **rate) as second:
                joined = wait_for_sessions(sim, 4, timeout=30)
                time.sleep(0.7)
                kill(second)
            outcomes(cfg, len(requests), timeout=60)
            got = one_outcome_per_request(cfg, requests)
            one_receipt_per_part(cfg, sim)
        submits = sim.submits()
    assert joined, "the second worker must have sent part of the stream before it died"
    check_stream(requests, got, submits)


@pytest.mark.parametrize("fault", ["exit_before_commit", "exit_after_commit"])
def test_joiner_dies_inside_a_transaction_and_never_returns(ns: Settings, tmp_path: Path,
                                                            fault: str) -> None:
    """A worker that dies with a transaction open, and whose id never comes back, must not
    hold up the shared outcome partitions: read_committed readers stop at its open
    transaction until the broker aborts it, so the transaction timeout bounds the stall.
    (With a 120 s timeout this test saw a fraction of the outcomes within its bound.)"""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    requests = [make_request(phone=phone(70_000 + i), text=f"Счёт {i} ждёт оплаты")
                for i in range(300)]
    rate = {"RASSYLKA_RATE_PER_BIND": "10", "RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30"}
    with simulator(tmp_path, "--latency-ms", "1-5", "--receipt-delay-ms", "300-600") as sim:
        publish_requests(cfg, requests)
        with sender(cfg, sim, tmp_path, worker_id="0", **rate):
            deadline = time.monotonic() + 30
            while len(sim.submits()) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            # It dies on its first transaction that records a receipt, before the commit.
            with sender(cfg, sim, tmp_path, worker_id="1", RASSYLKA_SENDER_FAULT=fault,
                        **rate) as second:
                deadline = time.monotonic() + 60
                while second.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert second.poll() == 137, "the joiner must die inside a transaction"
            outcomes(cfg, len(requests), timeout=75)
            got = one_outcome_per_request(cfg, requests)
            one_receipt_per_part(cfg, sim)
        submits = sim.submits()
    check_stream(requests, got, submits)
