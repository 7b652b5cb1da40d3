"""The outbox stage: rows of an ERP's outbox table, streamed by Debezium, in; Avro events out.

The ERP writes one row to its `outbox` table (`infra/postgres/outbox.sql`) in the same
database transaction as its business change. Debezium's PostgreSQL connector, running in a
Kafka Connect worker (`infra/connect/connect.sh`), streams every inserted row to the topic
`outbox.changes` as a JSON change record (converter without schemas). This stage turns each
row into the Avro event of its `type` on that type's event topic (`topics.EVENT_TOPICS`):
`event_id` is the row's id, the key is the payload's `customer_id`.

Exactly once per row. Debezium is at-least-once: after a crash of Connect it streams again
from its last committed source offset, so rows already on `outbox.changes` come again (and a
snapshot repeats rows still in the table). The stage removes those copies:

* It is a transactional consume → transform → produce loop (like the router): a batch's
  events, dead letters, its dedup entries and its input offsets are one Kafka transaction.
* Dedup state: the ids of rows already turned into an event or a dead letter, per input
  partition, in memory and in the compacted changelog `<app>-outbox-seen-changelog`
  (`pipeline.state.store.PartitionedStore`), written in that same transaction. Debezium keys
  a change record by the row's primary key, so every copy of a row lands on one partition,
  whose owner holds its entry. A worker restores its partitions' entries before reading them.
* So each row id yields exactly one committed event (or dead letter) on the event topics,
  for `read_committed` readers, across SIGKILLs of Connect, of the stage, rebalances and
  broker restarts — provided a copy arrives within the dedup window (`dedup_days`, default
  7): entries older than that are dropped to bound memory. Delete outbox rows well before
  the window ends (example in outbox.sql), so that a new snapshot cannot bring them back.

Rows that cannot become an event (unknown `type`, a payload that does not fit the contract,
a record that is no Debezium change) go to the dead-letter topic with a reason, once per
row; updates and deletes of outbox rows are skipped (a row is an immutable fact).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipeline import avro, kafka_io, metrics, topics
from pipeline.deadletter import dead_letter, without_payload
from pipeline.errors import ConfigError, PermanentError, RetryableError
from pipeline.settings import Settings
from pipeline.state.store import PartitionedStore

log = logging.getLogger(__name__)

STAGE = "outbox"
BATCH_MAX = 1000
"""Most change records one transaction turns into events."""
DEDUP_DAYS = 7.0
"""How long a row id is remembered: copies that arrive later are no longer recognised."""
SWEEP_EVERY_S = 300.0
"""How often ids older than the dedup window are dropped (tombstones in their own transaction)."""
STATS_EVERY_S = 30.0
DEFAULT_SOURCE = "outbox"
"""The events' `source` when the payload names none."""
EVENT_SCHEMAS: dict[str, str] = {schema: topic for topic, schema in topics.EVENT_TOPICS.items()}
"""Outbox `type` -> catalog event topic: the type is the Avro contract's name."""
CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"


# ------------------------------------------------------------------ pure part
class BadRow(PermanentError):
    """A change record that cannot become an event: dead-lettered with `reason`."""

    def __init__(self, reason: str, message: str, row_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.row_id = row_id


@dataclass(frozen=True)
class OutboxRow:
    """One inserted outbox row, as Debezium streamed it."""

    id: str
    aggregate_type: str
    aggregate_id: str
    type: str
    payload: Any
    created_at_ms: int


@dataclass(frozen=True)
class OutboxEvent:
    """The event a row becomes: catalog topic, contract, Kafka key and encoded value."""

    topic: str
    schema: str
    key: bytes
    value: bytes
    event_id: str


def parse_change(value: bytes | None) -> OutboxRow | str:
    """The inserted row in a Debezium change record (JSON, no schemas), or the reason to
    skip it: `tombstone`, or `op:<u|d|t|m>` for updates, deletes, truncates and messages.

    Snapshot reads (`op` r) count as inserts. Raises BadRow(`undecodable`) for bytes that
    are no change record and BadRow(`invalid_row`) for a row without the outbox columns.
    """
    if value is None:
        return "tombstone"
    try:
        change = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRow("undecodable", f"not JSON: {exc}") from exc
    if not isinstance(change, dict) or "op" not in change:
        raise BadRow("undecodable", "not a Debezium change record (no `op`); is the "
                     "connector's value converter JSON without schemas?")
    if change["op"] not in ("c", "r"):
        return f"op:{change['op']}"
    after = change.get("after")
    if not isinstance(after, dict):
        raise BadRow("invalid_row", "an insert without `after`")
    row_id = after.get("id")
    if not isinstance(row_id, str) or not row_id:
        raise BadRow("invalid_row", "the row has no `id`")
    missing = [c for c in ("aggregate_type", "aggregate_id", "type", "payload", "created_at")
               if after.get(c) is None]
    if missing:
        raise BadRow("invalid_row", f"the row lacks {', '.join(missing)}", row_id)
    payload = after["payload"]
    if isinstance(payload, str):  # jsonb arrives as JSON text (io.debezium.data.Json)
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise BadRow("invalid_payload", f"payload is not JSON: {exc}", row_id) from exc
    return OutboxRow(id=row_id, aggregate_type=str(after["aggregate_type"]),
                     aggregate_id=str(after["aggregate_id"]), type=str(after["type"]),
                     payload=payload, created_at_ms=_epoch_ms(after["created_at"], row_id))


def _epoch_ms(value: Any, row_id: str) -> int:
    """`created_at` as epoch ms: Debezium writes timestamptz as ISO 8601 text (or a number
    with other time settings)."""
    if isinstance(value, int | float):
        return int(value)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError as exc:
        raise BadRow("invalid_row", f"created_at {value!r} is not a timestamp", row_id) from exc


def to_event(row: OutboxRow) -> OutboxEvent:
    """The Avro event for `row`: contract `row.type`, `event_id` the row's id (whatever the
    payload says), `occurred_at_ms` the payload's or else the row's `created_at`, `source`
    the payload's or else "outbox". Raises BadRow(`unknown_event_type`) for a type that is
    no event contract, BadRow(`invalid_payload`) for a payload that does not fit it.
    """
    topic = EVENT_SCHEMAS.get(row.type)
    if topic is None:
        raise BadRow("unknown_event_type", f"type {row.type!r} is not an event contract "
                     f"(one of {', '.join(sorted(EVENT_SCHEMAS))})", row.id)
    if not isinstance(row.payload, dict):
        raise BadRow("invalid_payload", f"payload is a JSON {type(row.payload).__name__}, "
                     "not an object", row.id)
    record = dict(row.payload)
    record["event_id"] = row.id
    if record.get("occurred_at_ms") is None:
        record["occurred_at_ms"] = row.created_at_ms
    if not record.get("source"):
        record["source"] = DEFAULT_SOURCE
    customer = record.get("customer_id")
    if not isinstance(customer, str) or not customer:
        raise BadRow("invalid_payload", "payload has no customer_id", row.id)
    try:
        value = avro.encode(row.type, record)
    except ValueError as exc:
        raise BadRow("invalid_payload", str(exc), row.id) from exc
    return OutboxEvent(topic, row.type, customer.encode(), value, row.id)


# ------------------------------------------------------------------ the stage
@dataclass
class OutboxStats:
    """What the stage did: committed counts by outcome, and its transactions."""

    counts: Counter[str] = field(default_factory=Counter)
    records: int = 0
    transactions: int = 0
    aborted: int = 0

    def line(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return (f"{self.records} change records in {self.transactions} transactions "
                f"({self.aborted} aborted); {counts or 'nothing yet'}")


class OutboxWorker:
    """One outbox stage process. `run()` until `stop()` (SIGTERM/SIGINT in the CLI)."""

    def __init__(self, settings: Settings, worker_id: str = "0", dedup_days: float = DEDUP_DAYS,
                 health: metrics.Health | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.dedup_ms = int(dedup_days * 86_400_000)
        self.health = health or metrics.Health()
        self.joined = False
        self.health.require("partitions assigned", lambda: self.joined)
        self.group = f"{settings.app_id}-outbox"
        self.source = settings.topic(topics.OUTBOX_CHANGES)
        self.dlq = settings.topic(topics.DEAD_LETTERS)
        self.store = PartitionedStore(settings.kafka_bootstrap, f"{self.group}-seen-changelog",
                                      settings.partitions)
        self.stats = OutboxStats()
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.owned: set[int] = set()
        self.stopping = False
        self._lag = metrics.LagSampler()
        self._rewind_pending = False
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S

    def _new_producer(self) -> Producer:
        producer = Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "transactional.id": f"{self.group}-{self.worker_id}",
            "linger.ms": 5,
            "compression.type": "lz4",
            **kafka_io.TRANSACTIONAL_PRODUCER,
        })
        producer.init_transactions(60)  # fences a killed predecessor and aborts its transaction
        return producer

    def _new_consumer(self) -> Consumer:
        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": 120_000,
            "fetch.wait.max.ms": 50,
            "enable.partition.eof": False,
        })
        consumer.subscribe([self.source], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        return consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        new = {tp.partition for tp in partitions} - self.owned
        if new:
            self.store.restore(new)
            self.owned |= new
        log.info("outbox %s owns partitions %s of %s", self.worker_id, sorted(self.owned),
                 self.source)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions} & self.owned
        self.owned -= gone
        self.store.drop(gone)

    def run(self) -> OutboxStats:
        """Join the group and turn change records into events until `stop()`."""
        topics.ensure_topics(self.settings, [self.source])
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap})
        meta = admin.list_topics(self.source, timeout=15).topics[self.source]
        self.store.partitions = max(len(meta.partitions), 1)  # changelog partition = input's
        self.store.ensure_topic()
        self.producer = self._new_producer()  # first: restores must not wait on its old txn
        self.consumer = self._new_consumer()
        next_stats = next_sample = time.monotonic()
        try:
            while not self.stopping:
                now = time.monotonic()
                self.health.beat()
                if now >= next_stats:
                    log.info("outbox %s: %s", self.worker_id, self.stats.line())
                    next_stats = now + STATS_EVERY_S
                if now >= next_sample:
                    self._lag.sample(self.consumer)
                    next_sample = now + metrics.SAMPLE_EVERY_S
                self._cycle()
        finally:
            self.consumer.close()
        return self.stats

    def stop(self) -> None:
        self.stopping = True

    def _cycle(self) -> None:
        assert self.consumer is not None
        if self._rewind_pending:
            try:
                self._abort_and_rewind()
            except KafkaException as exc:
                log.warning("outbox %s: cannot abort or rewind yet (%s)", self.worker_id,
                            exc.args[0] if exc.args else exc)
                time.sleep(1.0)
                return
            self._rewind_pending = False
        msgs = self.consumer.consume(BATCH_MAX, 0.2)
        for msg in msgs:
            err = msg.error()
            if err is not None and err.fatal():
                raise KafkaException(err)
            if err is not None:
                log.warning("outbox %s: consumer: %s", self.worker_id, err)
        msgs = [m for m in msgs if m.error() is None]
        try:
            if msgs:
                self._transaction(msgs)
            elif time.monotonic() >= self._next_sweep:
                self._sweep()
        except KafkaException as exc:
            self.stats.aborted += 1
            log.warning("outbox %s: transaction failed (%s); aborting and reading again from "
                        "the last commit", self.worker_id, exc.args[0] if exc.args else exc)
            self._rewind_pending = True

    def _transaction(self, msgs: list[Message]) -> None:
        assert self.consumer is not None and self.producer is not None
        began = time.monotonic()
        counts: Counter[str] = Counter()
        seen: dict[tuple[int, bytes], bytes] = {}  # this transaction's new dedup entries
        offsets: dict[tuple[str, int], int] = {}
        now_ms = int(time.time() * 1000)
        self.producer.begin_transaction()
        for msg in msgs:
            counts[self._handle(msg, seen, now_ms)] += 1
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        for (partition, key), value in seen.items():
            self._produce(self.store.topic, key, value, partition)
        kafka_io.send_offsets(self.producer,
                              [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                              self.consumer.consumer_group_metadata())
        kafka_io.commit_transaction(self.producer)
        for (partition, key), value in seen.items():  # only now: an abort leaves memory as is
            self.store.data.setdefault(partition, {})[key] = value
        self.stats.counts.update(counts)
        self.stats.records += len(msgs)
        self.stats.transactions += 1
        metrics.TRANSACTION_SECONDS.labels(STAGE).observe(time.monotonic() - began)
        metrics.count_committed(STAGE, counts)
        metrics.count_topics(Counter(m.topic() for m in msgs))

    def _handle(self, msg: Message, seen: dict[tuple[int, bytes], bytes], now_ms: int) -> str:
        """Produce the event or dead letter for one change record (inside the open
        transaction) and note its row id in `seen`; returns the outcome's stats key."""
        partition = msg.partition()
        try:
            row = parse_change(msg.value())
        except BadRow as exc:
            return self._bad(msg, exc, seen, now_ms)
        if isinstance(row, str):
            return f"skipped:{row}"
        key = row.id.encode()
        if (partition, key) in seen or self.store.get(partition, key) is not None:
            return "duplicate"
        try:
            event = to_event(row)
        except BadRow as exc:
            return self._bad(msg, exc, seen, now_ms)
        self._produce(self.settings.topic(event.topic), event.key, event.value)
        seen[(partition, key)] = str(now_ms).encode()
        return f"event:{event.schema}"

    def _bad(self, msg: Message, exc: BadRow, seen: dict[tuple[int, bytes], bytes],
             now_ms: int) -> str:
        if exc.row_id is not None:  # one dead letter per row, however often it comes
            key = exc.row_id.encode()
            if (msg.partition(), key) in seen or self.store.get(msg.partition(), key) is not None:
                return "duplicate"
            seen[(msg.partition(), key)] = str(now_ms).encode()
        record = dead_letter(STAGE, exc.reason, str(exc), msg.topic(), msg.partition(),
                             msg.offset(), msg.key(), msg.value(), exc.row_id, now_ms)
        try:
            self._produce(self.dlq, msg.key(), avro.encode("dead_letter", record))
        except KafkaException as err:
            code = err.args[0].code() if err.args else None
            if code != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            slim = without_payload(record, "the dead letter with them was too large")
            self._produce(self.dlq, None, avro.encode("dead_letter", slim))
        return f"dead_letter:{exc.reason}"

    def _sweep(self) -> None:
        """Drop dedup entries older than the window, in a transaction of their own."""
        assert self.producer is not None
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        cutoff = int(time.time() * 1000) - self.dedup_ms
        old = [(p, k) for p in list(self.owned) for k, v in self.store.items(p)
               if int(v or b"0") < cutoff]
        if not old:
            return
        self.producer.begin_transaction()
        for p, k in old:
            self.store.delete(self.producer, p, k)
        kafka_io.commit_transaction(self.producer)
        log.info("outbox %s: forgot %d row ids older than %.1f days", self.worker_id, len(old),
                 self.dedup_ms / 86_400_000)

    def _abort_and_rewind(self) -> None:
        assert self.consumer is not None and self.producer is not None
        self.producer = kafka_io.abort_or_renew(self.producer, self._new_producer,
                                                f"outbox {self.worker_id}")
        # A failed sweep may have dropped entries from memory that are still committed.
        self.store.restore(self.owned)
        assignment = self.consumer.assignment()
        if assignment:
            for tp in self.consumer.committed(assignment, timeout=30):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 partition: int | None = None) -> None:
        assert self.producer is not None
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, **extra)
                return
            except BufferError:
                self.producer.poll(0.05)


# ------------------------------------------------------- database and connector
SAFE_NAME = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True)
class Database:
    """Where the ERP's PostgreSQL is: the local one of `infra/postgres/postgres.sh` by default."""

    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "rassylka"
    password: str = field(default="", repr=False)
    database: str = "erp"
    publication: str = "rassylka_outbox"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Database:
        """POSTGRES_HOST (default 127.0.0.1), POSTGRES_PORT (default 15432), POSTGRES_USER
        (default rassylka), POSTGRES_PASSWORD and POSTGRES_DB (default erp); ConfigError for
        a port that is no port number."""
        env = os.environ if environ is None else environ
        raw = (env.get("POSTGRES_PORT") or "15432").strip()
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ConfigError([f"POSTGRES_PORT={raw!r} is not a TCP port number (1-65535)"])
        return cls(host=env.get("POSTGRES_HOST") or cls.host, port=int(raw),
                   user=env.get("POSTGRES_USER") or cls.user,
                   password=env.get("POSTGRES_PASSWORD") or "",
                   database=env.get("POSTGRES_DB") or cls.database)

    def sql(self, statements: str, database: str | None = None, atomic: bool = True) -> str:
        """Run SQL with psql, stopping at the first error, in one transaction unless not
        `atomic` (CREATE DATABASE); returns its output rows as `a|b` lines. Raises
        RetryableError when the server does not answer, PermanentError for an SQL error."""
        command = ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
                   *(["--single-transaction"] if atomic else []),
                   "-h", self.host, "-p", str(self.port), "-U", self.user,
                   "-d", database or self.database, "-f", "-"]
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5",
               "PGOPTIONS": "-c client_min_messages=warning"}
        done = subprocess.run(command, input=statements, capture_output=True, text=True,
                              env=env, timeout=120)
        if done.returncode != 0:
            text = done.stderr.strip()
            if "could not connect" in text or "Connection refused" in text:
                raise RetryableError(f"PostgreSQL is not reachable at {self.host}:{self.port} "
                                     f"— start it with `make postgres-up` ({text})")
            raise PermanentError(f"psql at {self.host}:{self.port}/{database or self.database}: "
                                 f"{text}")
        return done.stdout


def connect_url(environ: Mapping[str, str] | None = None) -> str:
    """The Kafka Connect worker: CONNECT_URL, else the local one on 127.0.0.1:CONNECT_PORT."""
    env = os.environ if environ is None else environ
    return (env.get("CONNECT_URL") or f"http://127.0.0.1:{env.get('CONNECT_PORT') or 18083}").rstrip("/")


def slot_name(settings: Settings) -> str:
    """A replication slot (and connector) name for this deployment: letters, digits, _."""
    return SAFE_NAME.sub("_", f"rassylka_outbox_{settings.app_id}".lower())[:63]


def connector_config(settings: Settings, db: Database, slot: str | None = None) -> dict[str, str]:
    """The Debezium PostgreSQL connector's config that streams `db`'s outbox table to this
    deployment's `outbox.changes` topic as JSON without schemas, keyed by the row id.

    Reads the publication `db.publication` (created by infra/postgres/outbox.sql) through
    the logical replication slot `slot`; snapshots rows already in the table on first start.
    """
    slot = slot or slot_name(settings)
    json_converter = "org.apache.kafka.connect.json.JsonConverter"
    return {
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": db.host,
        "database.port": str(db.port),
        "database.user": db.user,
        "database.password": db.password,
        "database.dbname": db.database,
        "topic.prefix": slot,
        "table.include.list": "public.outbox",
        "publication.name": db.publication,
        "publication.autocreate.mode": "disabled",
        "slot.name": slot,
        "snapshot.mode": "initial",
        "tombstones.on.delete": "false",
        "key.converter": json_converter,
        "key.converter.schemas.enable": "false",
        "value.converter": json_converter,
        "value.converter.schemas.enable": "false",
        "transforms": "route",
        "transforms.route.type": "org.apache.kafka.connect.transforms.RegexRouter",
        "transforms.route.regex": re.escape(f"{slot}.public.outbox"),
        "transforms.route.replacement": settings.topic(topics.OUTBOX_CHANGES),
    }


def _rest(url: str, method: str = "GET", body: dict[str, Any] | None = None,
          timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")
    except OSError as exc:
        raise RetryableError(f"Kafka Connect is not reachable at {url} ({exc}) — start it "
                             f"with `make connect-up` or set CONNECT_URL") from exc


def create_connector(name: str, config: dict[str, str], url: str | None = None,
                     timeout: float = 60.0) -> None:
    """Create or update connector `name` (idempotent PUT) and wait until its task runs.

    Raises PermanentError with the worker's answer when the config is refused or the task
    fails, RetryableError when the worker does not answer.
    """
    base = url or connect_url()
    deadline = time.monotonic() + timeout
    while True:  # a worker that just started answers 409 while it rebalances
        status, answer = _rest(f"{base}/connectors/{name}/config", "PUT", config)
        if status in (200, 201):
            break
        if status != 409 or time.monotonic() > deadline:
            raise PermanentError(f"Kafka Connect at {base} refused connector {name}: "
                                 f"{status} {answer}")
        time.sleep(0.5)
    while True:
        status, answer = _rest(f"{base}/connectors/{name}/status")
        tasks = answer.get("tasks", []) if status == 200 and isinstance(answer, dict) else []
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if failed:
            trace = str(failed[0].get("trace", "")).splitlines()
            raise PermanentError(f"connector {name} failed: {trace[0] if trace else failed[0]}")
        if tasks and all(t.get("state") == "RUNNING" for t in tasks):
            return
        if time.monotonic() > deadline:
            raise RetryableError(f"connector {name} has no running task after {timeout:.0f} s "
                                 f"({answer})")
        time.sleep(0.5)


def delete_connector(name: str, url: str | None = None) -> None:
    """Delete connector `name` (its offsets stay in the worker's offsets topic); no error
    when it does not exist."""
    base = url or connect_url()
    status, answer = _rest(f"{base}/connectors/{name}", "DELETE")
    if status not in (200, 204, 404):
        raise PermanentError(f"Kafka Connect at {base} did not delete {name}: {status} {answer}")


def drop_slot(db: Database, slot: str, timeout: float = 30.0) -> None:
    """Drop replication slot `slot` once no connector holds it (bounded wait), so that the
    server stops keeping WAL for it."""
    deadline = time.monotonic() + timeout
    while True:
        active = db.sql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'",
                        database="postgres").strip()
        if not active:
            return
        if active == "f":
            db.sql(f"SELECT pg_drop_replication_slot('{slot}')", database="postgres")
            return
        if time.monotonic() > deadline:
            raise RetryableError(f"replication slot {slot} is still in use after {timeout:.0f} s")
        time.sleep(0.5)


# -------------------------------------------------------------------- samples
def insert_sample_orders(db: Database, customers: list[str], prefix: str = "DEMO-") -> int:
    """Write sample business changes to the ERP database as the ERP would (`make demo`):
    for each customer an order is created, paid and shipped through the example `orders`
    table, whose trigger writes one `order_status_changed` outbox row per status change in
    the same transaction. Returns how many outbox rows were written (3 per customer).
    Needs the tables of infra/postgres (created by `make postgres-up`)."""
    statements = []
    for n, customer in enumerate(customers, start=1):
        order = f"{prefix}{int(time.time())}-{n}"
        quoted_customer = customer.replace("'", "''")
        quoted_order = order.replace("'", "''")
        statements.append(
            f"INSERT INTO orders (order_id, customer_id, status, amount_minor) "
            f"VALUES ('{quoted_order}', '{quoted_customer}', 'created', {1000 * n});\n"
            f"UPDATE orders SET status = 'paid' WHERE order_id = '{quoted_order}';\n"
            f"UPDATE orders SET status = 'shipped', tracking_url = "
            f"'https://shop.example.ru/track/{quoted_order}' WHERE order_id = '{quoted_order}';\n")
    db.sql("".join(statements))
    return 3 * len(customers)
