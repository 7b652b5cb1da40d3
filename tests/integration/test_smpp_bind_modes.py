"""An SMSC without bind_transceiver (as SMSCs of SMPP 3.3 are), over real SMPP: a route with
`bind: transmitter_and_receiver` submits on transmitters and takes its receipts and
replies on receivers; a transceiver route is told, in one warning, what to change."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from sendkit import (
    config_with,
    make_request,
    one_outcome_per_request,
    one_receipt_per_part,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from connectors.smpp import SmppGateway, SmppRoute
from pipeline import kafka_io, topics
from pipeline.settings import Settings


def test_a_split_bind_route_sends_and_gets_every_receipt_and_reply(
        ns: Settings, tmp_path: Path) -> None:
    config = config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={})
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))
    routes["routes"]["smsc-sim"]["bind"] = "transmitter_and_receiver"
    (config / "routes.yaml").write_text(yaml.safe_dump(routes), encoding="utf-8")
    cfg = replace(ns, config_dir=config)
    requests = [make_request(phone=phone(190_000 + i), text=f"Оплатите счёт {i}")
                for i in range(40)]
    with simulator(tmp_path, "--latency-ms", "2-10", "--receipt-delay-ms", "50-300",
                   "--no-transceiver") as sim, sender(cfg, sim, tmp_path):
        publish_requests(cfg, requests)
        outcomes(cfg, len(requests), timeout=60)
        got = one_outcome_per_request(cfg, requests)
        states = one_receipt_per_part(cfg, sim, timeout=45)
        sim.mo(requests[0]["phone"], requests[0]["sender_id"], "STOP")
        replies = kafka_io.read_topic(cfg, topics.INBOUND, lambda m: len(m) >= 1, 30)
        sessions = sim.sessions()
    assert Counter(o["status"] for o in got.values()) == Counter({"submitted": len(requests)})
    assert sum(states.values()) == len(requests)
    receipts = kafka_io.read_topic(cfg, topics.RECEIPTS, None, 10, idle=2.0)
    assert all(m.record["message_id"] for m in receipts if m.record), "every receipt matched"
    assert [m.record["text"] for m in replies if m.record] == ["STOP"]
    assert sessions == 4, "two transmitters and two receivers"


def test_a_transceiver_route_to_such_an_smsc_says_what_to_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run(port: int) -> None:
        gateway = SmppGateway(SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=1,
                                        bind_wait_s=1.0, reconnect_min_s=0.05))
        await gateway.start()
        await asyncio.sleep(0.5)
        assert gateway.bound == 0
        await gateway.close()

    with simulator(tmp_path, "--no-transceiver") as sim, \
            caplog.at_level(logging.WARNING, logger="connectors.smpp"):
        asyncio.run(run(sim.port))
    refusals = [r.getMessage() for r in caplog.records if "bind refused" in r.getMessage()]
    assert len(refusals) == 1, refusals  # once, not at every retry
    assert "ESME_RINVCMDID" in refusals[0]
    assert "bind: transmitter_and_receiver" in refusals[0]
