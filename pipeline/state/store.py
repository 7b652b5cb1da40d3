"""Changelog-backed state: in-memory maps per partition, made durable in compacted topics.

A stage that owns input partition P keeps its state for P in memory and writes every
change to partition P of a compacted changelog topic, inside the same Kafka
transaction as its outputs and its input offsets. A worker that starts, restarts or is
handed P by a rebalance reads partition P of the changelog back (committed records
only) before it processes input from P, so state survives crashes and moves.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.topics import ready_partitions

log = logging.getLogger(__name__)


def ensure_compacted_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Create compacted topic `name` unless it exists (idempotent); return once every
    partition has a leader, so a restore can ask for its offsets straight away."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if name not in admin.list_topics(timeout=15).topics:
        _create_compacted(admin, name, partitions)
    ready_partitions(admin, name)


def _create_compacted(admin: AdminClient, name: str, partitions: int) -> None:
    topic = NewTopic(name, num_partitions=partitions, replication_factor=1,
                     config={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                             "segment.ms": "600000"})
    for future in admin.create_topics([topic]).values():
        try:
            future.result(timeout=30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def watermarks(consumer: Consumer, topic: str, partition: int,
               timeout: float = 60.0) -> tuple[int, int]:
    """(low, high) offsets of one partition, retried while the cluster settles.

    A freshly started broker or a just-created topic answers "not leader" or "unknown
    partition" for a few seconds; those are waited out, anything else is raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            settling = err is not None and (
                err.retriable() or err.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                                  KafkaError._UNKNOWN_PARTITION,
                                                  KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                  KafkaError.LEADER_NOT_AVAILABLE))
            if not settling or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# A restore reads partitions from their start at full speed; the consumer is tuned for that.
# librdkafka's defaults pause a partition's fetching for a whole second
# (fetch.queue.backoff.ms) whenever its prefetch queue is full, which left a million-record
# restore waiting more than working. And one fetch of the default 1 MB per partition of
# lz4-compressed small records unpacks into some 100,000 messages of librdkafka bookkeeping:
# about 80 MB for four partitions, which the process keeps (freed, not given back to the OS).
# Small fetches on a shallow queue keep a restore as fast with a fraction of that.
_BULK_READ = {
    "fetch.queue.backoff.ms": 10,
    "max.partition.fetch.bytes": 131072,
    "fetch.max.bytes": 2097152,
    "queued.min.messages": 10000,
    "queued.max.messages.kbytes": 16384,
}
_BATCH = 10000


def read_batches(
    bootstrap: str, topic: str, partitions: Iterable[int], read_committed: bool = True
) -> Iterator[list[Message]]:
    """Yield the records of `partitions`, up to their end now, as the consumer returns them.

    For restores of millions of records, where a Python call per record counts: callers
    loop over each batch themselves and must skip messages with `error()` or no `key()`.
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"restore-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "enable.partition.eof": False,
        **_BULK_READ,
    })
    try:
        yield from read_to_end(consumer, topic, partitions)
    finally:
        consumer.close()


def read_to_end(consumer: Consumer, topic: str,
                partitions: Iterable[int]) -> Iterator[list[Message]]:
    """Assign `partitions` of `topic` to `consumer` from their beginning and yield what it
    returns up to their end now; the consumer stays open, right after what it read (a
    follower that goes on from there misses nothing published meanwhile)."""
    ends: dict[int, int] = {}
    empty: dict[int, int] = {}
    for p in partitions:
        low, high = watermarks(consumer, topic, p)
        if high > low:
            ends[p] = high
        else:
            empty[p] = high
    if not ends:  # nothing to read: the consumer stands at the end
        consumer.assign([TopicPartition(topic, p, high) for p, high in empty.items()])
        return
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    pending = [TopicPartition(topic, p) for p in ends]
    while pending:
        batch = consumer.consume(_BATCH, 1.0)
        if batch:
            yield batch
        # Positions, not offsets, tell the end: transaction markers occupy the last offsets.
        positions = consumer.position(pending)
        pending = [TopicPartition(topic, tp.partition) for tp in positions
                   if tp.offset < ends[tp.partition]]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a restore's loop over `read_batches`.

    Every record arrives as a Message object the collector tracks, so it ran thousands of
    times in a million-record restore (a sixth of the restore's time), though restoring
    makes no reference cycles. Reference counting still frees everything meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_partitions(
    bootstrap: str, topic: str, partitions: Iterable[int], read_committed: bool = True
) -> Iterator[tuple[int, bytes, bytes | None]]:
    """Yield (partition, key, value) for every record of `partitions`, up to their end now."""
    for batch in read_batches(bootstrap, topic, partitions, read_committed):
        for msg in batch:
            key = msg.key()
            if key is not None and not msg.error():
                yield msg.partition(), key, msg.value()


class PartitionedStore:
    """Key/value state for the input partitions this worker owns, backed by a changelog.

    With `coalesce`, changes are written at `flush` (called once per transaction, before
    its commit) instead of one record per call: a key changed several times in one
    transaction is written once, with its last value, and a key created and removed in the
    same transaction (a request queued and put on the wire at once) is not written at all.
    Readers see the same state after every commit; the changelog gets fewer records.
    `discard` forgets the unflushed changes of an aborted transaction (whose in-memory
    state the caller restores from the changelog anyway).
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, coalesce: bool = False) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.coalesce = coalesce
        self._pending: dict[tuple[int, bytes], bytes | None] = {}
        self._new: set[tuple[int, bytes]] = set()  # keys absent before this transaction

    def ensure_topic(self) -> None:
        ensure_compacted_topic(self.bootstrap, self.topic, self.partitions)

    def restore(self, partitions: Iterable[int]) -> int:
        """Load `partitions` from the changelog; returns how many live keys were restored."""
        partitions = list(partitions)
        data = self.data
        for p in partitions:
            data[p] = {}
        with collector_paused():
            for batch in read_batches(self.bootstrap, self.topic, partitions):
                for msg in batch:  # the hot loop of a restore: no calls of our own per record
                    key = msg.key()
                    if key is None or msg.error():
                        continue
                    value = msg.value()
                    if value is None:
                        data[msg.partition()].pop(key, None)
                    else:
                        data[msg.partition()][key] = value
        restored = sum(len(self.data[p]) for p in partitions)
        log.info("restored %d keys of %s partitions %s", restored, self.topic, partitions)
        return restored

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        for p in partitions:
            self.data.pop(p, None)

    def get(self, partition: int, key: bytes) -> bytes | None:
        part = self.data.get(partition)
        return None if part is None else part.get(key)

    def items(self, partition: int, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self.data.get(partition, {}).items() if k.startswith(prefix)]

    def put(self, producer: Producer, partition: int, key: bytes, value: bytes) -> None:
        """Set `key` locally and write it to the changelog (inside the caller's transaction)."""
        part = self.data.get(partition)
        held = part is not None
        if part is None:
            part = self.data[partition] = {}
        if self.coalesce:
            # A partition not held here may have the key in its changelog: say it anyway.
            self._touch(partition, key, not held or key in part, value)
        else:
            _produce(producer, self.topic, partition, key, value)
        part[key] = value

    def delete(self, producer: Producer, partition: int, key: bytes) -> None:
        """Remove `key` locally and write a tombstone."""
        part = self.data.get(partition)
        existed = part is None or key in part  # a partition not held here: tombstone anyway
        if part is not None:
            part.pop(key, None)
        if self.coalesce:
            self._touch(partition, key, existed, None)
        else:
            _produce(producer, self.topic, partition, key, None)

    def _touch(self, partition: int, key: bytes, existed: bool, value: bytes | None) -> None:
        k = (partition, key)
        if k not in self._pending and not existed:
            self._new.add(k)
        self._pending[k] = value

    def flush(self, producer: Producer) -> int:
        """Write this transaction's changes (coalesced) to the changelog; returns how many
        records were written."""
        written = 0
        new = self._new
        for (partition, key), value in self._pending.items():
            if value is None and (partition, key) in new:
                continue  # created and removed within the transaction: nothing to say
            _produce(producer, self.topic, partition, key, value)
            written += 1
        self._pending = {}
        self._new = set()
        return written

    def discard(self) -> None:
        """Forget unflushed changes (the transaction they belonged to was aborted)."""
        self._pending = {}
        self._new = set()


def _produce(producer: Producer, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=partition)
            return
        except BufferError:
            producer.poll(0.01)
