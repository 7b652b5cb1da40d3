"""What the sender remembers about receipts and replies, so each is recorded exactly once.

A delivery receipt names the SMSC's id of one part; `ReceiptBook` maps that id back to
our message (`track`, filled when a submit result is recorded) and remembers which
receipts were already published, so that one the SMSC sends again - because the
sender died after recording it but before acknowledging it - is acknowledged without a
second record. Final receipts leave a durable marker in the sender's state (written by
the worker in the same transaction as the receipt); intermediate states and receipts of
parts nobody could correlate are remembered in memory (bounded).

Ids of partitions this worker no longer owns are kept for a while (`foreign`): the SMSC
may still deliver their receipts to this worker's binds after a rebalance, and the
correlation is still right.

`InboundBook` does the same for replies (MO): a reply the SMSC sends again carries no
id of ours, so it is recognised by the SMSC's reference when there is one, else by
(sender, recipient, text) within `INBOUND_DEDUP_WINDOW_MS`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

FINAL_RECEIPT_STATES = frozenset({"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED"})
FOREIGN_KEEP_MS = 3_600_000  # ids of partitions moved away: kept an hour for late receipts
DONE_KEEP_MS = 24 * 3_600_000  # a final receipt's marker: re-deliveries come within a day
INBOUND_DEDUP_WINDOW_MS = 600_000
_SEEN_CAPACITY = 200_000


@dataclass(frozen=True, slots=True)
class Part:
    """Our side of one SMSC id: the input partition, our message id, segment i of n."""

    partition: int
    message_id: str
    segment: int
    segments: int

    def to_bytes(self) -> bytes:
        return f"{self.message_id}|{self.segment}|{self.segments}".encode()

    @classmethod
    def from_bytes(cls, partition: int, data: bytes) -> Part:
        message_id, segment, segments = data.decode().split("|")
        return cls(partition, message_id, int(segment), int(segments))


class _Seen:
    """A bounded set that forgets the oldest keys first."""

    __slots__ = ("_keys", "_capacity")

    def __init__(self, capacity: int = _SEEN_CAPACITY) -> None:
        self._keys: OrderedDict[object, int] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: object, at_ms: int = 0) -> None:
        self._keys[key] = at_ms
        self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def at(self, key: object) -> int | None:
        return self._keys.get(key)


class ReceiptBook:
    """SMSC id → our part, and which receipts were already recorded."""

    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}  # ids of owned partitions (mirrors the state)
        self.foreign: dict[str, tuple[Part, int]] = {}  # ids of partitions moved away, since
        self.done: dict[str, tuple[int, int]] = {}  # final receipt recorded: id -> (p, at_ms)
        self.seen = _Seen()  # (id, state) published by this process

    def track(self, gateway_id: str, part: Part) -> None:
        self.parts[gateway_id] = part
        self.foreign.pop(gateway_id, None)

    def lookup(self, gateway_id: str) -> Part | None:
        part = self.parts.get(gateway_id)
        if part is None and gateway_id in self.foreign:
            part = self.foreign[gateway_id][0]
        return part

    def format_hint(self, gateway_id: str) -> str:
        """For a receipt whose id matched nothing: the route's `message_ids` setting under
        which it would have matched a message this book knows (one lookup per guess), as
        a hint for the log; "" when no such guess matches."""
        guesses: list[tuple[str, str, str]] = []
        if gateway_id.isdigit():
            n = int(gateway_id)
            guesses += [("hex", "decimal", format(n, "x")), ("hex", "decimal", format(n, "X"))]
        if gateway_id and all(c in "0123456789abcdefABCDEF" for c in gateway_id):
            guesses.append(("decimal", "hex", str(int(gateway_id, 16))))
        for answered, receipted, other in guesses:
            if other != gateway_id and self.lookup(other) is not None:
                return (f"; in {receipted} it is the id {other} a submit_sm_resp gave in "
                        f"{answered}: if the SMSC writes ids so, set the route's message_ids: "
                        f"{{submit_sm_resp: {answered}, deliver_sm: {receipted}}}")
        return ""

    def recorded(self, gateway_id: str, state: str) -> bool:
        """Was this receipt (this id in this state, or any final state) published already?"""
        return gateway_id in self.done or (gateway_id, state) in self.seen

    def finished(self, gateway_id: str, partition: int, now_ms: int) -> None:
        """A final receipt for `gateway_id` was recorded: later copies are duplicates."""
        self.parts.pop(gateway_id, None)
        self.foreign.pop(gateway_id, None)
        self.done[gateway_id] = (partition, now_ms)

    def give_up(self, partitions: set[int], now_ms: int) -> None:
        """Partitions moved away: keep their ids for late receipts, forget their markers."""
        for gw_id in [k for k, v in self.parts.items() if v.partition in partitions]:
            self.foreign[gw_id] = (self.parts.pop(gw_id), now_ms)
        for gw_id in [k for k, v in self.done.items() if v[0] in partitions]:
            del self.done[gw_id]

    def expired(self, owned: set[int], now_ms: int) -> list[tuple[int, str]]:
        """Forget old foreign ids; return (partition, id) of done markers to delete."""
        for gw_id in [k for k, v in self.foreign.items() if now_ms - v[1] > FOREIGN_KEEP_MS]:
            del self.foreign[gw_id]
        old = [(p, k) for k, (p, at) in self.done.items()
               if now_ms - at > DONE_KEEP_MS and p in owned]
        for _p, gw_id in old:
            del self.done[gw_id]
        return old


class InboundBook:
    """Replies already recorded, to recognise one the SMSC sends again."""

    def __init__(self, window_ms: int = INBOUND_DEDUP_WINDOW_MS) -> None:
        self.window_ms = window_ms
        self.seen = _Seen()

    @staticmethod
    def key(source: str, destination: str, text: str, gateway_ref: str | None,
            part: tuple[int, int, int] | None = None) -> str:
        """The reply's id: the SMSC's reference when it gave one, else what it says; a
        segment of a concatenated reply also by its place (two segments may read alike)."""
        digest = hashlib.blake2b(digest_size=12, person=b"rassylka-mo")
        for field in (gateway_ref or "", source, destination, text if not gateway_ref else ""):
            digest.update(field.encode())
            digest.update(b"\x00")
        if part is not None:
            digest.update(b"%d/%d/%d" % part)
        return digest.hexdigest()

    def recorded(self, key: str, now_ms: int) -> bool:
        at = self.seen.at(key)
        return at is not None and now_ms - at < self.window_ms

    def remember(self, key: str, at_ms: int) -> None:
        self.seen.add(key, at_ms)
