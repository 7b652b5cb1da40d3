"""An SMSC that answers submit_sm with a hex id and names the message in decimal in its
receipts, over real SMPP: the route's `message_ids` setting makes the two meet."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import yaml
from sendkit import (
    config_with,
    make_request,
    one_outcome_per_request,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from pipeline import kafka_io, topics
from pipeline.settings import Settings


def test_receipts_with_decimal_ids_meet_their_hex_submit_answers(
        ns: Settings, tmp_path: Path) -> None:
    """Regression: the sender compared ids verbatim, so every receipt of such an SMSC
    ("1a2b" answered, "6699" in the receipt) was unknown, and after the uncorrelated wait
    recorded without its message: no message counted delivered."""
    config = config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={})
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))
    routes["routes"]["smsc-sim"]["message_ids"] = {"submit_sm_resp": "hex", "deliver_sm": "decimal"}
    (config / "routes.yaml").write_text(yaml.safe_dump(routes), encoding="utf-8")
    cfg = replace(ns, config_dir=config)
    requests = [make_request(phone=phone(180_000 + i), text=f"Оплатите счёт {i}")
                for i in range(40)]
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
