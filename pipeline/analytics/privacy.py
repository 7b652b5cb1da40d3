"""Phone numbers leave the sender only hashed (for joins and counts) or masked (for eyes).

Called by `pipeline.analytics.rows` for every record that carries a number; nothing that
reaches ClickHouse holds a number in clear.
"""

from __future__ import annotations

import functools
import hashlib
import re

import phonenumbers

HASH_BYTES = 16
_KEEP_HEAD = 4  # country code + operator prefix: +7916...
_KEEP_TAIL = 2
_MIN_NUMBER_DIGITS = 7  # fewer digits in a text: no phone number of any country in it
_CORE = 10  # the digits a number is written with at home, after its country code or trunk 8/0
_SEPARATOR = r"[\s\-.()]*"
_NON_DIGITS = re.compile(r"\D+")
_LAST_RUN = re.compile(r"\+?\d(?:[\d\s\-.()]*\d)?(?=[\s\-.()]*$)")  # digits ending a text
_FIRST_RUN = re.compile(r"^([\s\-.()]*)(\d(?:[\d\s\-.()]*\d)?)")  # ... and beginning it


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
    """Free text (a reply, consent evidence, a profile attribute) with every phone number in
    it masked.

    The given number is found however it is written there: "+79161234567", "79161234567",
    "8 (916) 123-45-67", "+7 916 123 45 67" (its last ten digits in order, separators
    between them allowed, with whatever country code or trunk prefix stands before them).
    Any other number that phonenumbers finds valid in the text ("звонил с 8 (903)
    111-22-33", "+44 7911 123456") is masked too, read in the given number's region when
    written without a country code: a third person's number is no less personal. Digits
    that are no valid number (an order number, a code, an amount) stay as written."""
    if not text:
        return text
    return _scrub_others(_scrub_own(text, e164), e164)


def _scrub_own(text: str, e164: str) -> str:
    found = _written(e164)
    if found is None:
        return text
    digits, core, masked, written = found
    # the usual text holds no such digits: answered without a pattern run
    if core not in text and (len(text) < len(core) or core not in _NON_DIGITS.sub("", text)):
        return text
    # "+79161234567" first, then the bare digits ("79161234567") a customer may type.
    text = text.replace("+" + digits, masked).replace(digits, masked.lstrip("+"))
    return written.sub(masked, text)


def _scrub_others(text: str, e164: str) -> str:
    if sum(ch.isdigit() for ch in text) < _MIN_NUMBER_DIGITS:  # most texts: no number at all
        return text
    out, last = [], 0
    for match in phonenumbers.PhoneNumberMatcher(text, _region(e164),
                                                 leniency=phonenumbers.Leniency.VALID):
        out.append(text[last:match.start])
        out.append(mask(phonenumbers.format_number(match.number,
                                                   phonenumbers.PhoneNumberFormat.E164)))
        last = match.end
    return "".join(out) + text[last:] if out else text


@functools.lru_cache(maxsize=4096)
def _region(e164: str) -> str:
    """The region of `e164`, in which numbers written without a country code are read;
    "ZZ" (only numbers written with one) when it has none."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(_canonical(e164))) or "ZZ"
    except phonenumbers.NumberParseException:
        return "ZZ"


def scrub_segment(text: str | None, e164: str) -> str | None:
    """`scrub` for one segment of a concatenated reply, whose neighbours may hold the rest
    of the number: digits at the end of the segment that could begin the number, or at
    its start that could end it (three or more) are masked too. Otherwise "... 8 (916) 12"
    and "3-45-67 ..." would each pass, and the `replies` view, which joins the segments,
    would show the number."""
    text = scrub(text, e164)
    found = _written(e164)
    if not text or found is None:
        return text
    digits, core, masked, _pattern = found

    def begins_it(run: re.Match[str]) -> str:
        got = _NON_DIGITS.sub("", run.group())
        tails = (got[i:] for i in range(len(got) - 2))
        return masked if any(core.startswith(t) or digits.startswith(t) for t in tails) \
            else run.group()

    def ends_it(run: re.Match[str]) -> str:
        got = _NON_DIGITS.sub("", run.group(2))
        return run.group(1) + masked if any(digits.endswith(got[:i])
                                            for i in range(3, len(got) + 1)) else run.group()

    text = _LAST_RUN.sub(begins_it, text, count=1)
    return _FIRST_RUN.sub(ends_it, text, count=1)


@functools.lru_cache(maxsize=4096)
def _written(e164: str) -> tuple[str, str, str, re.Pattern[str]] | None:
    """(digits, the last ten of them, the mask, the number as people write it) of `e164`;
    None for a number too short to look for."""
    digits = _canonical(e164).lstrip("+")
    if len(digits) < 5:
        return None
    core = digits[-_CORE:]
    written = re.compile(rf"(?<!\d)(?:\+?\d{{1,3}}{_SEPARATOR})?{_SEPARATOR.join(core)}(?!\d)")
    return digits, core, mask(e164), written


def _canonical(e164: str) -> str:
    return "".join(ch for ch in e164.strip() if ch.isdigit() or ch == "+")
