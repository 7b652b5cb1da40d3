"""What the sender remembers to record each receipt and reply exactly once."""

from __future__ import annotations

from pipeline.sender.replies import (
    DONE_KEEP_MS,
    FOREIGN_KEEP_MS,
    INBOUND_DEDUP_WINDOW_MS,
    InboundBook,
    Part,
    ReceiptBook,
)


def test_part_round_trips_through_its_stored_form() -> None:
    part = Part(3, "a" * 32, 2, 3)
    assert Part.from_bytes(3, part.to_bytes()) == part


def test_a_final_receipt_is_recorded_once_and_its_marker_expires() -> None:
    book = ReceiptBook()
    book.track("smsc-1", Part(0, "m1", 1, 1))
    assert book.lookup("smsc-1") == Part(0, "m1", 1, 1)
    assert not book.recorded("smsc-1", "DELIVRD")
    book.finished("smsc-1", 0, now_ms=1_000)
    assert book.recorded("smsc-1", "DELIVRD") and book.recorded("smsc-1", "UNDELIV")
    assert book.lookup("smsc-1") is None
    assert book.expired({0}, 1_000 + DONE_KEEP_MS) == []
    assert book.expired({0}, 2_000 + DONE_KEEP_MS) == [(0, "smsc-1")]
    assert not book.recorded("smsc-1", "DELIVRD")


def test_an_intermediate_receipt_is_remembered_by_state() -> None:
    book = ReceiptBook()
    book.seen.add(("smsc-2", "ENROUTE"))
    assert book.recorded("smsc-2", "ENROUTE") and not book.recorded("smsc-2", "DELIVRD")


def test_ids_of_a_partition_given_up_still_correlate_for_a_while() -> None:
    book = ReceiptBook()
    book.track("smsc-3", Part(1, "m3", 1, 1))
    book.finished("smsc-9", 1, now_ms=0)
    book.give_up({1}, now_ms=10)
    assert book.lookup("smsc-3") == Part(1, "m3", 1, 1)  # late receipt, moved partition
    assert not book.recorded("smsc-9", "DELIVRD")  # the new owner holds that marker now
    book.expired(set(), 11 + FOREIGN_KEEP_MS)
    assert book.lookup("smsc-3") is None
    book.track("smsc-4", Part(1, "m4", 1, 1))  # taken back: owned again
    assert "smsc-4" not in book.foreign


def test_a_reply_sent_again_is_recognised_within_the_window() -> None:
    book = InboundBook()
    key = InboundBook.key("+79161234567", "SHOPRU", "STOP", None)
    assert key == InboundBook.key("+79161234567", "SHOPRU", "STOP", None)
    assert key != InboundBook.key("+79161234567", "SHOPRU", "СТОП", None)
    book.remember(key, 1_000)
    assert book.recorded(key, 1_000 + INBOUND_DEDUP_WINDOW_MS - 1)
    assert not book.recorded(key, 1_000 + INBOUND_DEDUP_WINDOW_MS)


def test_a_reply_with_an_smsc_reference_is_known_by_it() -> None:
    a = InboundBook.key("+79161234567", "SHOPRU", "STOP", "mo-7")
    assert a == InboundBook.key("+79161234567", "SHOPRU", "STOP ", "mo-7")
    assert a != InboundBook.key("+79161234567", "SHOPRU", "STOP", "mo-8")


def test_an_unmatched_receipt_id_hints_at_the_format_under_which_it_matches() -> None:
    book = ReceiptBook()
    book.track("1a2b", Part(0, "m1", 1, 1))  # answered in hex
    book.track("43981", Part(0, "m2", 1, 1))  # answered in decimal (= hex abcd)
    assert "message_ids: {submit_sm_resp: hex, deliver_sm: decimal}" in book.format_hint("6699")
    assert "message_ids: {submit_sm_resp: decimal, deliver_sm: hex}" in book.format_hint("ABCD")
    assert book.format_hint("12") == "" and book.format_hint("msg-1") == ""
    assert book.format_hint("") == ""


def test_segments_of_a_long_reply_are_told_apart_even_when_they_read_alike() -> None:
    """Two segments of one concatenated reply may carry the same text ("ha" * 80): by
    their text alone the second was taken for a re-delivery of the first, and dropped."""
    text = "ха" * 35
    first = InboundBook.key("+79161234567", "SHOPRU", text, None, (7, 1, 2))
    second = InboundBook.key("+79161234567", "SHOPRU", text, None, (7, 2, 2))
    assert first != second
    assert first == InboundBook.key("+79161234567", "SHOPRU", text, None, (7, 1, 2))
    # a reply of one segment keeps the key it always had (replies read back at start-up)
    assert InboundBook.key("+7916", "SHOPRU", "STOP", None, None) == \
        InboundBook.key("+7916", "SHOPRU", "STOP", None)
