"""The sender's state layout: one changelog key per request and one per SMSC id.

Every change of a key is a changelog record, so a request that used a key per step (its
ledger entry, a queue entry, a wire entry, each written and then removed) cost the broker
and the sender about ten records per SMS; with one key per request and per SMSC id it is
about six.

    L<request id>  the ledger entry (13 bytes, `pipeline.sender.dedup.LedgerEntry`), and
                   while the request waits for the wire or is on it, its job after it:
                   b"Q" + the request's bytes                       queued
                   b"W" + the sender's 8-byte token + request bytes  on the wire
    G<SMSC id>     our part (`replies.Part`) until its final receipt is recorded, then
                   b"\\x00" + at_ms (int64): the marker that recognises a re-delivery
    C, F, H, P     content dedup, frequency caps, holds, parked receipts

State written before this layout kept queue and wire entries under keys of their own
(Q<request id>, W<request id>) and the receipt marker under R<SMSC id>. A restore reads
them still; the sender rewrites them into this layout in its next transaction
(`legacy_rewrite`).
"""

from __future__ import annotations

import struct

LEDGER, CONTENT, CAPS, HOLD, GATEWAY_ID, PARKED = b"L", b"C", b"F", b"H", b"G", b"P"
LEGACY_QUEUED, LEGACY_WIRE, LEGACY_RECEIPT_DONE = b"Q", b"W", b"R"

ENTRY_SIZE = 13  # LedgerEntry.to_bytes()
QUEUED, ON_WIRE = b"Q", b"W"
_TOKEN_SIZE = 8
_LEGACY_WIRE_MARK = b"\x01"  # a legacy W value: mark, token, request bytes
_DONE = b"\x00"  # a G value that is a receipt marker (a part starts with a hex message id)
_AT = struct.Struct("<q")


def queued(entry: bytes, raw: bytes) -> bytes:
    """An L value: ledger entry `entry` (its first 13 bytes), the request queued."""
    return entry[:ENTRY_SIZE] + QUEUED + raw


def on_wire(entry: bytes, token: bytes, raw: bytes) -> bytes:
    """An L value: ledger entry `entry`, the request on the wire, sent by `token`."""
    assert len(token) == _TOKEN_SIZE
    return entry[:ENTRY_SIZE] + ON_WIRE + token + raw


def entry(value: bytes) -> bytes:
    """The ledger entry of an L value."""
    return value[:ENTRY_SIZE]


def job(value: bytes) -> tuple[bytes, bytes, bytes]:
    """(QUEUED, ON_WIRE or b"", token, request bytes) of an L value."""
    kind = value[ENTRY_SIZE:ENTRY_SIZE + 1]
    if kind == ON_WIRE:
        start = ENTRY_SIZE + 1 + _TOKEN_SIZE
        return kind, value[ENTRY_SIZE + 1:start], value[start:]
    if kind == QUEUED:
        return kind, b"", value[ENTRY_SIZE + 1:]
    return b"", b"", b""


def wire_token(value: bytes | None) -> bytes | None:
    """The token of an L value on the wire; None when the request is not on the wire."""
    if value is None or value[ENTRY_SIZE:ENTRY_SIZE + 1] != ON_WIRE:
        return None
    return value[ENTRY_SIZE + 1:ENTRY_SIZE + 1 + _TOKEN_SIZE]


def receipt_done(at_ms: int) -> bytes:
    """A G value: the final receipt of this SMSC id was recorded at `at_ms`."""
    return _DONE + _AT.pack(at_ms)


def done_at(value: bytes) -> int | None:
    """When the final receipt of a G value was recorded; None for a part still waiting."""
    return _AT.unpack_from(value, 1)[0] if value[:1] == _DONE else None


def legacy_wire(value: bytes) -> tuple[bytes, bytes]:
    """(token, request bytes) of a legacy W value; the oldest had no token (b"")."""
    if value[:1] == _LEGACY_WIRE_MARK:
        return value[1:1 + _TOKEN_SIZE], value[1 + _TOKEN_SIZE:]
    return b"", value


def legacy_rewrite(key: bytes, value: bytes, ledger: bytes | None,
                   fresh_entry: bytes) -> tuple[bytes, bytes]:
    """(new key, new value) replacing legacy key `key` holding `value`.

    `ledger` is the request's current L value (None if it has none); `fresh_entry` the
    ledger entry to use then (a 'sending' entry of the request).
    """
    kind, rest = key[:1], key[1:]
    if kind == LEGACY_RECEIPT_DONE:
        return GATEWAY_ID + rest, receipt_done(_AT.unpack_from(value)[0])
    base = ledger[:ENTRY_SIZE] if ledger else fresh_entry
    if kind == LEGACY_QUEUED:
        return LEDGER + rest, queued(base, value)
    if kind == LEGACY_WIRE:
        token, raw = legacy_wire(value)
        return LEDGER + rest, on_wire(base, token or bytes(_TOKEN_SIZE), raw)
    raise ValueError(f"not a legacy state key: {key[:1]!r}")
