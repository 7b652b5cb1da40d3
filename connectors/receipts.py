"""Delivery receipts: read (and, for the simulator, write) the SMSC's receipt text.

SMPP 3.4 Appendix B describes the de-facto receipt text carried in a ``deliver_sm``
with ``esm_class & 0x04``::

    id:1a2b3c sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 text:Hello

SMSCs differ in case, spacing, underscores and which fields they send, so the parser is
lenient: every field is optional and unknown fields are ignored. When the PDU also
carries the ``receipted_message_id`` / ``message_state`` TLVs, those win (see
``connectors.smpp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# message_state TLV values (SMPP 3.4 section 5.2.28) -> the 7-letter names used in text.
MESSAGE_STATES: dict[int, str] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
STATE_CODES: dict[str, int] = {name: code for code, name in MESSAGE_STATES.items()}

# Final states: no further receipt follows for the message.
FINAL_STATES = frozenset({"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "REJECTD", "UNKNOWN"})

# Spellings seen in the wild for the same state.
_STATE_ALIASES = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "REJECTED": "REJECTD",
    "ACCEPTED": "ACCEPTD",
    "ENROUTE": "ENROUTE",
}

_KEY = re.compile(r"(?i)(?:^|(?<=\s))(id|sub|dlvrd|submit[ _]date|done[ _]date|stat|err|text)\s*:")


@dataclass(frozen=True, slots=True)
class ReceiptText:
    """The fields of one receipt text; ``None`` where the SMSC left a field out."""

    message_id: str | None = None
    submitted: int | None = None
    delivered: int | None = None
    submit_date: str | None = None
    done_date: str | None = None
    state: str | None = None
    error_code: str | None = None
    text: str | None = None


def normalise_state(raw: str) -> str:
    """Upper-case a state name and map long spellings (``delivered``) to the 7-letter one."""
    name = raw.strip().upper()
    return _STATE_ALIASES.get(name, name)


def state_name(code: int) -> str:
    """The 7-letter name of a ``message_state`` TLV value; ``UNKNOWN`` for unlisted codes."""
    return MESSAGE_STATES.get(code, "UNKNOWN")


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def parse_receipt_text(text: str) -> ReceiptText:
    """Parse receipt text into its fields.

    Never raises: text that is not a receipt gives a ``ReceiptText`` of ``None``s.
    Each value is one token (unknown ``key:value`` pairs are skipped); ``text:`` runs
    to the end of the string, so a quoted message body cannot confuse the fields
    before it.
    """
    match = _CANONICAL.match(text)
    fields = _canonical_fields(match) if match else _fields(text)
    state = fields.get("stat")
    err = fields.get("err")
    return ReceiptText(
        message_id=fields.get("id") or None,
        submitted=_int_or_none(fields["sub"]) if "sub" in fields else None,
        delivered=_int_or_none(fields["dlvrd"]) if "dlvrd" in fields else None,
        submit_date=fields.get("submit date") or None,
        done_date=fields.get("done date") or None,
        state=normalise_state(state) if state else None,
        error_code=err or None,
        text=fields.get("text"),
    )


# The text nearly every SMSC sends, fields in the order of SMPP 3.4 Appendix B, one space
# apart: read with one match instead of the general scan (a sender reads one per message).
# Anything else - other case, order, spacing, missing or empty fields - takes `_fields`;
# `tests/unit/connectors/test_receipt_fast.py` holds both to the same fields.
_CANONICAL = re.compile(
    r"id:(\S+) sub:(\S+) dlvrd:(\S+) submit date:(\S+) done date:(\S+) stat:(\S+) "
    r"err:(\S+)(?: text:(.*))?\Z", re.DOTALL)
_CANONICAL_KEYS = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err")


def _canonical_fields(match: re.Match[str]) -> dict[str, str]:
    fields = dict(zip(_CANONICAL_KEYS, match.groups(), strict=False))
    body = match.group(8)
    if body is not None:
        fields["text"] = body.strip()
    return fields


def _fields(text: str) -> dict[str, str]:
    """Every known field of `text` (the general, lenient scan)."""
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for i, match in enumerate(matches):
        key = match.group(1).lower().replace("_", " ")
        if key == "text":
            fields.setdefault(key, text[match.end() :].strip())
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        tokens = text[match.end() : end].split(maxsplit=1)  # values are single tokens
        fields.setdefault(key, tokens[0] if tokens else "")
    return fields


def format_receipt_text(
    message_id: str,
    state: str,
    error_code: str,
    submit_date: str,
    done_date: str,
    text: str = "",
) -> str:
    """Build receipt text the way SMSCs send it (used by the simulator)."""
    delivered = "001" if state == "DELIVRD" else "000"
    return (
        f"id:{message_id} sub:001 dlvrd:{delivered} submit date:{submit_date} "
        f"done date:{done_date} stat:{state} err:{error_code} text:{text[:20]}"
    )
