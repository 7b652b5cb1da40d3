"""The sender through Kafka and the SMSC simulator: every check, holds, limits, receipts."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from sendkit import (
    NOW,
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
from stages import settle, wait_for

from pipeline import kafka_io, topics
from pipeline.settings import Settings


def daytime(ns: Settings, tmp_path: Path, **limits) -> Settings:
    """`ns` with quiet hours off (tests must not depend on the hour they run at)."""
    return replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={}, **limits))


def test_transactional_request_is_submitted_and_receipt_correlates(ns: Settings, tmp_path: Path) -> None:
    request = make_request()
    with simulator(tmp_path, "--receipt-delay-ms", "20") as sim, sender(ns, sim, tmp_path):
        publish_requests(ns, [request])
        outcome = outcomes(ns, 1)[request["request_id"]]
        receipts = wait_for(ns, topics.RECEIPTS, 1)
    assert outcome["status"] == "submitted", outcome
    assert outcome["phone"] == "+79161234567" and outcome["region"] == "RU"
    assert outcome["encoding"] == "UCS2" and outcome["segments"] == 1
    assert outcome["cost"] > 0
    assert len(outcome["gateway_message_ids"]) == 1
    submits = sim.submits()
    assert [s["destination"] for s in submits] == ["79161234567"]
    assert submits[0]["message_id"] == outcome["gateway_message_ids"][0]
    assert submits[0]["source"] == "SHOPRU" and submits[0]["data_coding"] == 8
    receipt = receipts[0].record
    assert receipt["message_id"] == request["request_id"]
    assert receipt["gateway_message_id"] == outcome["gateway_message_ids"][0]


def test_every_suppression_and_rejection_reason(ns: Settings, tmp_path: Path) -> None:
    cfg = daytime(ns, tmp_path)
    long_cyrillic = "Ж" * 450  # 7 UCS-2 segments, max is 6
    cases = {
        "invalid_number": make_request(phone="12345"),
        "not_mobile": make_request(phone="+74951234567"),
        "country_not_allowed": make_request(phone="+447911123456", country="GB"),
        "no_marketing_consent": marketing(phone=phone(1)),
        "opted_out": marketing(phone=phone(2)),
        "unregistered_sender_id": make_request(phone=phone(3), sender_id="FAKEBANK"),
        "forbidden_word": make_request(phone=phone(4), text="Лучшее казино города ждёт вас"),
        "link_domain_not_allowed": make_request(phone=phone(5), text="Оплатите: https://evil.example.com/pay"),
        "missing_opt_out_footer": marketing(phone=phone(6), text="Скидка 20% на всё!"),
        "unrendered_placeholder": make_request(phone=phone(7), text="Здравствуйте, {{ customer.first_name }}"),
        "too_many_segments": make_request(phone=phone(8), text=long_cyrillic),
        "ttl_expired": make_request(phone=phone(9), expires_at_ms=NOW() - 1000),
    }
    # Caps and same-text dedup are per recipient: requests are keyed by customer, so one
    # customer's requests meet in one partition's state.
    capped = [marketing(phone=phone(10), customer_id="cust-capped", text=f"Акция {i}: скидка. Отписка: STOP")
              for i in range(3)]
    same_text = [make_request(phone=phone(11), customer_id="cust-same", dedup_by_content=True,
                              text="Код 1234") for _ in range(2)]
    opt_in(cfg, [phone(2), phone(6), phone(10)])
    kafka_io.publish(cfg, topics.CONSENT, [(f"{phone(2)}|marketing", {
        "phone": phone(2), "scope": "marketing", "status": "opt_out", "source": "support",
        "changed_at_ms": NOW(), "customer_id": None, "evidence": None})], "consent_change")
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path):
        publish_requests(cfg, list(cases.values()))
        publish_requests(cfg, capped)  # same partition order is not guaranteed: publish after
        publish_requests(cfg, same_text)
        got = outcomes(cfg, len(cases) + len(capped) + len(same_text))
    for reason, request in cases.items():
        outcome = got[request["request_id"]]
        assert outcome["reason"] == reason, (reason, outcome)
        assert outcome["status"] in ("rejected", "suppressed", "expired")
        assert outcome["detail"]
        assert outcome["segments"] == 0 and outcome["cost"] == 0.0
    assert got[cases["no_marketing_consent"]["request_id"]]["status"] == "suppressed"
    assert got[cases["ttl_expired"]["request_id"]]["status"] == "expired"
    assert sorted(got[r["request_id"]]["status"] for r in capped) == ["submitted", "submitted", "suppressed"]
    assert [got[r["request_id"]]["reason"] for r in capped].count("frequency_cap") == 1
    assert sorted(str(got[r["request_id"]]["reason"]) for r in same_text) == ["None", "duplicate_content"]
    sent_to = {s["destination"] for s in sim.submits()}
    assert sent_to == {phone(10)[1:], phone(11)[1:]}


def test_republished_request_is_never_sent_twice(ns: Settings, tmp_path: Path) -> None:
    """A request delivered again keeps its one outcome; the repeat is counted on
    sms.redeliveries (regression: it used to add a 'suppressed duplicate' outcome that
    replaced the real one in analytics)."""
    request = make_request(phone=phone(20))
    with simulator(tmp_path) as sim, sender(ns, sim, tmp_path):
        publish_requests(ns, [request])
        outcomes(ns, 1)
        publish_requests(ns, [request])
        publish_requests(ns, [request])
        again = kafka_io.read_topic(ns, topics.REDELIVERIES, lambda m: len(m) >= 2, 30)
        got = settle(ns, topics.OUTCOMES, idle=2.0)
    assert [m.record["status"] for m in got] == ["submitted"]
    assert [m.record["reason"] for m in again] == ["duplicate", "duplicate"]
    assert {m.record["request_id"] for m in again} == {request["request_id"]}
    assert len(sim.submits()) == 1


def test_long_cyrillic_text_goes_as_concatenated_segments(ns: Settings, tmp_path: Path) -> None:
    text = ("Уважаемый клиент! Ваш заказ 123456 собран и передан в службу доставки. "
            "Курьер позвонит за час до приезда. Спасибо, что выбрали наш магазин!")
    assert 134 < len(text) <= 201
    request = make_request(phone=phone(30), text=text)
    with simulator(tmp_path) as sim, sender(ns, sim, tmp_path):
        publish_requests(ns, [request])
        outcome = outcomes(ns, 1)[request["request_id"]]
        receipts = wait_for(ns, topics.RECEIPTS, 3)
    assert outcome["segments"] == 3 and outcome["encoding"] == "UCS2"
    parts = [bytes.fromhex(s["short_message"]) for s in sim.submits()]
    assert len(parts) == 3
    refs = {p[3] for p in parts}
    assert len(refs) == 1
    assert [p[:3] for p in parts] == [b"\x05\x00\x03"] * 3
    assert [(p[4], p[5]) for p in parts] == [(3, 1), (3, 2), (3, 3)]
    assert all(s["esm_class"] & 0x40 and s["data_coding"] == 8 for s in sim.submits())
    assert b"".join(p[6:] for p in parts).decode("utf-16-be") == text
    assert sorted(r.record["segment"] for r in receipts) == [1, 2, 3]
    assert {r.record["message_id"] for r in receipts} == {request["request_id"]}


def test_throttled_smsc_slows_the_sender_down_and_loses_nothing(ns: Settings, tmp_path: Path) -> None:
    requests = [make_request(phone=phone(100 + i), text=f"Code {i}") for i in range(150)]
    with simulator(tmp_path, "--throttle-above-per-s", "40") as sim, sender(ns, sim, tmp_path):
        publish_requests(ns, requests)
        got = outcomes(ns, len(requests), timeout=90)
    assert all(o["status"] == "submitted" for o in got.values())
    submits = sim.submits()
    throttled = [s for s in submits if s["status"] == 0x58]
    accepted = [s for s in submits if s["status"] == 0]
    assert throttled, "the simulator should have answered ESME_RTHROTTLED"
    assert len(accepted) == len(requests)
    assert len({s["destination"] for s in accepted}) == len(requests)


def test_transactional_goes_first_under_a_marketing_flood(ns: Settings, tmp_path: Path) -> None:
    cfg = daytime(ns, tmp_path, frequency_caps={})
    flood = [marketing(phone=phone(1000 + i), text=f"Акция {i}. Отписка: STOP") for i in range(300)]
    payments = [make_request(phone=phone(5000 + i), text=f"Оплатите счёт {i}") for i in range(10)]
    opt_in(cfg, [r["phone"] for r in flood])
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path, RASSYLKA_RATE_PER_BIND="50"):
        publish_requests(cfg, flood)
        time.sleep(1.0)  # the flood is queued and draining at 100/s
        publish_requests(cfg, payments)
        outcomes(cfg, len(flood) + len(payments), timeout=90)
    order = [s["destination"] for s in sim.submits() if s["status"] == 0]
    payment_numbers = {r["phone"][1:] for r in payments}
    positions = [i for i, d in enumerate(order) if d in payment_numbers]
    assert len(positions) == len(payments)
    # 300 marketing at 100/s take 3 s; the payments, published 1 s in, must not wait for them.
    assert max(positions) < 200, f"payments went out at positions {positions} of {len(order)}"


def test_quiet_hours_hold_marketing_and_release_it_when_the_window_opens(ns: Settings, tmp_path: Path) -> None:
    while time.gmtime().tm_sec > 45:  # keep the wait for the next minute short and predictable
        time.sleep(1)
    now = time.gmtime()
    start = f"{(now.tm_hour - 1) % 24:02d}:{now.tm_min:02d}"
    end = f"{now.tm_hour:02d}:{(now.tm_min + 1) % 60:02d}" if now.tm_min < 59 else f"{(now.tm_hour + 1) % 24:02d}:00"
    quiet = {"marketing": {"start": start, "end": end, "default_time_zone": "UTC"}}
    cfg = daytime(ns, tmp_path)
    cfg = replace(cfg, config_dir=config_with(tmp_path, cfg.config_dir, quiet_hours=quiet))
    held = marketing(phone=phone(40), time_zone="UTC")
    short_ttl = marketing(phone=phone(41), time_zone="UTC", expires_at_ms=NOW() + 5_000)
    urgent = make_request(phone=phone(42))
    opt_in(cfg, [phone(40), phone(41)])
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path):
        publish_requests(cfg, [held, short_ttl, urgent])
        first = outcomes(cfg, 2, timeout=30)
        assert held["request_id"] not in first, "marketing must be held at night"
        assert first[urgent["request_id"]]["status"] == "submitted", "transactional is not held"
        assert first[short_ttl["request_id"]]["status"] == "expired"
        assert first[short_ttl["request_id"]]["reason"] == "expires_during_hold"
        released = outcomes(cfg, 3, timeout=90)
    assert released[held["request_id"]]["status"] == "submitted"
    send_time = next(s["at_ms"] for s in sim.submits() if s["destination"] == phone(40)[1:])
    hh, mm = map(int, end.split(":"))
    assert time.gmtime(send_time / 1000).tm_min == mm


def test_stop_reply_opts_the_number_out(ns: Settings, tmp_path: Path) -> None:
    cfg = daytime(ns, tmp_path)
    number = phone(50)
    opt_in(cfg, [number])
    first = marketing(phone=number, text="Новая коллекция уже в магазине. Отписка: STOP")
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path):
        publish_requests(cfg, [first])
        assert outcomes(cfg, 1)[first["request_id"]]["status"] == "submitted"
        sim.mo(number, "SHOPRU", "  Стоп! ")
        changes = kafka_io.read_topic(cfg, topics.CONSENT,
                                      lambda m: any(x.record["status"] == "opt_out" for x in m), 30)
        inbound = wait_for(cfg, topics.INBOUND, 1)
        second = marketing(phone=number, text="Ещё одна акция. Отписка: STOP")
        publish_requests(cfg, [second])
        got = outcomes(cfg, 2)
    opt_out = [m.record for m in changes if m.record["status"] == "opt_out"]
    assert opt_out and opt_out[0]["source"] == "sms_reply" and opt_out[0]["phone"] == number
    assert opt_out[0]["scope"] == "marketing"
    assert inbound[0].record["text"].strip() == "Стоп!"
    assert got[second["request_id"]]["reason"] == "opted_out"
    assert len(sim.submits()) == 1
    assert settle(cfg, topics.DEAD_LETTERS, idle=0.5, timeout=2) == []


def test_a_reply_in_the_gsm_alphabet_is_recorded_as_written(ns: Settings, tmp_path: Path) -> None:
    """Regression: a reply in the SMSC default alphabet (data_coding 0, GSM 03.38, as the
    sender writes its own SMS) was read as latin-1: '@' became NUL, '_' and '$' control
    characters, '€' an escape and an 'e'."""
    cfg = daytime(ns, tmp_path)
    text = "Write to ivan_petrov@mail.ru: 5$ or 5€ {ok}"
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path):
        sim.wait_bound()
        sim.mo(phone(52), "SHOPRU", text)
        inbound = wait_for(cfg, topics.INBOUND, 1)
    assert inbound[0].record["text"] == text


@pytest.mark.parametrize("concat", ["udh", "sar"])
def test_a_long_reply_is_recorded_segment_by_segment_and_a_segment_reading_stop_opts_nobody_out(
        ns: Settings, tmp_path: Path, concat: str) -> None:
    """Regression: the segments of a concatenated reply were recorded as replies of their
    own, without their place, and each was read as a STOP on its own: a customer whose long
    message happened to leave "STOP" alone in its last segment was opted out. Now each
    segment carries its reference and place (analytics joins them: the `replies` view), and
    a segment is never read as a STOP."""
    cfg = daytime(ns, tmp_path)
    number = phone(51)
    opt_in(cfg, [number])
    sentence = "Please call me back about order 12345, the courier did not come today. "
    text = (sentence * 5)[:306] + "STOP"  # three segments of 153: the last one is "STOP"
    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path):
        sim.wait_bound()
        sim.mo(number, "SHOPRU", text, concat=concat)
        inbound = wait_for(cfg, topics.INBOUND, 3)
        later = marketing(phone=number, text="Ещё одна акция. Отписка: STOP")
        publish_requests(cfg, [later])
        got = outcomes(cfg, 1)
    changes = settle(cfg, topics.CONSENT, idle=1.0, timeout=10)
    assert not [m.record for m in changes if m.record and m.record["status"] == "opt_out"]
    assert got[later["request_id"]]["status"] == "submitted"
    segments = sorted((m.record for m in inbound), key=lambda r: r["segment"])
    assert [(r["segment"], r["segments"]) for r in segments] == [(1, 3), (2, 3), (3, 3)]
    assert len({r["part_ref"] for r in segments}) == 1 and segments[0]["part_ref"] is not None
    assert "".join(r["text"] for r in segments) == text
    assert len({r["inbound_id"] for r in segments}) == 3
