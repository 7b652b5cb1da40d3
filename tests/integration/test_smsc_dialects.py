"""SMSCs that speak SMPP their own way, over real SMPP against the simulator:
ids in hex in submit_sm_resp and in decimal in receipts (the route's `message_ids`),
receipts in data_sm, and no bind_transceiver (the route's `bind:
transmitter_and_receiver`; a transceiver route is told, in one warning, what to change)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from sendkit import (
    Simulator,
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


def route_config(ns: Settings, tmp_path: Path, **route: object) -> Settings:
    """`ns` with the simulator's route in routes.yaml changed by `route`."""
    config = config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={})
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))
    routes["routes"]["smsc-sim"].update(route)
    (config / "routes.yaml").write_text(yaml.safe_dump(routes), encoding="utf-8")
    return replace(ns, config_dir=config)


def payments(base: int) -> list[dict[str, object]]:
    return [make_request(phone=phone(base + i), text=f"Оплатите счёт {i}") for i in range(40)]


def all_sent_and_receipted(cfg: Settings, sim: Simulator, requests: list[dict[str, object]]) -> None:
    """Publish `requests` and assert each was submitted once and each part has one receipt
    that names its message."""
    publish_requests(cfg, requests)
    outcomes(cfg, len(requests), timeout=60)
    got = one_outcome_per_request(cfg, requests)
    assert Counter(o["status"] for o in got.values()) == Counter({"submitted": len(requests)})
    assert sum(one_receipt_per_part(cfg, sim, timeout=45).values()) == len(requests)
    receipts = kafka_io.read_topic(cfg, topics.RECEIPTS, None, 10, idle=2.0)
    assert all(m.record["message_id"] for m in receipts if m.record), "every receipt matched"


def test_receipts_with_decimal_ids_meet_their_hex_submit_answers(
        ns: Settings, tmp_path: Path) -> None:
    """Regression: the sender compared ids verbatim, so every receipt of such an SMSC
    ("1a2b" answered, "6699" in the receipt) was unknown, and after the uncorrelated wait
    recorded without its message: no message counted delivered."""
    cfg = route_config(ns, tmp_path,
                       message_ids={"submit_sm_resp": "hex", "deliver_sm": "decimal"})
    requests = payments(180_000)
    # the shortest uncorrelated wait the sender takes: an unmatched receipt shows quickly
    env = {"RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30"}
    with simulator(tmp_path, "--latency-ms", "2-10", "--receipt-delay-ms", "50-300",
                   "--receipt-ids-decimal") as sim, sender(cfg, sim, tmp_path, **env):
        publish_requests(cfg, requests)
        outcomes(cfg, len(requests), timeout=60)
        got = one_outcome_per_request(cfg, requests)
        accepted = {str(int(s["message_id"], 16)): s for s in sim.submits() if s["status"] == 0}
        receipts = kafka_io.read_topic(
            cfg, topics.RECEIPTS,
            lambda m: len({x.record["gateway_message_id"] for x in m if x.record}) >= len(accepted),
            45, idle=2.0)
    assert Counter(o["status"] for o in got.values()) == Counter({"submitted": len(requests)})
    # the outcome names each part as its receipt will: the decimal form
    assert {i for o in got.values() for i in o["gateway_message_ids"]} == set(accepted)
    by_part = Counter(m.record["gateway_message_id"] for m in receipts if m.record)
    assert set(by_part) == set(accepted) and set(by_part.values()) == {1}
    ids = {r["request_id"] for r in requests}
    lost = [m.record for m in receipts if m.record and m.record["message_id"] not in ids]
    assert not lost, f"{len(lost)} of {len(by_part)} receipts lost their message"


def test_receipts_in_data_sm_are_recorded_and_answered(ns: Settings, tmp_path: Path) -> None:
    """SMPP 3.4 (4.7) lets an SMSC deliver receipts in data_sm. Before, the sender answered
    data_sm with generic_nack: no receipt was recorded, and the SMSC kept trying."""
    cfg = route_config(ns, tmp_path)
    requests = payments(195_000)
    with simulator(tmp_path, "--latency-ms", "2-10", "--receipt-delay-ms", "50-300",
                   "--receipts-as-data-sm") as sim, sender(cfg, sim, tmp_path):
        all_sent_and_receipted(cfg, sim, requests)
        health = sim.health()
    assert health["delivered"] == len(requests) and health["refused"] == 0, health


def test_a_split_bind_route_sends_and_gets_every_receipt_and_reply(
        ns: Settings, tmp_path: Path) -> None:
    cfg = route_config(ns, tmp_path, bind="transmitter_and_receiver")
    requests = payments(190_000)
    with simulator(tmp_path, "--latency-ms", "2-10", "--receipt-delay-ms", "50-300",
                   "--no-transceiver") as sim, sender(cfg, sim, tmp_path):
        all_sent_and_receipted(cfg, sim, requests)
        sim.mo(str(requests[0]["phone"]), str(requests[0]["sender_id"]), "STOP")
        replies = kafka_io.read_topic(cfg, topics.INBOUND, lambda m: len(m) >= 1, 30)
        sessions = sim.sessions()
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
