"""A compacted topic mirrored into memory: read to its end at start, then tailed.

Every API process keeps its own copy of the API keys and the idempotent answers this
way, so a key created, or an answer given, by any process is seen by all of them (after
the tail catches up: typically well under a second) and survives their restarts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.errors import RetryableError
from pipeline.topics import ready_partitions

log = logging.getLogger(__name__)

V = TypeVar("V")


class TopicNotLoaded(RetryableError):
    """A table's topic could not be read to its end at start (broker away or too slow)."""

    reason = "table_not_loaded"


def ensure_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str]) -> None:
    """Create topic `name` with `config` unless it exists; return once every partition has
    a leader. RuntimeError when it cannot be created or has no leader after 60 s."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if name not in admin.list_topics(timeout=15).topics:
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        for future in admin.create_topics([topic]).values():
            try:
                future.result(timeout=30)
            except Exception as exc:  # KafkaException wraps TOPIC_ALREADY_EXISTS races
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"could not create topic {name}: {exc}") from exc
    deadline = time.monotonic() + 60
    while True:
        found = admin.list_topics(name, timeout=15).topics.get(name)
        if (found is not None and found.error is None and found.partitions
                and all(p.leader >= 0 for p in found.partitions.values())):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {name} has no leader after 60 s")
        time.sleep(0.2)


class TopicTable(Generic[V]):
    """key (text) -> `decode(value)` of the newest record of each key; a tombstone, or a
    value `decode` returns None for, removes the key. Safe to read from any thread."""

    def __init__(self, bootstrap: str, topic: str, decode: Callable[[bytes], V | None]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.decode = decode
        self._rows: dict[str, V] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def get(self, key: str) -> V | None:
        return self._rows.get(key)

    def put(self, key: str, value: V) -> None:
        """Set a row at once (this process wrote it; the tail will bring the same)."""
        self._rows[key] = value

    def rows(self) -> dict[str, V]:
        return dict(self._rows)

    def drop(self, keep: Callable[[V], bool]) -> int:
        """Forget the rows `keep` says no to; returns how many."""
        gone = [k for k, v in list(self._rows.items()) if not keep(v)]
        for key in gone:
            self._rows.pop(key, None)
        return len(gone)

    def __len__(self) -> int:
        return len(self._rows)

    def start(self, timeout: float = 60.0) -> int:
        """Read the topic to its current end (blocking), then tail it in a daemon thread.

        Called once at start-up, before serving. Returns the rows loaded; raises
        TopicNotLoaded when the end is not reached within `timeout` seconds.
        """
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"api-table-{uuid.uuid4().hex[:12]}",  # never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        })
        self._consumer = consumer
        parts = ready_partitions(consumer, self.topic)
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=15)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                consumer.close()
                raise TopicNotLoaded(f"{self.topic} was not read to its end within "
                                     f"{timeout:.0f} s on {self.bootstrap}")
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                self._apply(msg.key(), msg.value())
                if msg.partition() in ends and msg.offset() + 1 >= ends[msg.partition()]:
                    del ends[msg.partition()]
        self._thread = threading.Thread(target=self._tail, name=f"table-{self.topic}",
                                        daemon=True)
        self._thread.start()
        return len(self._rows)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        elif self._consumer is not None:
            self._consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode("utf-8", "replace")
        row = None
        if value is not None:
            try:
                row = self.decode(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping a bad record on %s: %s", self.topic, type(exc).__name__)
        if row is None:
            self._rows.pop(name, None)
        else:
            self._rows[name] = row

    def _tail(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stopping.is_set():
                for msg in consumer.consume(1000, 0.5):
                    if not msg.error():
                        self._apply(msg.key(), msg.value())
        except KafkaException as exc:
            log.error("tail of %s stopped: %s", self.topic, exc)
        finally:
            consumer.close()
