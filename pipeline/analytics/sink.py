"""The analytics sink stage: fact topics in Kafka → ClickHouse tables, batched and idempotent.

One `Sink` per process (`rassylka sink`); more processes share the work through the
consumer group `<app_id>-sink`. The loop:

1. `consume` up to 5,000 records (read_committed: the sender writes outcomes in Kafka
   transactions, aborted ones are never seen), decode each with its Avro contract and
   map it to a row (`rows.to_row`, phone numbers hashed). Tombstones are skipped, except
   on the profiles topic, where a tombstone deletes the profile: a `profiles` row marked
   deleted, versioned like every profile row by the record's Kafka timestamp. Records
   that cannot be decoded or mapped go to the dead-letter topic with their reason. Both
   still advance the offsets. Outcomes, the bulk of the traffic, are decoded and mapped
   all at once per consume, column by column (`rows.OutcomeColumns`, Arrow columns out);
   a record that path does not read exactly as the per-record one would goes one by one.
2. When the `SinkBuffer` is due (5,000 rows or 1 s; a consume never reads more than
   `max_rows`, so a batch stays under twice that), drain it into a `Batch` and store it:
   `write_with_retry` inserts every table's rows under the batch's dedup token, the
   dead letters of the batch are flushed to Kafka, and only then are exactly the batch's
   offsets committed, synchronously. The insert runs on a background thread while the
   loop reads and maps the next records; once it is done the loop sends the next batch
   and then commits this one (one insert in flight, commits in order). A crash between
   insert and commit re-reads the same records (two batches' worth, should the next
   insert beat the commit); when they form the same batch (same offsets, same token)
   ClickHouse drops the repeat, otherwise the ReplacingMergeTree tables collapse it
   (`FINAL`, uniqExact).
3. While ClickHouse is down (or refuses the batch) the sink keeps that one batch, pauses
   every assigned partition so nothing more piles up, keeps polling to stay in the
   group, and retries with exponential backoff (0.2 s doubling, capped at 5 s). When a
   write succeeds it commits, resumes and catches up. No offset is committed before its
   rows are stored.
4. On a rebalance (eager assignment: every partition is revoked) the buffer is stored
   and committed if ClickHouse answers, else dropped: its offsets were not committed, so
   the next owner reads those records again.
5. SIGTERM / SIGINT: store what is buffered (one attempt), commit, leave the group.

Fault injection, for tests and drills across processes: when `SinkConfig.fault_file`
(env `RASSYLKA_CH_FAULT_FILE`) names a file, every insert fails with
`ClickHouseUnavailable` while that file exists: before the insert reaches ClickHouse,
or, when the file says `after_insert`, after ClickHouse stored the rows (an
acknowledgement lost on the way back; the retry must be dropped by the dedup token).
The embedded chDB engine runs inside the sink's own process, so it cannot be taken down
on its own; with a ClickHouse server a real outage is simply stopping the server.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from fastavro.schema import parse_schema

from connectors.clickhouse import (
    DEFAULT_DATABASE,
    ClickHouseUnavailable,
    Client,
    connect,
    migrate,
)
from pipeline import avro, metrics, topics
from pipeline.analytics.rows import (
    MAPPINGS,
    REDELIVERIES,
    InvalidRecord,
    OutcomeColumns,
    deleted_profile_row,
    to_row,
)
from pipeline.analytics.writer import Batch, BatchWriter, Offset, SinkBuffer, write_with_retry
from pipeline.deadletter import dead_letter
from pipeline.errors import PermanentError, RassylkaError, RetryableError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SOURCE_TOPICS = (
    topics.OUTCOMES,
    topics.REDELIVERIES,
    topics.RECEIPTS,
    topics.CLICKS,
    topics.CONVERSIONS,
    topics.INBOUND,
    topics.CONSENT,
    topics.PROFILES,
    topics.ORDER_STATUS,
    topics.CAMPAIGN_AUDIENCE,
    topics.CAMPAIGN_DECISIONS,
    topics.CONFIG,
)
# The campaign worker's topics carry JSON, not Avro: topic → the mapping (rows.MAPPINGS)
JSON_TOPICS = {topics.CAMPAIGN_AUDIENCE: "campaign_member", topics.CAMPAIGN_DECISIONS: "decision",
               topics.CONFIG: "config_release"}
FAULT_ENV = "RASSYLKA_CH_FAULT_FILE"
AFTER_INSERT = "after_insert"
INFLIGHT_POLL_S = 0.01  # consume() wait while a batch is in flight: its commit comes next


@dataclass(frozen=True)
class SinkConfig:
    """How the sink batches, backs off and reports. Defaults suit production."""

    max_rows: int = 5_000  # flush when this many rows are buffered...
    max_age_s: float = 1.0  # ...or when the oldest buffered record is this old
    consume_batch: int = 5_000  # records per consume() call
    poll_timeout_s: float = 0.2  # consume() wait; also the pace of polls while paused
    first_backoff_s: float = 0.2  # first wait after a failed batch write
    max_backoff_s: float = 5.0  # cap of the doubling wait
    inner_retry_s: float = 0.3  # quick in-place retries of one write before pausing
    stats_interval_s: float = 10.0  # INFO log of `SinkStats` this often
    session_timeout_s: float = 10.0  # a crashed worker's partitions move on after this
    fault_file: Path | None = None  # see the module docstring


@dataclass
class SinkStats:
    """Counters of one sink process, logged every `stats_interval_s`."""

    consumed: int = 0  # records read from Kafka
    rows: Counter[str] = field(default_factory=Counter)  # rows stored and committed, per table
    batches: int = 0  # batches stored and committed
    retries: int = 0  # failed write attempts (ClickHouse down, busy or refusing)
    dead_letters: int = 0  # records sent to the dead-letter topic
    tombstones: int = 0  # null values on compacted topics (profiles: stored as deleted)
    dropped_rows: int = 0  # buffered rows given up on a rebalance (re-read by the new owner)
    commit_failures: int = 0  # stored batches whose offset commit failed (re-read, deduped)

    def summary(self) -> str:
        tables = ", ".join(f"{t}={n}" for t, n in sorted(self.rows.items())) or "none"
        return (
            f"consumed={self.consumed} stored[{tables}] batches={self.batches} "
            f"retries={self.retries} dead_letters={self.dead_letters} "
            f"tombstones={self.tombstones} dropped_rows={self.dropped_rows} "
            f"commit_failures={self.commit_failures}"
        )


class FaultInjectingWriter(BatchWriter):
    """A `BatchWriter` that fails while `fault_file` exists (see the module docstring)."""

    def __init__(self, inner: BatchWriter, fault_file: Path) -> None:
        super().__init__(inner.client, inner.table, inner.columns, inner.database)
        self.fault_file = fault_file

    def insert(self, rows: Any, token: str) -> int:
        try:
            mode = self.fault_file.read_text().strip()
        except FileNotFoundError:
            return super().insert(rows, token)
        if mode == AFTER_INSERT:
            super().insert(rows, token)
            raise ClickHouseUnavailable("injected outage: insert stored, acknowledgement lost")
        raise ClickHouseUnavailable("injected outage")


class SinkConsumer(Protocol):
    """The part of confluent_kafka.Consumer the sink uses (a fake one in unit tests)."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...
    def consume(self, num_messages: int, timeout: float) -> list[Message]: ...
    def assignment(self) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any: ...
    def close(self) -> None: ...


class SinkProducer(Protocol):
    """The part of confluent_kafka.Producer the sink uses for dead letters."""

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...


class SinkFailed(RassylkaError):
    """Dead letters could not be delivered: stop without committing (records re-read)."""

    reason = "deadletter_undeliverable"


@lru_cache(maxsize=1)
def decode_registry() -> avro.SchemaRegistry:
    """The project's schema registry, with schemas parsed the way fastavro caches them.

    `avro.registry()` parses with `_write_hint=False`, which makes fastavro parse the
    schema again on every decode; decoding is the sink's hottest path and this halves
    its cost. Same contracts and fingerprints, passed to `avro.decode_any`.
    """
    reg = avro.SchemaRegistry()
    contracts = {id(c): c for c in (*reg.current.values(), *reg.by_fingerprint.values())}
    fast = {key: replace(c, parsed=parse_schema(c.schema)) for key, c in contracts.items()}
    reg.current = {name: fast[id(c)] for name, c in reg.current.items()}
    reg.by_fingerprint = {fp: fast[id(c)] for fp, c in reg.by_fingerprint.items()}
    return reg


def build_writers(
    client: Client, database: str = DEFAULT_DATABASE, fault_file: Path | None = None
) -> dict[str, BatchWriter]:
    """One writer per analytics table, wrapped for fault injection when `fault_file` is set."""
    writers: dict[str, BatchWriter] = {}
    for mapping in (*MAPPINGS.values(), REDELIVERIES):
        writer = BatchWriter(client, mapping.table, mapping.columns, database)
        writers[mapping.table] = FaultInjectingWriter(writer, fault_file) if fault_file else writer
    return writers


class Sink:
    """One sink worker. `Sink.build(settings)` wires it to Kafka and ClickHouse; `run()`
    blocks until `stop()` (or SIGTERM / SIGINT when run in the main thread)."""

    def __init__(
        self,
        settings: Settings,
        consumer: SinkConsumer,
        producer: SinkProducer,
        writers: Mapping[str, BatchWriter],
        config: SinkConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        health: metrics.Health | None = None,
    ) -> None:
        self.settings = settings
        self.health = health or metrics.Health()  # /healthz, /readyz (pipeline.metrics)
        self.joined = False
        self.health.require("partitions assigned", lambda: self.joined)
        self._lag = metrics.LagSampler()
        self.consumer = consumer
        self.producer = producer
        self.writers = dict(writers)
        self.config = config or SinkConfig()
        self.clock = clock
        self.stats = SinkStats()
        self.buffer = SinkBuffer(self.config.max_rows, self.config.max_age_s, clock)
        # deployed topic name → the contract its records must have
        self.expected = {
            settings.topic(name): JSON_TOPICS.get(name) or topics.BY_NAME[name].schema
            for name in SOURCE_TOPICS
        }
        self.json_topics = {settings.topic(name) for name in JSON_TOPICS}
        # Kafka timestamps version these tables' rows
        self.versioned_topics = {settings.topic(topics.PROFILES),
                                 settings.topic(topics.CAMPAIGN_AUDIENCE)}
        self.deadletter_topic = settings.topic(topics.DEAD_LETTERS)
        self.profiles_topic = settings.topic(topics.PROFILES)
        self.outcomes_topic = settings.topic(topics.OUTCOMES)
        self._registry = decode_registry()
        # without a key every phone fails `phone_hash`: such records go one by one
        self._bulk = bulk_readers(self._registry) if settings.phone_hash_key else {}
        self._pending: Batch | None = None  # a drained batch not stored yet (outage)
        # a batch being inserted in the background while the loop reads on (see `_step`)
        self._inflight: tuple[Batch, Future[None], float] | None = None
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-insert")
        self._retry_at = 0.0
        self._backoff = self.config.first_backoff_s
        self._paused = False
        self._stopping = threading.Event()
        self._delivery_errors: list[str] = []
        self._dead_letters_unflushed = 0
        self._last_stats = clock()

    @classmethod
    def build(cls, settings: Settings, config: SinkConfig | None = None,
              health: metrics.Health | None = None) -> Sink:
        """Connect to ClickHouse (migrating its schema) and Kafka for `settings`.

        Raises `RetryableError` when ClickHouse cannot be reached at start-up.
        """
        config = config or SinkConfig()
        client = connect(settings.clickhouse_url)
        applied = migrate(client)
        if applied:
            log.info("applied ClickHouse migrations: %s", ", ".join(applied))
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.app_id}-sink",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # Fetch ahead early: with librdkafka's default (100,000 records) the queue
                # ran dry about once a second while a 50 MB fetch came in, and the sink
                # stood still for 0.4 s each time (129,000 → 169,000 rows/s steady with
                # this). Memory stays bounded by queued.max.messages.kbytes (64 MB).
                "queued.min.messages": 300_000,
                # eager: a rebalance revokes every partition, so the whole buffer goes
                "partition.assignment.strategy": "range,roundrobin",
                "enable.partition.eof": False,
                "session.timeout.ms": int(config.session_timeout_s * 1000),
                "heartbeat.interval.ms": max(500, int(config.session_timeout_s * 1000) // 4),
            }
        )
        producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "linger.ms": 20,
                "compression.type": "lz4",
            }
        )
        return cls(settings, consumer, producer, build_writers(client, DEFAULT_DATABASE, config.fault_file),
                   config, health=health)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> SinkStats:
        """Consume, store and commit until stopped; returns the final counters."""
        restore = self._install_signal_handlers()
        self.consumer.subscribe(
            list(self.expected),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("sink consuming %s as group %s-sink", ", ".join(self.expected),
                 self.settings.app_id)
        # never more than max_rows at once, so a batch stays below 2 × max_rows
        read_at_most = max(1, min(self.config.consume_batch, self.config.max_rows))
        next_sample = 0.0
        try:
            while not self._stopping.is_set():
                wait_s = self.config.poll_timeout_s if self._inflight is None else INFLIGHT_POLL_S
                messages = self.consumer.consume(read_at_most, wait_s)
                if messages:
                    self.process(messages)
                self._step(wait=False)
                self.health.beat()
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + metrics.SAMPLE_EVERY_S
                    held = sum(b.row_count for b in (self._pending, self._inflight_batch) if b)
                    metrics.SINK_LAG.set(self._lag.sample(self.consumer) + held + len(self.buffer))
            self._store_held("shutdown")
        finally:
            self._inserter.shutdown(wait=True)
            self.producer.flush(10.0)
            self.consumer.close()
            restore()
            log.info("sink stopped: %s", self.stats.summary())
        return self.stats

    def stop(self) -> None:
        """Ask `run()` to store what it holds and return (thread- and signal-safe)."""
        self._stopping.set()

    def process(self, messages: Iterable[Message]) -> None:
        """Decode, map and buffer consumed records; dead-letter the ones that cannot be.

        Outcomes whose writer schema `OutcomeColumns` reads are set aside and mapped
        together (`_process_outcomes`); every other record is mapped here, one by one.
        """
        bulk_topic = self.outcomes_topic
        readers = self._bulk
        runs: dict[bytes, list[Message]] = {}  # writer's header → its outcomes
        per_topic: dict[str, int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._on_consume_error(err)
                continue
            topic = msg.topic()
            if topic == bulk_topic:
                value = msg.value()
                header = value[:avro.HEADER_LEN] if value else b""
                run = runs.get(header)
                if run is not None:
                    run.append(msg)
                    continue
                if header in readers:
                    runs[header] = [msg]
                    continue
            per_topic[topic] = per_topic.get(topic, 0) + 1
            self._process_record(msg)
        for header, run in runs.items():
            per_topic[bulk_topic] = per_topic.get(bulk_topic, 0) + len(run)
            self._process_outcomes(readers[header], run)
        self.stats.consumed += sum(per_topic.values())
        metrics.count_topics(per_topic)

    def _process_record(self, msg: Message) -> None:
        """Decode, map and buffer one record, or dead-letter it."""
        topic = msg.topic()
        source = Offset(topic, msg.partition(), msg.offset())
        value = msg.value()
        # the Kafka timestamp versions profile rows: a tombstone has no other time
        published = published_ms(msg) if topic in self.versioned_topics else 0
        if value is None:
            self.stats.tombstones += 1
            if topic == self.profiles_topic and msg.key():  # a deleted profile
                self.buffer.add("profiles", deleted_profile_row(_text(msg.key()), published),
                                source)
            else:  # a consent tombstone (the next change replaces it): nothing to store
                self.buffer.skip(source)
            return
        expected = self.expected
        try:
            if topic in self.json_topics:
                schema, record = expected[topic], json_record(value, msg.key())
            else:
                schema, record = avro.decode_any(value, self._registry)
            if schema != expected.get(topic, schema):
                raise avro.DecodeError(
                    f"a {schema} record on {topic}, which carries {expected[topic]}"
                )
            table, row = to_row(schema, record, self.settings.phone_hash_key, published)
        except PermanentError as exc:
            self._dead_letter(msg, exc.reason, f"{exc.__class__.__name__}: {exc}")
            self.buffer.skip(source)
            return
        except Exception as exc:  # a bug must not stall the partition: keep the input
            log.exception("unexpected error mapping %s@%s", topic, source.offset)
            self._dead_letter(msg, "sink_error", f"{exc.__class__.__name__}: {exc}")
            self.buffer.skip(source)
            return
        self.buffer.add(table, row, source)

    def _process_outcomes(self, reader: OutcomeColumns, run: list[Message]) -> None:
        """Map a run of outcomes of one writer schema together; the records the bulk
        reader leaves (see `OutcomeColumns.messages`) go one by one."""
        try:
            rows, irregular = reader.messages([msg.value() for msg in run], avro.HEADER_LEN,
                                              self.settings.phone_hash_key)
        except Exception:  # a bug must not lose records: the per-record path takes them
            log.exception("bulk mapping of %d outcomes failed; mapping them one by one",
                          len(run))
            rows, irregular = None, range(len(run))
        if rows:
            self.buffer.add_rows("messages", rows)
        for index in irregular:
            self._process_record(run[index])
        partitions = np.array([msg.partition() for msg in run])
        offsets = np.array([msg.offset() for msg in run])
        for partition in np.unique(partitions):
            mine = offsets[partitions == partition]
            self.buffer.cover(self.outcomes_topic, int(partition), int(mine.min()),
                              int(mine.max()))

    def step(self) -> None:
        """Store the pending or due batch when it is time, waiting until it is committed;
        log stats when they are due."""
        self._step(wait=True)

    def _step(self, wait: bool) -> None:
        """`step`; with `wait` false (the `run` loop) a due batch is inserted in the
        background while the loop reads and maps the next records, and committed by a
        later call once its insert is done. One batch is in flight at most, and commits
        stay in order: the next batch is sent only once the previous one is stored."""
        now = self.clock()
        if self._pending is not None:
            if now >= self._retry_at:
                self._attempt(self._pending)
        else:
            due = self.buffer.due(now)
            self._settle(wait=due, send_next=due)
        if wait:
            self._settle(wait=True)
        if now - self._last_stats >= self.config.stats_interval_s:
            self._last_stats = now
            log.info("sink: %s%s", self.stats.summary(),
                     " (paused: ClickHouse unavailable)" if self._paused else "")

    # -- storing a batch --------------------------------------------------------------

    @property
    def _inflight_batch(self) -> Batch | None:
        return self._inflight[0] if self._inflight else None

    def _settle(self, wait: bool, send_next: bool = False) -> None:
        """Finish the batch in flight once its insert is done (waiting for it with `wait`):
        flush the dead letters, send the buffer as the next batch (`send_next`; before the
        commit, so that ClickHouse is not idle meanwhile), then commit its offsets. When
        the insert failed, hold the batch as `_pending` like `_attempt`; nothing is sent."""
        stored = None
        if self._inflight is not None:
            batch, insert, began = self._inflight
            if not (wait or insert.done()):
                return
            self._inflight = None
            try:
                insert.result()
                self._flush_dead_letters()
            except (RetryableError, PermanentError) as exc:
                self._hold(batch, exc)
                return
            stored = batch, began
        if send_next:
            batch = self.buffer.drain()
            self._inflight = batch, self._inserter.submit(self._write, batch), time.monotonic()
        if stored:
            self._commit(*stored)

    def _attempt(self, batch: Batch) -> bool:
        """Store `batch`; on failure keep it, pause the partitions and schedule a retry."""
        try:
            self._store(batch)
        except (RetryableError, PermanentError) as exc:
            self._hold(batch, exc)
            return False
        if self._pending is not None:
            log.info("ClickHouse answers again; stored the held batch, resuming")
            self._pending = None
            self._resume()
        return True

    def _hold(self, batch: Batch, exc: RassylkaError) -> None:
        """Keep a batch that was not stored: pause the partitions, retry with backoff."""
        self.stats.retries += 1
        if self._pending is None:
            self._pending = batch
            self._backoff = self.config.first_backoff_s
            self._pause()
        else:
            self._backoff = min(self._backoff * 2, self.config.max_backoff_s)
        self._retry_at = self.clock() + self._backoff
        level = logging.ERROR if isinstance(exc, PermanentError) else logging.WARNING
        log.log(level, "batch of %d rows not stored (%s: %s); partitions paused, retry in "
                "%.1fs", batch.row_count, exc.__class__.__name__, exc, self._backoff)

    def _store(self, batch: Batch) -> None:
        """Insert, flush dead letters, then commit exactly the batch's offsets."""
        began = time.monotonic()
        self._write(batch)
        self._flush_dead_letters()
        self._commit(batch, began)

    def _write(self, batch: Batch) -> None:
        """Insert every table's rows of `batch` (in the background when `_step` submits it)."""
        if batch.row_count:
            write_with_retry(self.writers, batch, sleep=self._inner_sleep,
                             max_wait=self.config.inner_retry_s, first_delay=0.1)

    def _commit(self, batch: Batch, began: float) -> None:
        """Commit exactly the batch's offsets (its rows and dead letters are stored)."""
        if not batch.empty:
            offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(batch.offsets.items())]
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                # Rows are stored; whoever reads these records again writes duplicates
                # that the dedup token or FINAL removes. Nothing is lost.
                self.stats.commit_failures += 1
                log.warning("offset commit failed after storing %d rows: %s",
                            batch.row_count, exc)
        self.stats.batches += 1
        for table, rows in batch.rows.items():
            self.stats.rows[table] += len(rows)
        metrics.SINK_BATCH_ROWS.observe(batch.row_count)
        metrics.TRANSACTION_SECONDS.labels("sink").observe(time.monotonic() - began)

    def _inner_sleep(self, seconds: float) -> None:
        self.stats.retries += 1
        time.sleep(seconds)

    def _store_held(self, why: str) -> None:
        """Store the held batch and the buffer now (one attempt each), or drop them.

        Called on shutdown and when partitions are revoked: unstored records have no
        committed offset, so whoever owns their partition next reads them again.
        """
        self._settle(wait=True)
        held = [b for b in (self._pending, self.buffer.drain()) if b is not None and not b.empty]
        for i, batch in enumerate(held):
            try:
                self._store(batch)
            except (RetryableError, PermanentError) as exc:
                dropped = sum(b.row_count for b in held[i:])
                self.stats.dropped_rows += dropped
                log.warning("%s: %d rows not stored (%s); they will be read again",
                            why, dropped, exc)
                break
        self._pending = None
        self._paused = False
        self._backoff = self.config.first_backoff_s

    # -- dead letters -----------------------------------------------------------------

    def _dead_letter(self, msg: Message, reason: str, error: str) -> None:
        record = dead_letter("sink", reason, error, msg.topic(), msg.partition(), msg.offset(),
                             msg.key(), msg.value())
        value = avro.encode("dead_letter", record)
        while True:
            try:
                self.producer.produce(self.deadletter_topic, value=value, key=msg.key(),
                                      on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
        self._dead_letters_unflushed += 1
        self.stats.dead_letters += 1
        metrics.dead_letters("sink")(reason).inc()
        log.warning("dead letter from %s[%d]@%d: %s: %s", msg.topic(), msg.partition(),
                    msg.offset(), reason, error[:200])

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _flush_dead_letters(self) -> None:
        if not self._dead_letters_unflushed:
            return
        remaining = self.producer.flush(10.0)
        if self._delivery_errors:
            raise SinkFailed(f"dead letters not delivered: {self._delivery_errors[:3]}")
        if remaining:
            raise ClickHouseUnavailable(f"{remaining} dead letters still in flight")
        self._dead_letters_unflushed = 0

    # -- partitions -------------------------------------------------------------------

    def _pause(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(assigned)
        self._paused = True

    def _resume(self) -> None:
        if self._paused:
            assigned = self.consumer.assignment()
            if assigned:
                self.consumer.resume(assigned)
        self._paused = False

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.joined = True
        log.info("sink assigned %d partitions", len(partitions))

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Store and commit the buffer while the partitions are still ours, or drop it."""
        self._store_held("rebalance")
        log.info("sink revoked %d partitions", len(partitions))

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions already belong to someone else: no commit is possible, drop all
        (a batch in flight is waited for: its rows may be stored, never committed)."""
        if self._inflight is not None:
            wait([self._inflight[1]])
        held = (self._pending, self._inflight_batch)
        dropped = sum(b.row_count for b in held if b) + len(self.buffer)
        self._inflight = None
        self.buffer.drain()
        self._pending = None
        self._paused = False
        self.stats.dropped_rows += dropped
        log.warning("sink lost %d partitions; dropped %d unstored rows", len(partitions),
                    dropped)

    def _on_consume_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(_signum: int, _frame: FrameType | None) -> None:
            self.stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


def bulk_readers(registry: avro.SchemaRegistry) -> dict[bytes, OutcomeColumns]:
    """Single-object header (marker and fingerprint) of each send_outcome version that
    `OutcomeColumns` reads → its reader, resolving to the current contract."""
    current = registry.current["send_outcome"]
    readers = {}
    for fingerprint, writer in registry.by_fingerprint.items():
        if writer.name == "send_outcome":
            reader = OutcomeColumns.for_schemas(writer.schema, current.schema)
            if reader is not None:
                readers[avro.MAGIC + fingerprint] = reader
    return readers


def published_ms(msg: Message) -> int:
    """The record's Kafka timestamp in epoch ms; 0 when the broker reports none."""
    kind, stamp = msg.timestamp()
    return 0 if kind == TIMESTAMP_NOT_AVAILABLE else int(stamp)


def json_record(value: bytes, key: bytes | None) -> dict[str, Any]:
    """A record of a JSON topic; an audience member gets its campaign from the key
    ('<campaign>|<customer>') when it lacks one (snapshots before the field existed)."""
    try:
        record = json.loads(value)
    except ValueError as exc:
        raise InvalidRecord(f"not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise InvalidRecord(f"a JSON {type(record).__name__}, not an object")
    if "campaign_id" not in record and "|" in _text(key):
        record["campaign_id"] = _text(key).partition("|")[0]
    return record


def _text(key: bytes | str | None) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", errors="replace")
    return key or ""


def run_sink(settings: Settings, config: SinkConfig | None = None,
             health: metrics.Health | None = None) -> SinkStats:
    """Build a sink for `settings` and run it until SIGTERM / SIGINT (the CLI's `sink`).

    A ClickHouse server that cannot be reached at start-up is waited for (backing off up
    to `max_backoff_s`), so a sink may start before its database. What start-up made
    (modules, the embedded engine, schemas) lives as long as the process, so it is frozen
    out of the garbage collector: the consume loop's allocations trigger full collections,
    which would walk all of it again each time (~0.1 s each).
    """
    config = config or SinkConfig()
    delay = config.first_backoff_s
    while True:
        try:
            sink = Sink.build(settings, config, health)
            break
        except RetryableError as exc:
            log.warning("ClickHouse not available at start-up (%s); retrying in %.1fs",
                        exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, config.max_backoff_s)
    gc.freeze()
    return sink.run()


def progress(settings: Settings, timeout: float = 10.0) -> tuple[int, int]:
    """(committed offsets of the sink group, end offsets), each summed over the partitions
    of the sink's topics.

    For monitoring, tests and the benchmark: on topics without transaction markers, when
    the two are equal every record there is stored. Never joins the group.
    """
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"{settings.app_id}-sink", "enable.auto.commit": False})
    try:
        names = [settings.topic(name) for name in SOURCE_TOPICS]
        meta = consumer.list_topics(timeout=timeout)
        parts = [TopicPartition(name, p) for name in names
                 for p in (meta.topics[name].partitions if name in meta.topics else {})]
        committed = consumer.committed(parts, timeout=timeout)
        done = sum(max(tp.offset, 0) for tp in committed)
        end = sum(consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in parts)
        return done, end
    finally:
        consumer.close()
