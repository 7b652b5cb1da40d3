"""Dedup: has this request (or this very text to this number) been handled already?

The ledger maps an idempotency key to a `LedgerEntry` (state, at_ms, window_s):
- 'sending': intent recorded before the gateway submit (a crash after it leaves this);
- 'sent':    the gateway accepted it;
- 'final':   it ended without sending (suppressed, rejected, expired).
Keys are request ids (32 hex chars, see notification_request.avsc) and `content_key`s
(16 hex chars). Each entry expires `window_s` after `at_ms`; `prune` drops expired ones so
the ledger holds only the last window's worth of traffic.

`DedupLedger` is the compact in-memory form (hex keys and entries kept as ints);
`LedgerEntry.to_bytes()` is the 13-byte stored form.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

from pipeline.errors import PermanentError
from pipeline.sender.decision import Reject, suppressed

SENDING = "sending"
SENT = "sent"
FINAL = "final"
_STATE_CODES = {SENDING: 1, SENT: 2, FINAL: 3}
_STATES = (None, SENDING, SENT, FINAL)

MAX_WINDOW_S = 2**32 - 1
_STRUCT = struct.Struct("<BqI")  # state code, at_ms, window_s
_HEX_KEY = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_KEY_BITS = 128
_KEY_MASK = (1 << _KEY_BITS) - 1


class InvalidLedgerEntry(PermanentError):
    """Bytes or a state that are not a dedup ledger entry."""

    reason = "invalid_ledger_entry"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What happened to one key, when (`at_ms`), and how long it blocks (`window_s`)."""

    state: str
    at_ms: int
    window_s: int

    @property
    def expires_at_ms(self) -> int:
        """From this instant on the entry blocks nothing and may be pruned."""
        return self.at_ms + self.window_s * 1000

    def to_bytes(self) -> bytes:
        """13 bytes: state code (1), at_ms (int64), window_s (uint32)."""
        return _STRUCT.pack(_STATE_CODES[self.state], self.at_ms, self.window_s)

    @classmethod
    def from_bytes(cls, data: bytes) -> LedgerEntry:
        try:
            code, at_ms, window_s = _STRUCT.unpack(data)
        except struct.error as exc:
            raise InvalidLedgerEntry(f"ledger entry: {exc}") from None
        if not 0 < code < len(_STATES):
            raise InvalidLedgerEntry(f"ledger entry: unknown state code {code}")
        return cls(_STATES[code], at_ms, window_s)  # type: ignore[arg-type]


def record(state: str, now_ms: int, window_s: int) -> LedgerEntry:
    """The entry to store when a key reaches `state` now, blocking for `window_s`.

    Called by the agent before the submit ('sending'), after it ('sent'), or when the
    request ends otherwise ('final'). Windows beyond `MAX_WINDOW_S` are clamped.
    """
    if state not in _STATE_CODES:
        raise InvalidLedgerEntry(f"unknown ledger state {state!r}")
    return LedgerEntry(state, now_ms, min(max(window_s, 0), MAX_WINDOW_S))


def check_duplicate(
    request_id: str, now_ms: int, window_s: int, entry: LedgerEntry | None
) -> Reject | None:
    """Suppressed 'duplicate' when `entry` (the ledger's for `request_id`) is in the window.

    Called after consent, with the request's `dedup_window_s`. Any state blocks: a
    'sending' entry means an earlier attempt may have reached the gateway, and a second
    SMS is worse than none (the detail names the state so the agent can reconcile it).
    The window is half-open: at exactly `window_s` after the entry it no longer blocks.
    """
    if entry is not None and now_ms - entry.at_ms < window_s * 1000:
        return suppressed(
            "duplicate", f"request {request_id} already {entry.state} at {entry.at_ms}"
        )
    return None


def content_key(e164: str, text: str) -> str:
    """A 16-hex-char key for "this text to this number" (BLAKE2b, 64 bits)."""
    digest = hashlib.blake2b(digest_size=8, person=b"rassylka-text")
    digest.update(e164.encode())
    digest.update(b"\x00")
    digest.update(text.strip().encode())
    return digest.hexdigest()


def check_content_duplicate(
    key: str, now_ms: int, window_s: int, entry: LedgerEntry | None
) -> Reject | None:
    """Suppressed 'duplicate_content' when the same text went to the same number in the window.

    Only for requests with `dedup_by_content`; `key` is `content_key(e164, text)`,
    `window_s` the request's `dedup_window_s`. Only a 'sending' or 'sent' entry blocks:
    a text that was suppressed before was never delivered.
    """
    if entry is not None and entry.state != FINAL and now_ms - entry.at_ms < window_s * 1000:
        return suppressed(
            "duplicate_content", f"same text to this number {entry.state} at {entry.at_ms}"
        )
    return None


def is_expired(entry: LedgerEntry, now_ms: int) -> bool:
    """True when `entry` blocks nothing any more and may be dropped."""
    return now_ms >= entry.expires_at_ms


def _pack_key(key: str) -> int | str:
    if _HEX_KEY.fullmatch(key):
        return int(key, 16) | len(key) << _KEY_BITS
    return key


def _unpack_key(packed: int | str) -> str:
    if isinstance(packed, str):
        return packed
    return format(packed & _KEY_MASK, f"0{packed >> _KEY_BITS}x")


def _pack_entry(entry: LedgerEntry) -> int:
    return (entry.at_ms << 32 | entry.window_s) << 2 | _STATE_CODES[entry.state]


def _unpack_entry(packed: int) -> LedgerEntry:
    return LedgerEntry(
        _STATES[packed & 3],  # type: ignore[arg-type]
        packed >> 34,
        packed >> 2 & 0xFFFFFFFF,
    )


class DedupLedger(MutableMapping[str, LedgerEntry]):
    """An in-memory ledger: a mapping of key → `LedgerEntry`, stored as ints.

    Hex keys (request ids, content keys) are kept as ints and entries packed into one
    int, about 130 bytes per entry with the dict slot, so a million keys fit in ~130 MB.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int | str, int] = {}

    def __getitem__(self, key: str) -> LedgerEntry:
        return _unpack_entry(self._entries[_pack_key(key)])

    def __setitem__(self, key: str, entry: LedgerEntry) -> None:
        self._entries[_pack_key(key)] = _pack_entry(entry)

    def __delitem__(self, key: str) -> None:
        del self._entries[_pack_key(key)]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _pack_key(key) in self._entries

    def __iter__(self) -> Iterator[str]:
        return map(_unpack_key, list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def prune(self, now_ms: int) -> int:
        """Drop entries expired at `now_ms`; returns how many were dropped."""
        entries = self._entries
        dead = [k for k, v in entries.items() if now_ms >= (v >> 34) + (v >> 2 & 0xFFFFFFFF) * 1000]
        for k in dead:
            del entries[k]
        return len(dead)


def prune(ledger: MutableMapping[str, LedgerEntry], now_ms: int) -> int:
    """Drop the ledger's expired entries; returns how many. Call periodically, not per message.

    Works on a `DedupLedger` (fast path) or any mapping of key → `LedgerEntry`.
    """
    if isinstance(ledger, DedupLedger):
        return ledger.prune(now_ms)
    dead = [key for key, entry in ledger.items() if now_ms >= entry.expires_at_ms]
    for key in dead:
        del ledger[key]
    return len(dead)
