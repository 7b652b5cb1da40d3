"""The sender's state layout: one key per request and per SMSC id, and the rewrite of the
old layout's queue, wire and receipt-marker keys."""

from __future__ import annotations

import struct

import pytest

from pipeline.sender import layout
from pipeline.sender.dedup import LedgerEntry, record
from pipeline.sender.replies import Part

SENDING = record("sending", 1_700_000_000_000, 3600).to_bytes()
SENT = record("sent", 1_700_000_000_500, 3600).to_bytes()
RAW = b"\x00avro request \x01\x02" * 3
TOKEN = b"tok12345"


def test_a_queued_request_keeps_its_ledger_entry_and_bytes() -> None:
    value = layout.queued(SENDING, RAW)
    assert LedgerEntry.from_bytes(layout.entry(value)).state == "sending"
    assert layout.job(value) == (layout.QUEUED, b"", RAW)
    assert layout.wire_token(value) is None


def test_a_request_on_the_wire_carries_the_senders_token() -> None:
    value = layout.on_wire(layout.queued(SENDING, RAW), TOKEN, RAW)
    assert layout.entry(value) == SENDING
    assert layout.job(value) == (layout.ON_WIRE, TOKEN, RAW)
    assert layout.wire_token(value) == TOKEN


def test_a_bare_ledger_entry_has_no_job() -> None:
    assert layout.job(SENT) == (b"", b"", b"")
    assert layout.wire_token(SENT) is None and layout.wire_token(None) is None


def test_a_gateway_id_holds_a_part_until_its_receipt_marker() -> None:
    part = Part(1, "a" * 32, 2, 3)
    assert layout.done_at(part.to_bytes()) is None
    assert layout.done_at(layout.receipt_done(1_700_000_000_123)) == 1_700_000_000_123


def test_legacy_queue_and_wire_entries_join_the_requests_ledger_key() -> None:
    rid = b"f" * 32
    key, value = layout.legacy_rewrite(b"Q" + rid, RAW, SENDING, b"")
    assert (key, value) == (b"L" + rid, layout.queued(SENDING, RAW))
    key, value = layout.legacy_rewrite(b"W" + rid, b"\x01" + TOKEN + RAW, SENDING, b"")
    assert (key, value) == (b"L" + rid, layout.on_wire(SENDING, TOKEN, RAW))
    # the oldest wire entries had no token: they are nobody's (always in doubt)
    key, value = layout.legacy_rewrite(b"W" + rid, RAW, None, SENDING)
    assert layout.job(value) == (layout.ON_WIRE, bytes(8), RAW) and layout.entry(value) == SENDING


def test_a_legacy_receipt_marker_becomes_the_gateway_ids_marker() -> None:
    key, value = layout.legacy_rewrite(b"Rsmsc-42", struct.pack("<q", 1234), None, b"")
    assert key == b"Gsmsc-42" and layout.done_at(value) == 1234


def test_only_legacy_keys_are_rewritten() -> None:
    with pytest.raises(ValueError):
        layout.legacy_rewrite(b"L" + b"f" * 32, SENDING, None, b"")
