"""Avro contracts: round trips, single-object header, evolution both ways, bad bytes."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from pipeline import avro
from pipeline.avro import SCHEMA_DIR, DecodeError, SchemaRegistry

SAMPLES = {
    "order_status_changed": {"event_id": "e1", "customer_id": "c1", "occurred_at_ms": 1,
                             "order_id": "A-1", "status": "shipped", "tracking_url": "https://t"},
    "payment_due": {"event_id": "e2", "customer_id": "c1", "occurred_at_ms": 2,
                    "invoice_id": "I-1", "amount_minor": 150000, "due_date": "2026-12-01"},
    "promotion": {"event_id": "e3", "customer_id": "c1", "occurred_at_ms": 3, "campaign_id": "bf"},
    "service_notice": {"event_id": "e4", "customer_id": "c1", "occurred_at_ms": 4,
                       "notice_id": "n1", "service": "app", "starts_at": "2026-12-01T01:00:00+03:00"},
    "customer_profile": {"customer_id": "c1", "phone": "+79161234567", "segments": ["vip"]},
    "consent_change": {"phone": "+79161234567", "scope": "marketing", "status": "opt_in",
                       "source": "web_form", "changed_at_ms": 5},
    "notification_request": {
        "request_id": "r", "event_id": "e", "event_type": "payment_due", "event_occurred_at_ms": 1,
        "rule_id": "r1", "template_id": "t", "variant": "a", "locale": "ru", "customer_id": "c",
        "phone": "+7916", "lane": "transactional", "sender_id": "SHOP", "text": "Привет",
        "created_at_ms": 1, "expires_at_ms": 2},
    "send_outcome": {"request_id": "r", "message_id": "r", "status": "submitted", "lane": "marketing",
                     "rule_id": "r1", "template_id": "t", "variant": "a", "customer_id": "c",
                     "decided_at_ms": 9, "gateway_message_ids": ["x", "y"], "segments": 2},
    "delivery_receipt": {"message_id": "m", "gateway_message_id": "g", "state": "DELIVRD",
                         "received_at_ms": 1},
    "inbound_message": {"inbound_id": "i", "from_number": "+7916", "to": "SHOP", "text": "СТОП",
                        "received_at_ms": 1},
    "click": {"click_id": "k", "code": "abc", "message_id": "m", "url": "https://x", "clicked_at_ms": 1},
    "conversion": {"conversion_id": "v", "order_id": "o", "customer_id": "c", "message_id": "m",
                   "touch": "click", "touch_at_ms": 1, "revenue_minor": 100, "converted_at_ms": 2},
    "dead_letter": {"stage": "router", "reason": "undecodable", "error": "x", "source_topic": "t",
                    "source_partition": 0, "source_offset": 1, "key": b"k", "value": b"\x00",
                    "failed_at_ms": 1},
}


def test_every_schema_has_a_sample() -> None:
    assert set(SAMPLES) == set(avro.registry().current)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    data = avro.encode(name, SAMPLES[name])
    assert data[:2] == b"\xc3\x01"
    decoded = avro.decode(name, data)
    for key, value in SAMPLES[name].items():
        assert decoded[key] == value
    assert avro.decode_any(data) == (name, decoded)


def test_header_is_little_endian_crc64_of_canonical_form() -> None:
    contract = avro.registry().contract("click")
    canonical = fastavro.schema.to_parsing_canonical_form(contract.parsed)
    big_endian = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    assert avro.encode("click", SAMPLES["click"])[2:10] == bytes.fromhex(big_endian)[::-1]


def _encode_with(schema_path: str, record: dict) -> bytes:
    reg = SchemaRegistry()
    raw = json.loads((SCHEMA_DIR / schema_path).read_text())
    contract = next(c for c in reg.by_fingerprint.values() if c.schema == raw)
    return avro.encode(contract.name, record, contract)


def test_new_reader_reads_old_data() -> None:
    old = {"event_id": "e1", "customer_id": "c1", "occurred_at_ms": 1, "order_id": "A", "status": "paid"}
    data = _encode_with("history/order_status_changed.v1.avsc", old)
    decoded = avro.decode("order_status_changed", data)
    assert decoded["status"] == "paid"
    assert decoded["pickup_point"] is None and decoded["attributes"] == {}


def test_old_reader_reads_new_data() -> None:
    new = dict(SAMPLES["customer_profile"], time_zone="Asia/Yekaterinburg")
    data = avro.encode("customer_profile", new)
    old_schema = json.loads((SCHEMA_DIR / "history/customer_profile.v1.avsc").read_text())
    writer = avro.writer_of(data)
    old = fastavro.schemaless_reader(io.BytesIO(data[10:]), writer.parsed,
                                     fastavro.parse_schema(old_schema))
    assert old["phone"] == "+79161234567" and "time_zone" not in old


@pytest.mark.parametrize("data", [b"", b"garbage", b"\xc3\x01" + b"\x00" * 8 + b"x",
                                  b"\xc3\x01" + bytes(range(8)) + b"\xff" * 30])
def test_bad_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        avro.decode("order_status_changed", data)


def test_truncated_body_is_a_decode_error() -> None:
    data = avro.encode("order_status_changed", SAMPLES["order_status_changed"])
    with pytest.raises(DecodeError):
        avro.decode("order_status_changed", data[:14])


def test_wrong_contract_is_a_decode_error() -> None:
    data = avro.encode("click", SAMPLES["click"])
    with pytest.raises(DecodeError, match="expected a order_status_changed"):
        avro.decode("order_status_changed", data)


def test_encode_rejects_records_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="does not match"):
        avro.encode("click", {"click_id": 5})
