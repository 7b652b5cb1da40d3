"""Where a segment of a concatenated MO belongs: its UDH or its sar_* TLVs."""

from __future__ import annotations

import pytest

from connectors.smpp import concatenation, decode_short_message

UDHI = 0x40
SAR = {0x020C: (0x1234).to_bytes(2, "big"), 0x020E: bytes([3]), 0x020F: bytes([2])}


def test_an_8_bit_reference_udh_gives_reference_segment_and_count() -> None:
    body = bytes([5, 0x00, 3, 0xA7, 3, 2]) + b"second part"
    assert concatenation(body, UDHI, {}) == (0xA7, 2, 3)
    assert decode_short_message(body, 0, UDHI) == "second part"


def test_a_16_bit_reference_udh_after_another_element() -> None:
    # a port-addressing element (0x05, 4 bytes) first, then the 16-bit concatenation
    body = bytes([12, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0, 0x08, 4, 0x01, 0x02, 2, 2]) + b"x"
    assert concatenation(body, UDHI, {}) == (0x0102, 2, 2)


def test_sar_tlvs_when_there_is_no_udh() -> None:
    assert concatenation(b"middle", 0, SAR) == (0x1234, 2, 3)


@pytest.mark.parametrize("body, esm_class, sar", [
    (b"STOP", 0, {}),                                         # one segment
    (bytes([5, 0x00, 3, 1, 2, 1]) + b"x", 0, {}),             # a UDH without the UDHI flag
    (bytes([5, 0x00, 3, 1, 1, 1]) + b"x", UDHI, {}),          # "1 of 1" is one segment
    (bytes([5, 0x00, 3, 1, 3, 0]) + b"x", UDHI, {}),          # segment 0
    (bytes([5, 0x00, 3, 1, 3, 4]) + b"x", UDHI, {}),          # segment past the count
    (bytes([5, 0x00, 3, 1]), UDHI, {}),                       # a UDH cut short
    (bytes([4, 0x05, 4, 0x0B]) + b"x", UDHI, {}),             # an element cut short
    (bytes([3, 0x24, 1, 0x01]) + b"x", UDHI, {}),             # no concatenation element
    (b"x", 0, {0x020C: b"\x00\x01", 0x020E: bytes([2])}),     # sar without its seqnum
])
def test_anything_else_is_a_message_of_one_segment(body: bytes, esm_class: int,
                                                    sar: dict[int, bytes]) -> None:
    assert concatenation(body, esm_class, sar) is None


def test_a_reply_in_the_default_alphabet_reads_as_gsm_03_38() -> None:
    """Regression: data_coding 0 was read as latin-1, so a reply's '@' (GSM code 0x00)
    became NUL, '$' a control character and '€' an escape and an 'e'."""
    assert decode_short_message(b"ivan\x11p\x00mail.ru 5\x02 5\x1be", 0, 0) == "ivan_p@mail.ru 5$ 5€"
    assert decode_short_message("Café".encode("latin-1"), 0, 0) == "Café"  # not GSM-7: latin-1
    assert decode_short_message("Стоп".encode("utf-16-be"), 8, 0) == "Стоп"
