"""Receipts and replies are acknowledged only after they are committed: a sender killed
right before or right after the commit loses none and records none twice.

The sender's fault hook (`RASSYLKA_SENDER_FAULT`) makes it exit in exactly those gaps, on
the first transaction that records a receipt or a reply; the SMSC (simulator) then sends
again whatever was not acknowledged, to the restarted sender.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from sendkit import (
    config_with,
    make_request,
    one_outcome_per_request,
    one_receipt_per_part,
    phone,
    publish_requests,
    sender,
    simulator,
)
from stages import settle

from pipeline import topics
from pipeline.settings import Settings

FAST = {"RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30"}


def _wait_exit(proc, timeout: float = 60.0) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the sender did not hit its fault"
        time.sleep(0.05)
    return int(proc.returncode)


@pytest.mark.parametrize("fault", ["exit_before_commit", "exit_after_commit"])
def test_receipts_survive_a_kill_around_the_commit(ns: Settings, tmp_path: Path, fault: str) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    requests = [make_request(phone=phone(300_000 + i), text=f"Оплатите счёт {i}")
                for i in range(30)]
    with simulator(tmp_path, "--latency-ms", "1-5", "--receipt-delay-ms", "200-400",
                   "--redeliver-s", "1") as sim:
        publish_requests(cfg, requests)
        with sender(cfg, sim, tmp_path, RASSYLKA_SENDER_FAULT=fault, **FAST) as proc:
            assert _wait_exit(proc) == 137
        with sender(cfg, sim, tmp_path, **FAST):
            got = one_outcome_per_request(cfg, requests)
            states = one_receipt_per_part(cfg, sim)
    assert all(o["status"] == "submitted" for o in got.values())
    assert sum(states.values()) == len([s for s in sim.submits() if s["status"] == 0])


@pytest.mark.parametrize("fault", ["exit_before_commit", "exit_after_commit"])
def test_stop_reply_survives_a_kill_around_the_commit(ns: Settings, tmp_path: Path, fault: str) -> None:
    number = phone(310_000)
    with simulator(tmp_path, "--redeliver-s", "1") as sim:
        with sender(ns, sim, tmp_path, RASSYLKA_SENDER_FAULT=fault) as proc:
            deadline = time.monotonic() + 30
            while sim.sessions() == 0:
                assert time.monotonic() < deadline, "the sender did not bind"
                time.sleep(0.05)
            sim.mo(number, "SHOPRU", "СТОП")
            assert _wait_exit(proc) == 137
        with sender(ns, sim, tmp_path):
            inbound = settle(ns, topics.INBOUND, idle=4.0, timeout=60)
            while not inbound and time.monotonic() < deadline + 60:
                inbound = settle(ns, topics.INBOUND, idle=2.0, timeout=30)
            consent = settle(ns, topics.CONSENT, idle=2.0)
    assert [m.record["from_number"] for m in inbound] == [number], "one reply, recorded once"
    assert [(m.record["phone"], m.record["status"]) for m in consent] == [(number, "opt_out")]
