import hashlib

import pytest

from pipeline.sender.dedup import (
    DedupLedger,
    InvalidLedgerEntry,
    LedgerEntry,
    check_content_duplicate,
    check_duplicate,
    content_key,
    is_expired,
    prune,
    record,
)

RID = hashlib.sha256(b"event|rule|customer").hexdigest()[:32]


def test_no_entry_is_not_duplicate():
    assert check_duplicate(RID, 1_000, 60, None) is None


@pytest.mark.parametrize("state", ["sending", "sent", "final"])
def test_any_state_within_window_is_duplicate(state):
    reject = check_duplicate(RID, 1_000, 60, record(state, 0, 60))
    assert (reject.status, reject.reason) == ("suppressed", "duplicate")
    assert state in reject.detail


def test_window_is_half_open():
    entry = record("sent", 0, 60)
    assert check_duplicate(RID, 59_999, 60, entry) is not None
    assert check_duplicate(RID, 60_000, 60, entry) is None


def test_window_comes_from_the_request():
    entry = record("sent", 0, 60)
    assert check_duplicate(RID, 100_000, 3_600, entry) is not None


def test_content_key_is_short_and_stable():
    key = content_key("+79161234567", "Скидка 10%")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == content_key("+79161234567", "Скидка 10% ")
    assert key != content_key("+79161234568", "Скидка 10%")
    assert key != content_key("+79161234567", "Скидка 20%")


def test_content_duplicate():
    key = content_key("+79161234567", "hello")
    assert check_content_duplicate(key, 1_000, 60, None) is None
    reject = check_content_duplicate(key, 1_000, 60, record("sent", 0, 60))
    assert reject.reason == "duplicate_content"
    assert check_content_duplicate(key, 60_000, 60, record("sent", 0, 60)) is None
    # a text that was never sent does not block the same text later
    assert check_content_duplicate(key, 1_000, 60, record("final", 0, 60)) is None


def test_entry_bytes_round_trip():
    entry = record("sending", 1_700_000_000_000, 86_400)
    data = entry.to_bytes()
    assert len(data) == 13
    assert LedgerEntry.from_bytes(data) == entry
    with pytest.raises(InvalidLedgerEntry):
        LedgerEntry.from_bytes(b"\x07" + data[1:])
    with pytest.raises(InvalidLedgerEntry):
        LedgerEntry.from_bytes(b"")
    with pytest.raises(InvalidLedgerEntry):
        record("queued", 0, 1)


def test_record_clamps_window():
    assert record("sent", 0, 2**40).window_s == 2**32 - 1
    assert record("sent", 0, -5).window_s == 0


def test_ledger_mapping_round_trips_all_key_kinds():
    ledger = DedupLedger()
    keys = [RID, content_key("+7", "x"), "not-hex-key", RID.upper(), "00" * 16]
    for i, key in enumerate(keys):
        ledger[key] = record("sent", i, 10)
    assert len(ledger) == len(keys)
    assert sorted(ledger) == sorted(keys)
    for i, key in enumerate(keys):
        assert key in ledger
        assert ledger[key] == LedgerEntry("sent", i, 10)
    assert ledger.get("missing") is None
    del ledger[RID]
    assert RID not in ledger


def test_prune_drops_only_expired_entries():
    ledger = DedupLedger()
    ledger["a" * 32] = record("sent", 0, 10)  # expires at 10_000
    ledger["b" * 32] = record("final", 5_000, 10)  # expires at 15_000
    ledger["c" * 16] = record("sending", 0, 3_600)
    assert prune(ledger, 9_999) == 0
    assert prune(ledger, 10_000) == 1
    assert "a" * 32 not in ledger and "b" * 32 in ledger
    assert prune(ledger, 15_000) == 1
    assert list(ledger) == ["c" * 16]


def test_prune_plain_dict():
    ledger = {"k1": record("sent", 0, 1), "k2": record("sent", 0, 100)}
    assert prune(ledger, 1_000) == 1
    assert list(ledger) == ["k2"]
    assert is_expired(ledger["k2"], 100_000) and not is_expired(ledger["k2"], 99_999)


def test_negative_at_ms_survives_packing():
    ledger = DedupLedger()
    ledger[RID] = record("sent", -1_000, 5)
    assert ledger[RID] == LedgerEntry("sent", -1_000, 5)
