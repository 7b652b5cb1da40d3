"""GSM-7 / UCS-2 encoding and segmentation edges."""

from __future__ import annotations

import random

import pytest

from pipeline.sms.encoding import (
    EncodedMessage,
    decode_gsm7,
    decode_payload,
    encode_sms,
    is_gsm7,
    segment_count,
    septets,
)

EXTENSION = "^{}\\[~]|€\f"


def _decode(message: EncodedMessage) -> str:
    payload = b"".join(message.parts)
    if message.encoding == "GSM7":
        return decode_gsm7(payload)
    return payload.decode("utf-16-be")


def _check(text: str, encoding: str, segments: int) -> EncodedMessage:
    message = encode_sms(text, reference=7)
    assert (message.encoding, message.segments) == (encoding, segments)
    assert segment_count(text) == (encoding, segments)
    assert len(message.parts) == len(message.udh) == segments
    assert _decode(message) == text
    return message


def test_alphabet_and_extension_table() -> None:
    assert is_gsm7("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?")
    assert is_gsm7("¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà" + EXTENSION)
    for char in "`ÀçЖ😀\t\x1báú":
        assert not is_gsm7(char), char
    assert septets("a€b") == 4
    assert septets(EXTENSION) == 20


def test_extension_payload_is_escaped() -> None:
    message = encode_sms("a€{", reference=1)
    assert message.parts == [b"a\x1be\x1b("]
    assert message.units == 5
    assert message.data_coding == 0


def test_basic_codes() -> None:
    assert encode_sms("@Δ_ Ü§à", reference=0).parts == [b"\x00\x10\x11\x20\x5e\x5f\x7f"]


@pytest.mark.parametrize(
    ("length", "segments"), [(0, 1), (1, 1), (160, 1), (161, 2), (306, 2), (307, 3)]
)
def test_gsm7_limits(length: int, segments: int) -> None:
    message = _check("a" * length, "GSM7", segments)
    if segments > 1:
        assert all(len(part) == 153 for part in message.parts[:-1])


@pytest.mark.parametrize(("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_limits(length: int, segments: int) -> None:
    message = _check("ж" * length, "UCS2", segments)
    assert message.data_coding == 8
    assert message.units == length
    if segments > 1:
        assert all(len(part) == 134 for part in message.parts[:-1])


def test_extension_char_never_straddles_parts() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the escape would be septet 153, its code 154
    message = _check(text, "GSM7", 2)
    assert [len(part) for part in message.parts] == [152, 2 + 10]
    assert message.parts[0] == b"a" * 152
    assert message.parts[1].startswith(b"\x1be")
    assert message.units == 164


def test_extension_char_that_fits_stays() -> None:
    text = "a" * 151 + "€" + "b" * 10
    message = _check(text, "GSM7", 2)
    assert [len(part) for part in message.parts] == [153, 10]


def test_extension_chars_count_two_for_single_limit() -> None:
    _check("€" * 80, "GSM7", 1)
    _check("€" * 81, "GSM7", 2)


def test_two_segments_of_euro_signs() -> None:
    message = _check("€" * 152, "GSM7", 2)  # 304 septets: 76 escapes per part
    assert [len(part) for part in message.parts] == [152, 152]
    assert all(part == b"\x1be" * 76 for part in message.parts)
    # 306 septets would fit 2 × 153 if escapes could straddle; they cannot.
    _check("€" * 153, "GSM7", 3)


def test_surrogate_pair_never_straddles_parts() -> None:
    text = "ж" * 66 + "😀" + "ж" * 10  # the pair would be units 67 and 68
    message = _check(text, "UCS2", 2)
    assert [len(part) for part in message.parts] == [132, 2 * 12]
    assert message.units == 78
    assert message.parts[1].startswith("😀".encode("utf-16-be"))


def test_surrogate_pairs_count_two_units() -> None:
    _check("😀" * 35, "UCS2", 1)
    _check("😀" * 36, "UCS2", 2)
    message = _check("😀" * 67, "UCS2", 3)  # 134 units, 33 pairs per part
    assert [len(part) for part in message.parts] == [132, 132, 4]


def test_udh_bytes() -> None:
    message = encode_sms("x" * 400, reference=0x1A2)
    assert message.segments == 3
    assert message.udh == [
        bytes([5, 0, 3, 0xA2, 3, 1]),
        bytes([5, 0, 3, 0xA2, 3, 2]),
        bytes([5, 0, 3, 0xA2, 3, 3]),
    ]
    assert message.esm_class == 0x40
    short = message.short_messages()
    assert short[0] == message.udh[0] + message.parts[0]
    assert len(short[0]) == 6 + 153


def test_single_part_has_no_udh() -> None:
    message = encode_sms("hello", reference=3)
    assert message.udh == [b""]
    assert message.esm_class == 0
    assert message.short_messages() == [b"hello"]


def test_more_than_255_parts_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_sms("a" * (153 * 255 + 1), reference=0)
    assert encode_sms("a" * (153 * 255), reference=0).segments == 255


def test_segment_count_agrees_with_encode_sms() -> None:
    rng = random.Random(20240611)
    pools = ["abc XYZ 123.,!?\n", EXTENSION, "привет ЖЁЩ", "😀👍", "@£ΔÄ§"]
    for _ in range(2000):
        weights = [rng.random() for _ in pools]
        weights[3] *= rng.choice([0, 0.05, 0.5])
        weights[2] *= rng.choice([0, 0, 1])
        alphabet = "".join(
            p * max(1, int(w * 20)) for p, w in zip(pools, weights, strict=True) if w
        )
        length = rng.choice([rng.randint(0, 20), rng.randint(60, 330), rng.randint(130, 1000)])
        text = "".join(rng.choice(alphabet) for _ in range(length))
        message = encode_sms(text, reference=rng.randint(0, 255))
        assert segment_count(text) == (message.encoding, message.segments), text
        assert _decode(message) == text
        part_limit = 153 if message.encoding == "GSM7" else 134
        if message.segments == 1:
            assert len(message.parts[0]) <= 160 if message.encoding == "GSM7" else 140
        else:
            assert all(len(part) <= part_limit for part in message.parts)


def test_decode_gsm7() -> None:
    assert decode_gsm7(b"\x00\x01Hi\x1be\x1b<") == "@£Hi€["
    assert decode_gsm7(b"\x1b\x41") == "A"  # unknown extension reads as the basic char
    assert decode_gsm7(b"ab\x1b") == "ab "  # a dangling escape reads as a space
    assert decode_gsm7(b"") == ""
    with pytest.raises(ValueError):
        decode_gsm7(b"\xe9")


def test_decode_payload() -> None:
    assert decode_payload(0, b"STOP") == "STOP"
    assert decode_payload(0, b"caf\xe9") == "café"  # not GSM-7: latin-1 fallback
    assert decode_payload(8, "СТОП".encode("utf-16-be")) == "СТОП"
    assert decode_payload(8, b"\x04") == "\ufffd"
    assert decode_payload(3, b"\xe9") == "é"
    assert decode_payload(0xF0, b"\x00") == "@"
    assert decode_payload(99, b"abc") == "abc"
