"""Receipt text parsing: the standard format and the ways SMSCs bend it."""

from __future__ import annotations

import pytest

from connectors.receipts import (
    ReceiptText,
    format_receipt_text,
    parse_receipt_text,
    state_name,
)
from connectors.smpp import canonical_id

STANDARD = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
    "stat:DELIVRD err:000 text:Hello world"
)


def test_standard_receipt() -> None:
    r = parse_receipt_text(STANDARD)
    assert r == ReceiptText(
        message_id="0123456789",
        submitted=1,
        delivered=1,
        submit_date="2401011200",
        done_date="2401011201",
        state="DELIVRD",
        error_code="000",
        text="Hello world",
    )


def test_lowercase_keys_and_state() -> None:
    r = parse_receipt_text("ID:abc SUB:1 DLVRD:0 Stat:undeliv Err:027")
    assert (r.message_id, r.submitted, r.delivered, r.state, r.error_code) == (
        "abc",
        1,
        0,
        "UNDELIV",
        "027",
    )


def test_missing_fields_are_none() -> None:
    r = parse_receipt_text("id:42 stat:EXPIRED")
    assert r.message_id == "42"
    assert r.state == "EXPIRED"
    assert r.error_code is None
    assert r.submit_date is None and r.done_date is None
    assert r.text is None and r.submitted is None


def test_empty_err_is_none_and_nonnumeric_counts() -> None:
    r = parse_receipt_text("id:1 sub:x dlvrd: stat:REJECTD err:")
    assert r.error_code is None
    assert r.submitted is None and r.delivered is None
    assert r.state == "REJECTD"


def test_text_runs_to_end_and_may_contain_keys() -> None:
    r = parse_receipt_text("id:7 stat:DELIVRD err:000 text:reply stat:UNDELIV err:1 please")
    assert r.state == "DELIVRD"
    assert r.error_code == "000"
    assert r.text == "reply stat:UNDELIV err:1 please"


def test_underscored_dates_and_extra_spaces() -> None:
    r = parse_receipt_text("id: 99  submit_date:2401011200  done_date:2401011300  stat: DELIVRD")
    assert r.message_id == "99"
    assert r.submit_date == "2401011200"
    assert r.done_date == "2401011300"
    assert r.state == "DELIVRD"


def test_long_state_names_are_normalised() -> None:
    assert parse_receipt_text("id:1 stat:Delivered").state == "DELIVRD"
    assert parse_receipt_text("id:1 stat:rejected").state == "REJECTD"


def test_alphanumeric_hex_ids_and_unknown_fields() -> None:
    r = parse_receipt_text("id:1a2B3c4D5e vendor:xyz stat:ACCEPTD err:0x0B")
    assert r.message_id == "1a2B3c4D5e"
    assert r.state == "ACCEPTD"
    assert r.error_code == "0x0B"


def test_not_a_receipt() -> None:
    assert parse_receipt_text("Hello, your order is ready") == ReceiptText()
    assert parse_receipt_text("") == ReceiptText()


def test_key_inside_word_is_not_a_key() -> None:
    # 'paid:' ends in 'id:' but is not the id field.
    r = parse_receipt_text("paid:5 id:77 stat:DELIVRD")
    assert r.message_id == "77"


def test_state_names_from_tlv_codes() -> None:
    assert state_name(2) == "DELIVRD"
    assert state_name(5) == "UNDELIV"
    assert state_name(8) == "REJECTD"
    assert state_name(99) == "UNKNOWN"


def test_format_round_trips() -> None:
    text = format_receipt_text("ff01", "UNDELIV", "001", "2401011200", "2401011205", "Привет")
    r = parse_receipt_text(text)
    assert (r.message_id, r.state, r.error_code, r.delivered, r.text) == (
        "ff01",
        "UNDELIV",
        "001",
        0,
        "Привет",
    )


@pytest.mark.parametrize(("raw", "id_format", "kept"), [
    ("1a2B", "text", "1a2B"),  # SMPP 3.4's default: verbatim
    ("1a2B", "hex", "6699"),
    ("00006699", "decimal", "6699"),  # leading zeros go
    ("6699", "decimal", "6699"),
    ("", "hex", ""),
    ("msg-17", "hex", "msg-17"),  # not a number in its format: verbatim
])
def test_message_ids_given_as_numbers_are_kept_in_decimal(raw: str, id_format: str, kept: str) -> None:
    assert canonical_id(raw, id_format) == kept


def test_an_id_the_smsc_answered_in_hex_meets_its_receipt_in_decimal() -> None:
    for n in (0, 1, 255, 4096, 2**63 + 5):
        assert canonical_id(format(n, "X"), "hex") == canonical_id(str(n), "decimal")
