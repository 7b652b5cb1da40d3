import json
from pathlib import Path

import pytest

from pipeline.analytics.privacy import phone_hash
from pipeline.analytics.rows import (
    DECISION_COLUMNS,
    INBOUND_COLUMNS,
    MAPPINGS,
    MESSAGE_COLUMNS,
    PROFILE_COLUMNS,
    REDELIVERY_COLUMNS,
    InvalidRecord,
    message_row,
    to_row,
)
from pipeline.errors import PermanentError

KEY = "k"
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"

OUTCOME = {
    "request_id": "r1",
    "message_id": "r1",
    "status": "suppressed",
    "reason": "quiet_hours_expired",
    "detail": "call +79161234567 later",
    "lane": "marketing",
    "rule_id": "promo",
    "template_id": "t",
    "variant": "b",
    "campaign_id": None,
    "customer_id": "c1",
    "phone": "+79161234567",
    "region": "RU",
    "operator": None,
    "gateway": None,
    "gateway_message_ids": [],
    "segments": 0,
    "encoding": None,
    "cost": 0.0,
    "event_occurred_at_ms": 1_700_000_000_000,
    "decided_at_ms": 1_700_000_001_000,
    "attempts": 1,
    "config_version": "v3@0123abcd",
}

SAMPLES = {
    "send_outcome": OUTCOME,
    "delivery_receipt": {
        "message_id": "r1",
        "gateway_message_id": "g1",
        "state": "DELIVRD",
        "error_code": None,
        "segment": 1,
        "segments": 2,
        "received_at_ms": 5,
        "gateway": "smpp",
    },
    "click": {
        "click_id": "k1",
        "code": "abc",
        "message_id": "r1",
        "url": "https://x",
        "clicked_at_ms": 6,
        "user_agent": None,
    },
    "conversion": {
        "conversion_id": "v1",
        "order_id": "o1",
        "customer_id": "c1",
        "message_id": "r1",
        "touch": "click",
        "touch_at_ms": 6,
        "revenue_minor": 12345,
        "currency": "RUB",
        "converted_at_ms": 7,
        "rule_id": "promo",
        "campaign_id": None,
        "variant": "b",
    },
    "inbound_message": {
        "inbound_id": "i1",
        "from_number": "+79161234567",
        "to": "SHOP",
        "text": "СТОП 79161234567",
        "received_at_ms": 8,
        "gateway": None,
        "part_ref": 167,
        "segment": 2,
        "segments": 3,
    },
    "consent_change": {
        "phone": "+79161234567",
        "scope": "marketing",
        "status": "opt_out",
        "source": "sms_reply",
        "changed_at_ms": 9,
        "customer_id": None,
        "evidence": "СТОП",
    },
}


def test_outcome_row_follows_column_order() -> None:
    row = dict(zip(MESSAGE_COLUMNS, message_row(OUTCOME, KEY), strict=True))
    assert row["message_id"] == "r1" and row["status"] == "suppressed"
    assert row["reason"] == "quiet_hours_expired"
    assert row["campaign_id"] == "" and row["operator"] == "" and row["encoding"] == ""
    assert row["phone_hash"] == phone_hash("+79161234567", KEY)
    assert row["phone_masked"] == "+7916*****67"
    assert row["decided_at"] == 1_700_000_001_000 and row["event_time"] == 1_700_000_000_000
    assert row["cost"] == 0.0 and row["segments"] == 0


def test_a_duplicate_delivery_never_becomes_a_message_row() -> None:
    """Regression: a `suppressed duplicate` record (a request delivered again) went to
    `messages`, a ReplacingMergeTree on the message id, and replaced the real outcome."""
    record = {**OUTCOME, "status": "suppressed", "reason": "duplicate", "detail": "already sent"}
    table, row = to_row("send_outcome", record, KEY)
    assert table == "redeliveries"
    assert dict(zip(REDELIVERY_COLUMNS, row, strict=True))["request_id"] == OUTCOME["request_id"]
    assert to_row("send_outcome", OUTCOME, KEY)[0] == "messages"


def test_outcome_without_phone_has_empty_hash() -> None:
    row = dict(zip(MESSAGE_COLUMNS, message_row({**OUTCOME, "phone": None}, KEY), strict=True))
    assert row["phone_hash"] == "" and row["phone_masked"] == ""


@pytest.mark.parametrize("schema", sorted(SAMPLES))
def test_every_schema_maps_to_a_row_of_its_columns_without_clear_phones(schema: str) -> None:
    table, row = to_row(schema, SAMPLES[schema], KEY)
    mapping = MAPPINGS[schema]
    assert table == mapping.table
    assert len(row) == len(mapping.columns)
    assert not any(isinstance(v, str) and "9161234567" in v for v in row)


@pytest.mark.parametrize("schema", sorted(SAMPLES))
def test_required_fields_of_the_avro_schema_are_the_ones_rows_need(schema: str) -> None:
    # Every field without a default is required: a record missing one is invalid.
    avsc = json.loads((SCHEMAS / f"{schema}.avsc").read_text())
    names = {f["name"] for f in avsc["fields"]}
    assert set(SAMPLES[schema]) == names  # samples are complete records
    for field in avsc["fields"]:
        if "default" in field:
            continue
        broken = {k: v for k, v in SAMPLES[schema].items() if k != field["name"]}
        try:
            to_row(schema, broken, KEY)
        except InvalidRecord:
            continue
        # a required field the table does not keep (e.g. gateway_message_ids) may be absent
        assert field["name"] in {"detail", "gateway_message_ids"}


def test_a_reply_keeps_its_place_in_a_concatenated_reply_and_a_short_one_has_none() -> None:
    table, row = to_row("inbound_message", SAMPLES["inbound_message"], KEY)
    got = dict(zip(INBOUND_COLUMNS, row, strict=True))
    assert table == "inbound" and (got["part_ref"], got["segment"], got["segments"]) == (167, 2, 3)
    short = {k: v for k, v in SAMPLES["inbound_message"].items()
             if k not in {"part_ref", "segment", "segments"}}  # written before the fields
    got = dict(zip(INBOUND_COLUMNS, to_row("inbound_message", short, KEY)[1], strict=True))
    assert (got["part_ref"], got["segment"], got["segments"]) == (None, 1, 1)


def test_optional_fields_may_be_absent() -> None:
    avsc = json.loads((SCHEMAS / "send_outcome.avsc").read_text())
    minimal = {f["name"]: OUTCOME[f["name"]] for f in avsc["fields"] if "default" not in f}
    table, row = to_row("send_outcome", minimal, KEY)
    assert table == "messages" and len(row) == len(MESSAGE_COLUMNS)


def test_invalid_records_are_permanent_errors() -> None:
    with pytest.raises(InvalidRecord, match="decided_at_ms") as info:
        to_row("send_outcome", {k: v for k, v in OUTCOME.items() if k != "decided_at_ms"}, KEY)
    assert isinstance(info.value, PermanentError) and info.value.reason == "invalid_record"
    with pytest.raises(InvalidRecord):
        to_row("send_outcome", {**OUTCOME, "cost": "free"}, KEY)
    with pytest.raises(InvalidRecord):
        to_row("customer_profile", {}, KEY)


@pytest.mark.parametrize(("phone", "status", "region"), [
    ("+79161234567", "", "RU"),
    ("+77012345678", "", "KZ"),
    ("+74951234567", "not_mobile", ""),
    ("+7 123", "invalid_number", ""),
    ("", "invalid_number", ""),
])
def test_profile_rows_say_whether_the_sender_can_text_the_number(phone, status, region):
    record = {"customer_id": "c1", "phone": phone, "country": "RU", "locale": "ru",
              "time_zone": None, "segments": [], "attributes": {}, "updated_at_ms": 5}
    row = dict(zip(PROFILE_COLUMNS, to_row("customer_profile", record, "k", 9)[1], strict=True))
    assert (row["number_status"], row["number_region"]) == (status, region)


def test_decisions_of_campaigns_and_bandits_become_one_table():
    campaign = {"campaign_id": "spring", "decided_at_ms": 7, "action": "rollout", "winner": "b",
                "probabilities": {"a": 0.1, "b": 0.9}, "reason": "r", "metric": "click",
                "inputs": {"variants": {}}}
    bandit = {"rule_id": "promo", "kind": "bandit", "metric": "conversion", "weights": {"a": 1},
              "previous_weights": {"a": 0.5}, "updated_at_ms": 8, "inputs": {"x": 1}}
    c = dict(zip(DECISION_COLUMNS, to_row("decision", campaign, "k")[1], strict=True))
    b = dict(zip(DECISION_COLUMNS, to_row("decision", bandit, "k")[1], strict=True))
    assert (c["decision_id"], c["kind"], c["action"], c["winner"]) == (
        "campaign:spring:7", "campaign", "rollout", "b")
    assert (b["decision_id"], b["kind"], b["action"], b["weights"]) == (
        "bandit:promo:8", "bandit", "weights", {"a": 1.0})
    assert json.loads(b["inputs"]) == {"x": 1}
    with pytest.raises(PermanentError):
        to_row("decision", {"action": "rollout"}, "k")
    with pytest.raises(PermanentError):
        to_row("campaign_member", {"customer_id": "c", "phase": "later"}, "k", 1)
