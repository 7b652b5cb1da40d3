"""Receipts that reach a sender other than the one that sent their message.

An SMSC may deliver a receipt on any bind of the account, not only on the bind that
submitted the message: with two or more senders, a receipt can reach one whose state does
not know its SMSC id. Such a sender waits `PARK_RECEIPT_AFTER_MS` (the answer to the submit
may still be on its way to itself), then *forwards* the receipt: it writes it to the
compacted `sms.receipts.forwarded`, key `<SMSC id>\\x00<state>`, in the transaction that
parks it (or, holding no partition to park it in, while it keeps the receipt
unacknowledged).

Every sender follows that topic (`ForwardedReceipts`). The one whose state knows the id
publishes the receipt on `sms.receipts` with its message, in a transaction that also writes
a tombstone for the key: the *claim*. The forwarder, reading the tombstone, drops its parked
copy or acknowledges the receipt it held. A receipt nobody claims is published by its
forwarder without a message id after the uncorrelated wait, as a single sender does; its
tombstone then clears the key for every follower.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from connectors.gateway import GatewayReceipt
from pipeline import topics
from pipeline.settings import Settings
from pipeline.state.store import watermarks
from pipeline.topics import ready_partitions

log = logging.getLogger(__name__)

_MS = struct.Struct("<q")
Key = tuple[str, str]
"""A receipt's (SMSC id, state)."""


def park_value(arrived_ms: int, receipt: GatewayReceipt) -> bytes:
    """A receipt without its key: when it arrived here, when the SMSC sent it, its error code
    and destination. The value of parked and of forwarded receipts."""
    rest = "\x00".join((receipt.error_code or "", receipt.destination))
    return _MS.pack(arrived_ms) + _MS.pack(receipt.received_at_ms) + rest.encode()


def unpark(key: bytes, value: bytes) -> tuple[int, GatewayReceipt]:
    """(arrived, receipt) from a parked or forwarded record's key and value."""
    gw_id, state = key.decode().split("\x00", 1)
    arrived, received = _MS.unpack_from(value)[0], _MS.unpack_from(value, 8)[0]
    error_code, destination = value[16:].decode().split("\x00", 1)
    return arrived, GatewayReceipt(gw_id, state, error_code or None, destination, received)


def key_bytes(key: Key) -> bytes:
    return f"{key[0]}\x00{key[1]}".encode()


class ForwardedReceipts:
    """A sender's read-only view of `sms.receipts.forwarded`, from `lookback_ms` ago on."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.RECEIPTS_FORWARDED)
        self.bootstrap = settings.kafka_bootstrap
        self.consumer: Consumer | None = None

    def load(self, lookback_ms: int) -> None:
        """Start reading at the first record of the last `lookback_ms`: forwards still
        unclaimed, and the claims of receipts this sender's predecessor parked."""
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"forwarded-receipts-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        })
        partitions = ready_partitions(consumer, self.topic)
        # Where each partition ends now, taken first: a partition with nothing of the last
        # `lookback_ms` is read from there (OFFSET_END, resolved later, would skip what is
        # forwarded meanwhile).
        ends = {p: watermarks(consumer, self.topic, p)[1] for p in partitions}
        since = int(time.time() * 1000) - lookback_ms
        starts = consumer.offsets_for_times(
            [TopicPartition(self.topic, p, since) for p in partitions], timeout=15)
        consumer.assign([TopicPartition(self.topic, tp.partition,
                                        tp.offset if tp.offset >= 0 else ends[tp.partition])
                         for tp in starts])
        self.consumer = consumer

    def poll(self) -> list[tuple[Key, GatewayReceipt | None]]:
        """What arrived since: (key, the forwarded receipt) or (key, None) for a claim."""
        if self.consumer is None:
            return []
        out: list[tuple[Key, GatewayReceipt | None]] = []
        for msg in self.consumer.consume(1000, 0):
            if msg.error() or msg.key() is None:
                continue
            try:
                if msg.value() is None:
                    gw_id, state = msg.key().decode().split("\x00", 1)
                    out.append(((gw_id, state), None))
                else:
                    _arrived, receipt = unpark(msg.key(), msg.value())
                    out.append(((receipt.gateway_message_id, receipt.state), receipt))
            except (ValueError, UnicodeDecodeError, struct.error) as exc:
                log.warning("ignoring an unreadable forwarded receipt: %s", exc)
        return out

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class ToClaim:
    """The receipts other senders forwarded, held until this sender learns their SMSC id or
    they age out.

    With three or more senders most forwards are someone else's and stay the whole
    uncorrelated wait, tens of thousands at high rates: they are indexed by SMSC id, so a
    cycle looks only at those this sender can claim, and learning an id finds its receipts
    with one lookup. Held in arrival order, so the old ones leave from the front.
    """

    def __init__(self) -> None:
        self.held: dict[Key, tuple[int, GatewayReceipt]] = {}
        self.claimable: set[Key] = set()  # their id is known here (checked again on claim)
        self._waiting: dict[str, set[str]] = {}  # SMSC id -> states, id unknown here

    def __len__(self) -> int:
        return len(self.held)

    def __contains__(self, key: object) -> bool:
        return key in self.held

    def add(self, key: Key, now_ms: int, receipt: GatewayReceipt, known: bool) -> None:
        if key in self.held:
            return
        self.held[key] = (now_ms, receipt)
        if known:
            self.claimable.add(key)
        else:
            self._waiting.setdefault(key[0], set()).add(key[1])

    def learned(self, gateway_id: str) -> None:
        """This sender now knows `gateway_id`: its held receipts can be claimed."""
        states = self._waiting.pop(gateway_id, None)
        if states:
            self.claimable.update((gateway_id, s) for s in states)

    def unknown(self, key: Key) -> None:
        """A claimable receipt whose id this sender no longer owns: back to waiting."""
        if key in self.claimable:
            self.claimable.discard(key)
            self._waiting.setdefault(key[0], set()).add(key[1])

    def remove(self, key: Key) -> None:
        if self.held.pop(key, None) is None:
            return
        self.claimable.discard(key)
        states = self._waiting.get(key[0])
        if states is not None:
            states.discard(key[1])
            if not states:
                del self._waiting[key[0]]

    def expire(self, now_ms: int, wait_ms: int) -> None:
        """Drop those held `wait_ms`: nobody here knew them, their forwarder publishes them."""
        while self.held:
            key, (arrived, _receipt) = next(iter(self.held.items()))
            if now_ms - arrived < wait_ms:
                return
            self.remove(key)

    def reindex(self, known: Callable[[str], bool]) -> None:
        """After the partitions this sender owns changed: which ids it knows now."""
        self.claimable.clear()
        self._waiting.clear()
        for key in self.held:
            if known(key[0]):
                self.claimable.add(key)
            else:
                self._waiting.setdefault(key[0], set()).add(key[1])
