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
    one_outcome_per_request,
    one_receipt_per_part,
    opt_in,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from pipeline.settings import ROOT, Settings


def broker(bootstrap: str, action: str) -> float:
    """Run `kafka.sh <action>` for the local broker on `bootstrap`'s port; returns seconds."""
    port = bootstrap.rsplit(":", 1)[1]
    env = dict(os.environ, KAFKA_PORT=port)
    env.pop("KAFKA_BOOTSTRAP", None)
    started = time.monotonic()
    subprocess.run([str(ROOT / "infra" / "kafka" / "kafka.sh"), action], env=env, check=True,
                   timeout=120, capture_output=True)
    return time.monotonic() - started


LOCAL_ONLY = pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP"))
                                or os.environ.get("RASSYLKA_TESTCONTAINERS") == "1",
                                reason="restarts the project's own local broker only")
# The broker stays down this long in the outage test: longer than the sender's consumer
# session (10 s), so the sender loses its partitions and must take them back.
OUTAGE_S = float(os.environ.get("RASSYLKA_TEST_OUTAGE_S", "25"))


@LOCAL_ONLY
@pytest.mark.parametrize("outage_s", [0.0, OUTAGE_S], ids=["restart", "outage"])
def test_broker_outage_mid_run_costs_no_resend_and_no_false_failure(
        ns: Settings, tmp_path: Path, outage_s: float) -> None:
    """Regression: a broker away longer than the consumer session made the sender give up
    its partitions and discard the SMSC answers it had: transactional messages went twice,
    delivered marketing ones were reported failed/in_doubt_not_resent, their receipts lost.
    Counted at the simulator: every request went exactly once and is `submitted`."""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    base = 120_000 if outage_s == 0 else 140_000
    payments = [make_request(phone=phone(base + i), text=f"Оплатите счёт {i}") for i in range(300)]
    promos = [marketing(phone=phone(base + 5_000 + i), text=f"Акция {i}. Отписка: STOP")
              for i in range(100)]
    requests = payments + promos
    opt_in(cfg, [r["phone"] for r in promos])
    with simulator(tmp_path, "--latency-ms", "2-10") as sim:
        publish_requests(cfg, requests)
        with sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="60") as proc:
            deadline = time.monotonic() + 30
            while len(sim.submits()) < 60:
                assert time.monotonic() < deadline, "the stream did not start"
                time.sleep(0.02)
            took = broker(cfg.kafka_bootstrap, "down")
            sent_while_down = len(sim.submits())
            time.sleep(outage_s)
            took += outage_s + broker(cfg.kafka_bootstrap, "up")
            outcomes(cfg, len(requests), timeout=120)
            got = one_outcome_per_request(cfg, requests)
            one_receipt_per_part(cfg, sim, timeout=90)
            assert proc.poll() is None, "the sender must ride out a broker outage"
        submits = sim.submits()
    assert sent_while_down < len(requests), "the outage must land mid-stream"
    accepted = Counter(s["destination"] for s in submits if s["status"] == 0)
    twice = [n for n, c in accepted.items() if c > 1]
    assert not twice, f"{len(twice)} numbers got their SMS twice after a {took:.0f} s outage"
    statuses = Counter((o["status"], o["reason"]) for o in got.values())
    assert statuses == Counter({("submitted", None): len(requests)}), statuses
    for request in requests:
        assert accepted[request["phone"][1:]] == 1
