"""SMS text encoding: GSM 03.38 (7-bit default alphabet) or UCS-2, and segmentation.

Payloads follow the usual SMPP convention: GSM-7 text goes out with data_coding=0 as one
byte per septet (unpacked GSM 03.38 codes, extension characters as 0x1B + code; the SMSC
packs them), UCS-2 goes out with data_coding=8 as UTF-16-BE. Long messages are split into
parts, each carrying an 8-bit-reference concatenation UDH (`05 00 03 ref total seq`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

GSM7 = "GSM7"
UCS2 = "UCS2"
DATA_CODING_GSM7 = 0
DATA_CODING_LATIN1 = 3
DATA_CODING_UCS2 = 8

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67
MAX_PARTS = 255

ESC = 0x1B

# GSM 03.38 default alphabet, indexed by code; 0x1B is the escape to the extension table.
_DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_DEFAULT) == 128

# GSM 03.38 extension table: each costs two septets (ESC + code).
_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}

BASIC_CHARS: frozenset[str] = frozenset(c for i, c in enumerate(_DEFAULT) if i != ESC)
EXTENSION_CHARS: frozenset[str] = frozenset(_EXTENSION)
GSM7_CHARS: frozenset[str] = BASIC_CHARS | EXTENSION_CHARS

# Text → unpacked codes (as a latin-1 str, so `.encode('latin-1')` yields the payload).
_ENCODE_TABLE: dict[int, str] = {ord(c): chr(i) for i, c in enumerate(_DEFAULT) if i != ESC}
_ENCODE_TABLE.update({ord(c): chr(ESC) + chr(code) for c, code in _EXTENSION.items()})
# Codes → text, for the basic table (ESC handled separately when decoding).
_DECODE_TABLE: dict[int, str] = {i: c for i, c in enumerate(_DEFAULT) if i != ESC}
_EXTENSION_DECODE: dict[int, str] = {code: c for c, code in _EXTENSION.items()}

_NON_GSM7 = re.compile("[^" + re.escape("".join(sorted(GSM7_CHARS))) + "]")
_EXTENSION_RE = re.compile("[" + re.escape("".join(sorted(EXTENSION_CHARS))) + "]")
_ESC_CHR = chr(ESC)


class SmsSize(NamedTuple):
    """How a text goes on the wire: its encoding ('GSM7' or 'UCS2') and segment count."""

    encoding: str
    segments: int


@dataclass(frozen=True)
class EncodedMessage:
    """A text ready for submit_sm: one payload per segment plus its UDH.

    `parts` are wire payloads without UDH; `udh` holds one UDH per part (b"" when the
    message fits one segment); `units` counts septets (GSM7) or UTF-16 code units (UCS2).
    """

    encoding: str
    data_coding: int
    parts: list[bytes]
    udh: list[bytes]
    segments: int
    units: int

    def short_messages(self) -> list[bytes]:
        """The `short_message` field of each submit_sm: UDH followed by the payload."""
        return [header + payload for header, payload in zip(self.udh, self.parts, strict=True)]

    @property
    def esm_class(self) -> int:
        """submit_sm esm_class: 0x40 (UDH indicator) for concatenated parts, else 0."""
        return 0x40 if self.segments > 1 else 0


def is_gsm7(text: str) -> bool:
    """True when every character of `text` is in the GSM 03.38 alphabet or its extension."""
    return _NON_GSM7.search(text) is None


def septets(text: str) -> int:
    """Septets `text` needs in GSM-7 (extension characters count 2); assumes `is_gsm7`."""
    return len(text) + len(_EXTENSION_RE.findall(text))


def _cut_points(
    units: str | bytes, limit: int, width: int, split_here_is_bad: Callable[[Any, int], bool]
) -> list[int]:
    """Greedy split of `units` into windows of at most `limit` units of `width` items.

    `split_here_is_bad(units, end)` says a window ending at `end` would cut a character in
    two (an escape sequence or a surrogate pair); the window then ends one unit earlier.
    Returns the end offset of each window.
    """
    total = len(units)
    step = limit * width
    ends = []
    start = 0
    while start < total:
        end = start + step
        if end >= total:
            end = total
        elif split_here_is_bad(units, end):
            end -= width
        ends.append(end)
        start = end
    return ends


def _splits_escape(codes: str | bytes, end: int) -> bool:
    # ESC never appears except as an escape prefix, so an ESC last in the window is split.
    last = codes[end - 1]
    return last == _ESC_CHR or last == ESC


def _splits_surrogate(utf16: bytes, end: int) -> bool:
    return 0xD8 <= utf16[end - 2] <= 0xDB


def _gsm7_codes(text: str) -> str:
    return text.translate(_ENCODE_TABLE)


def segment_count(text: str) -> SmsSize:
    """(encoding, segments) of `text` without building payloads; agrees with `encode_sms`.

    Called per message to price it and to enforce the segment limit; never fails.
    """
    if _NON_GSM7.search(text) is None:
        if _EXTENSION_RE.search(text) is None:
            n = len(text)
            if n <= GSM7_SINGLE:
                return SmsSize(GSM7, 1)
            return SmsSize(GSM7, -(-n // GSM7_PART))
        codes = _gsm7_codes(text)
        if len(codes) <= GSM7_SINGLE:
            return SmsSize(GSM7, 1)
        return SmsSize(GSM7, len(_cut_points(codes, GSM7_PART, 1, _splits_escape)))
    if not text or max(text) < "\ud800":  # no surrogate pairs: one unit per character
        n = len(text)
        if n <= UCS2_SINGLE:
            return SmsSize(UCS2, 1)
        return SmsSize(UCS2, -(-n // UCS2_PART))
    utf16 = text.encode("utf-16-be", "surrogatepass")
    if len(utf16) <= UCS2_SINGLE * 2:
        return SmsSize(UCS2, 1)
    return SmsSize(UCS2, len(_cut_points(utf16, UCS2_PART, 2, _splits_surrogate)))


def encode_sms(text: str, reference: int) -> EncodedMessage:
    """Encode `text` for submit_sm: GSM-7 when every character allows it, else UCS-2.

    `reference` is the concatenation reference shared by all parts (only its low 8 bits
    are used; pick it per message, e.g. from a counter). Raises ValueError when the text
    needs more than 255 segments, which no handset can reassemble.
    """
    if _NON_GSM7.search(text) is None:
        payload = _gsm7_codes(text).encode("latin-1")
        encoding, data_coding = GSM7, DATA_CODING_GSM7
        units, width, single, part = len(payload), 1, GSM7_SINGLE, GSM7_PART
        splits_bad = _splits_escape
    else:
        payload = text.encode("utf-16-be", "surrogatepass")
        encoding, data_coding = UCS2, DATA_CODING_UCS2
        units, width, single, part = len(payload) // 2, 2, UCS2_SINGLE, UCS2_PART
        splits_bad = _splits_surrogate
    if units <= single:
        return EncodedMessage(encoding, data_coding, [payload], [b""], 1, units)
    ends = _cut_points(payload, part, width, splits_bad)
    total = len(ends)
    if total > MAX_PARTS:
        raise ValueError(f"text needs {total} segments, more than {MAX_PARTS}")
    ref = reference & 0xFF
    parts = []
    headers = []
    start = 0
    for seq, end in enumerate(ends, start=1):
        parts.append(payload[start:end])
        headers.append(bytes((0x05, 0x00, 0x03, ref, total, seq)))
        start = end
    return EncodedMessage(encoding, data_coding, parts, headers, total, units)


def decode_gsm7(payload: bytes) -> str:
    """Text of an unpacked GSM 03.38 payload (one septet per byte), as in MO and receipts.

    An escape followed by an unknown code reads as the basic character for that code, and
    a dangling escape as a space (GSM 03.38). Raises ValueError when a byte is above 0x7F,
    i.e. the payload is not unpacked GSM-7.
    """
    if payload and max(payload) > 0x7F:
        raise ValueError("not an unpacked GSM 03.38 payload: byte above 0x7F")
    codes = payload.decode("latin-1")
    if _ESC_CHR not in codes:
        return codes.translate(_DECODE_TABLE)
    out = []
    start = 0
    while True:
        esc = codes.find(_ESC_CHR, start)
        if esc < 0:
            out.append(codes[start:].translate(_DECODE_TABLE))
            return "".join(out)
        out.append(codes[start:esc].translate(_DECODE_TABLE))
        if esc + 1 == len(codes):
            out.append(" ")
            return "".join(out)
        code = ord(codes[esc + 1])
        out.append(_EXTENSION_DECODE.get(code) or _DECODE_TABLE.get(code, " "))
        start = esc + 2


def decode_payload(data_coding: int, payload: bytes) -> str:
    """Text of an inbound short message (MO or receipt) given its SMPP data_coding.

    0 reads as unpacked GSM-7, or latin-1 when bytes above 0x7F show the SMSC sent
    something else; 8 as UTF-16-BE; 1 as ASCII; 3 and anything unknown as latin-1, so the
    text is always visible. Never raises: undecodable bytes become U+FFFD.
    """
    # 0xF0-0xFF: GSM DCS "message class" group; bit 2 clear means the default alphabet.
    if data_coding == DATA_CODING_GSM7 or (0xF0 <= data_coding <= 0xFF and not data_coding & 0x04):
        try:
            return decode_gsm7(payload)
        except ValueError:
            return payload.decode("latin-1")
    if data_coding == DATA_CODING_UCS2:
        return payload.decode("utf-16-be", "replace")
    if data_coding == 1:
        return payload.decode("ascii", "replace")
    return payload.decode("latin-1")
