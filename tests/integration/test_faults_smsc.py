"""A misbehaving SMSC: dropped responses, throttling, disconnects, early and out-of-order receipts."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

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
from stages import wait_for

from pipeline import topics
from pipeline.settings import Settings

ESME_RTHROTTLED = 0x58


def test_drops_throttling_and_a_disconnect_slow_down_reconnect_and_expire(
        ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    payments = [make_request(phone=phone(70_000 + i), text=f"Код {i} для оплаты заказа")
                for i in range(300)]
    promos = [marketing(phone=phone(71_000 + i), text=f"Акция {i}. Отписка: STOP") for i in range(100)]
    flags = ("--latency-ms", "1-10", "--drop-response-rate", "0.01", "--drop-hold-ms", "60000",
             "--throttle-above-per-s", "60")
    opt_in(cfg, [r["phone"] for r in promos])
    with simulator(tmp_path, *flags) as sim:
        port = sim.port
        with sender(cfg, sim, tmp_path) as proc:
            publish_requests(cfg, payments + promos)
            deadline = time.monotonic() + 30
            while len([s for s in sim.submits() if s["status"] == 0]) < 100:
                assert time.monotonic() < deadline, "the stream did not start"
                time.sleep(0.02)
            # The SMSC disconnects mid-stream (a crash: no unbind) and stays away for 8 s,
            # longer than a send waits for a bind (5 s) and than these requests live (3 s).
            sim.proc.kill()
            sim.proc.wait(10)
            down_at = NOW()
            short_lived = [make_request(phone=phone(72_000 + i), text=f"Код входа {i}",
                                        expires_at_ms=down_at + 3_000) for i in range(30)]
            publish_requests(cfg, short_lived)
            time.sleep(8.0)
            with simulator(tmp_path, *flags, port=port, log=sim.log_path) as back:
                requests = payments + promos + short_lived
                # dropped answers stay in doubt until the response timeout (10 s)
                got = outcomes(cfg, len(requests), timeout=60)
                assert proc.poll() is None, "the sender must survive the SMSC's faults"
                submits = back.submits()  # the same log file: both simulator runs
    check_stream(requests, got, submits, frozenset(r["request_id"] for r in short_lived))
    for request in short_lived:  # they outlived their TTL while the SMSC was away
        outcome = got[request["request_id"]]
        assert (outcome["status"], outcome["reason"]) == ("expired", "ttl_expired"), outcome
    reached = {s["destination"] for s in submits}
    assert not reached & {r["phone"][1:] for r in short_lived}
    throttled = [s for s in submits if s["status"] == ESME_RTHROTTLED]
    accepted = [s for s in submits if s["status"] == 0]
    dropped = [s for s in accepted if s["dropped"]]
    assert throttled, "the SMSC must have answered ESME_RTHROTTLED"
    # A full window of submits is answered ESME_RTHROTTLED together before the halved rate
    # takes effect, so bursts of refusals are expected; hammering would be many times more.
    assert len(throttled) < 2 * len(accepted), "the sender must slow down, not hammer the SMSC"
    assert dropped, "the SMSC must have dropped some answers"
    by_number = {r["phone"][1:]: got[r["request_id"]] for r in payments + promos}
    for s in dropped:  # a dropped answer leaves the send in doubt: the policy decides
        outcome = by_number[s["destination"]]
        if outcome["lane"] == "transactional":
            assert outcome["status"] == "submitted" and outcome["attempts"] > 1, outcome
            assert s["message_id"] not in outcome["gateway_message_ids"]
        else:
            assert (outcome["status"], outcome["reason"]) == ("failed", "in_doubt_not_resent")
    after_restart = [s for s in accepted if s["at_ms"] > down_at]
    assert after_restart, "the sender must reconnect and go on sending"
    assert {s["session_id"] for s in after_restart}.isdisjoint(
        {s["session_id"] for s in accepted if s["at_ms"] < down_at})


def test_early_out_of_order_and_multipart_receipts_all_correlate(ns: Settings, tmp_path: Path) -> None:
    long_text = ("Уважаемый клиент! Ваш заказ {n} собран и передан в службу доставки. "
                 "Курьер позвонит за час до приезда. Спасибо, что выбрали наш магазин!")
    single = [make_request(phone=phone(80_000 + i), text=f"Заказ {i} доставлен") for i in range(150)]
    multi = [make_request(phone=phone(81_000 + i), text=long_text.format(n=100_000 + i))
             for i in range(50)]
    requests = single + multi
    flags = ("--latency-ms", "0-40", "--receipt-delay-ms", "0-300", "--receipt-before-response", "0.5")
    with simulator(tmp_path, *flags) as sim, sender(ns, sim, tmp_path) as proc:
        publish_requests(ns, requests)
        got = outcomes(ns, len(requests), timeout=60)
        parts = sum(len(o["gateway_message_ids"]) for o in got.values())
        receipts = wait_for(ns, topics.RECEIPTS, parts, timeout=60)
        assert proc.poll() is None
        submits = sim.submits()
    check_stream(requests, got, submits)
    assert parts == len(single) + 3 * len(multi)
    assert len(receipts) == parts, "one receipt per part, none twice"
    by_gateway_id = {r.record["gateway_message_id"]: r.record for r in receipts}
    assert len(by_gateway_id) == parts
    for request in requests:
        outcome = got[request["request_id"]]
        ids = outcome["gateway_message_ids"]
        assert len(ids) == (3 if request in multi else 1)
        for i, gw_id in enumerate(ids, 1):
            receipt = by_gateway_id[gw_id]
            assert receipt["message_id"] == request["request_id"]
            assert (receipt["segment"], receipt["segments"]) == (i, len(ids))
            assert receipt["state"] in {"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD"}
    # receipts reached the sender in another order than the submits went out
    submit_order = [s["message_id"] for s in submits if s["status"] == 0]
    receipt_order = sorted(by_gateway_id, key=lambda g: by_gateway_id[g]["received_at_ms"])
    assert receipt_order != submit_order
