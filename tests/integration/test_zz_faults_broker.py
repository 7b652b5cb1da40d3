"""Restart the Kafka broker in the middle of a run: nothing lost, nothing sent twice.

Named to sort last: restarting the session's broker disturbs whatever else uses it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from sendkit import (
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

from pipeline.settings import ROOT, Settings


def restart_broker(bootstrap: str) -> float:
    """Restart the project's local broker on `bootstrap`'s port; returns seconds it took."""
    port = bootstrap.rsplit(":", 1)[1]
    env = dict(os.environ, KAFKA_PORT=port)
    env.pop("KAFKA_BOOTSTRAP", None)
    started = time.monotonic()
    subprocess.run([str(ROOT / "infra" / "kafka" / "kafka.sh"), "restart"], env=env, check=True,
                   timeout=120, capture_output=True)
    return time.monotonic() - started


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP"))
                    or os.environ.get("RASSYLKA_TESTCONTAINERS") == "1",
                    reason="restarts the project's own local broker only")
def test_broker_restart_mid_run(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    payments = [make_request(phone=phone(120_000 + i), text=f"Оплатите счёт {i}") for i in range(300)]
    promos = [marketing(phone=phone(121_000 + i), text=f"Акция {i}. Отписка: STOP") for i in range(100)]
    requests = payments + promos
    opt_in(cfg, [r["phone"] for r in promos])
    with simulator(tmp_path, "--latency-ms", "2-10") as sim:
        publish_requests(cfg, requests)
        with sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="60") as proc:
            deadline = time.monotonic() + 30
            while len(sim.submits()) < 60:
                assert time.monotonic() < deadline, "the stream did not start"
                time.sleep(0.02)
            took = restart_broker(cfg.kafka_bootstrap)
            sent_during_restart = len(sim.submits())
            got = outcomes(cfg, len(requests), timeout=60)
            assert proc.poll() is None, "the sender must ride out a broker restart"
        submits = sim.submits()
    assert sent_during_restart < len(requests) or took > 3, "the restart must land mid-stream"
    accepted = [s for s in submits if s["status"] == 0]
    per_number = Counter(s["destination"] for s in accepted)
    for request in payments:
        outcome = got[request["request_id"]]
        assert outcome["status"] == "submitted", outcome
        assert per_number[request["phone"][1:]] >= 1
        if per_number[request["phone"][1:]] > 1:
            assert outcome["attempts"] > 1, outcome
    for request in promos:
        outcome = got[request["request_id"]]
        assert per_number[request["phone"][1:]] <= 1, "a marketing SMS must never go twice"
        assert (outcome["status"], outcome["reason"]) in {("submitted", None),
                                                          ("failed", "in_doubt_not_resent")}, outcome
        if outcome["status"] == "submitted":
            assert per_number[request["phone"][1:]] == 1
