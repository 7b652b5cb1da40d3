"""Phone numbers leave the sender only hashed (for joins and counts) or masked (for eyes).

Called by `pipeline.analytics.rows` for every record that carries a number; nothing that
reaches ClickHouse holds a number in clear.
"""

from __future__ import annotations

import hashlib

HASH_BYTES = 16
_KEEP_HEAD = 4  # country code + operator prefix: +7916...
_KEEP_TAIL = 2


def phone_hash(e164: str, key: str | bytes) -> str:
    """Keyed BLAKE2b-128 of the E.164 number, as 32 hex characters.

    The same number and key always give the same hash, so analysts can count and join
    recipients; without the key the hash cannot be reversed by enumerating numbers.
    An empty key is a configuration mistake and raises ValueError.
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    if not key_bytes:
        raise ValueError("phone_hash needs a non-empty key")
    if len(key_bytes) > hashlib.blake2b.MAX_KEY_SIZE:
        key_bytes = hashlib.blake2b(key_bytes).digest()
    digest = hashlib.blake2b(_canonical(e164).encode(), digest_size=HASH_BYTES, key=key_bytes)
    return digest.hexdigest()


def mask(e164: str) -> str:
    """`+79161234567` → `+7916*****67`: prefix and last two digits, the rest starred.

    Short numbers (fewer than 7 digits) keep only the last two digits.
    """
    digits = _canonical(e164).lstrip("+")
    if not digits:
        return ""
    head = _KEEP_HEAD if len(digits) >= _KEEP_HEAD + _KEEP_TAIL + 1 else 0
    tail = min(_KEEP_TAIL, len(digits) - 1)
    hidden = len(digits) - head - tail
    return "+" + digits[:head] + "*" * hidden + digits[len(digits) - tail :]


def scrub(text: str | None, e164: str) -> str | None:
    """Free text (a reply, consent evidence) with the given number replaced by its mask."""
    if not text:
        return text
    digits = _canonical(e164).lstrip("+")
    if len(digits) < 5:
        return text
    masked = mask(e164)
    # "+79161234567" first, then the bare digits ("79161234567") a customer may type.
    return text.replace("+" + digits, masked).replace(digits, masked.lstrip("+"))


def _canonical(e164: str) -> str:
    return "".join(ch for ch in e164.strip() if ch.isdigit() or ch == "+")
