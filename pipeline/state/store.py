"""Changelog-backed state: in-memory maps per partition, made durable in compacted topics.

A stage that owns input partition P keeps its state for P in memory and writes every
change to partition P of a compacted changelog topic, inside the same Kafka
transaction as its outputs and its input offsets. A worker that starts, restarts or is
handed P by a rebalance reads partition P of the changelog back (committed records
only) before it processes input from P, so state survives crashes and moves.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


def ensure_compacted_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Create compacted topic `name` unless it exists (idempotent); return once every
    partition has a leader, so a restore can ask for its offsets straight away."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if name not in admin.list_topics(timeout=15).topics:
        _create_compacted(admin, name, partitions)
    deadline = time.monotonic() + 60
    while True:
        topic = admin.list_topics(name, timeout=15).topics.get(name)
        if (topic is not None and topic.error is None and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"changelog topic {name} has no leader after 60 s")
        time.sleep(0.2)


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


def read_partitions(
    bootstrap: str, topic: str, partitions: Iterable[int], read_committed: bool = True
) -> Iterator[tuple[int, bytes, bytes | None]]:
    """Yield (partition, key, value) for every record of `partitions`, up to their end now."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"restore-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "enable.partition.eof": False,
        "fetch.max.bytes": 52428800,
    })
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = watermarks(consumer, topic, p)
            if high > low:
                ends[p] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        done: set[int] = set()
        while len(done) < len(ends):
            for msg in consumer.consume(5000, 1.0):
                if msg.error():
                    continue
                p = msg.partition()
                if msg.key() is not None:
                    yield p, msg.key(), msg.value()
                if msg.offset() + 1 >= ends[p]:
                    done.add(p)
            for p in ends:  # transaction markers occupy the last offsets: compare positions
                if p in done:
                    continue
                pos = consumer.position([TopicPartition(topic, p)])[0].offset
                if pos >= ends[p]:
                    done.add(p)
    finally:
        consumer.close()


class PartitionedStore:
    """Key/value state for the input partitions this worker owns, backed by a changelog."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.data: dict[int, dict[bytes, bytes]] = {}

    def ensure_topic(self) -> None:
        ensure_compacted_topic(self.bootstrap, self.topic, self.partitions)

    def restore(self, partitions: Iterable[int]) -> int:
        """Load `partitions` from the changelog; returns how many live keys were restored."""
        partitions = list(partitions)
        for p in partitions:
            self.data[p] = {}
        for p, key, value in read_partitions(self.bootstrap, self.topic, partitions):
            if value is None:
                self.data[p].pop(key, None)
            else:
                self.data[p][key] = value
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
        self.data.setdefault(partition, {})[key] = value
        _produce(producer, self.topic, partition, key, value)

    def delete(self, producer: Producer, partition: int, key: bytes) -> None:
        """Remove `key` locally and write a tombstone."""
        part = self.data.get(partition)
        if part is not None:
            part.pop(key, None)
        _produce(producer, self.topic, partition, key, None)


def _produce(producer: Producer, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=partition)
            return
        except BufferError:
            producer.poll(0.01)
