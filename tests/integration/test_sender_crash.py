"""SIGKILL the sender mid-stream, several times: no duplicate SMS, no lost transactional SMS."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from sendkit import (
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


def test_sigkill_restarts_lose_nothing_and_send_nothing_twice(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={}))
    payments = [make_request(phone=phone(10_000 + i), text=f"Оплатите счёт {i}") for i in range(160)]
    promos = [marketing(phone=phone(20_000 + i), text=f"Акция {i}. Отписка: STOP") for i in range(80)]
    requests = payments + promos
    opt_in(cfg, [r["phone"] for r in promos])
    rate = {"RASSYLKA_RATE_PER_BIND": "60",  # 120/s: the stream takes ~2 s to send
            "RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30"}
    with simulator(tmp_path, "--latency-ms", "2-10") as sim:
        publish_requests(cfg, requests)
        for kill_after in (0.8, 0.9):
            with sender(cfg, sim, tmp_path, **rate) as proc:
                deadline = time.monotonic() + 30
                while not sim.submits() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(kill_after)
                kill(proc)
        sent_before_last_start = len(sim.submits())
        with sender(cfg, sim, tmp_path, **rate):
            outcomes(cfg, len(requests), timeout=90)
            got = one_outcome_per_request(cfg, requests)  # exactly one record per request
            one_receipt_per_part(cfg, sim)  # every accepted part: exactly one receipt
        submits = [s for s in sim.submits() if s["status"] == 0]
    assert 0 < sent_before_last_start < len(requests), "the kills must land mid-stream"
    per_number = Counter(s["destination"] for s in submits)
    for request in payments:
        outcome = got[request["request_id"]]
        assert outcome["status"] == "submitted", outcome
        copies = per_number[request["phone"][1:]]
        assert copies >= 1
        if copies > 1:  # only a send left in doubt by a kill may be repeated, and it says so
            assert outcome["attempts"] > 1, outcome
    for request in promos:
        outcome = got[request["request_id"]]
        assert per_number[request["phone"][1:]] <= 1, "a marketing SMS must never go twice"
        assert (outcome["status"], outcome["reason"]) in {("submitted", None),
                                                          ("failed", "in_doubt_not_resent")}, outcome
        if outcome["status"] == "submitted":
            assert per_number[request["phone"][1:]] == 1
    duplicates = sum(c - 1 for c in per_number.values())
    assert duplicates <= 2 * 64, "in-doubt resends are bounded by what was on the wire"
