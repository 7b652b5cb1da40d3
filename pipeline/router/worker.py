"""The router stage: business events in, notification requests out, exactly once.

One router process is a transactional consume → route → produce loop (confluent-kafka),
the same shape as the sender:

* A batch of events, every request and dead letter they produced, and the batch's input
  offsets are one Kafka transaction, committed together or not at all. A SIGKILL, a
  rebalance, a broker restart or a consumer-group reset can neither lose an event nor put
  a second copy of its requests on the lanes (every reader uses `read_committed`).
* Decisions live in `pipeline.router.core.route` (pure); this module only moves records.
* Customer profiles are a global table: every router reads the whole compacted profiles
  topic at start and keeps following it. The topic is the table's changelog, so a
  restarted or added worker has every profile without a changelog of its own, and events
  need not be partitioned like profiles. When an event names a customer the table does
  not hold, the worker first catches up with the topic's end as it is now: a profile
  published before its event is always found.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
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

from pipeline import avro, kafka_io, metrics, releases, topics
from pipeline.deadletter import dead_letter, without_payload
from pipeline.errors import ConfigError, RetryableError
from pipeline.router.core import route
from pipeline.rules.loader import load_ruleset
from pipeline.settings import Settings
from pipeline.state.store import watermarks

log = logging.getLogger(__name__)

LANE_TOPICS = {
    "transactional": topics.REQUESTS_TRANSACTIONAL,
    "marketing": topics.REQUESTS_MARKETING,
}
BATCH_MAX = 2000
"""Most events one transaction routes."""
BATCH_BUDGET_S = 5.0
"""Longest one transaction keeps routing (slow templates): the rest of the batch is read
again for the next one, so transactions stay short and the group never waits long."""
CATCH_UP_S = 10.0
"""Longest the worker waits for the profiles topic's end when an event's customer is unknown."""
CLOCK_MARGIN_MS = 2_000
"""Events stamped this close before the last catch-up may still have a profile after it."""
PRODUCE_FAILED = "produce_failed"
REFUSALS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                      KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
                      KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.POLICY_VIOLATION})
"""Delivery errors that refuse the records themselves: trying again the same way fails again."""
Source = tuple[str, int, int]
"""An input record's position: topic, partition, offset."""
STATS_EVERY_S = 30.0
NO_RULE = "no_rule"
"""Stats key prefix of events that matched no rule: `no_rule:<event type>`."""


class RuleBook:
    """The live rule set, from the newest config release on Kafka or from `config/`
    (`pipeline.releases.LiveConfig`). A reload that fails validation keeps the previous
    rules and logs every problem. `stamp` names the config in force; requests carry it.
    """

    def __init__(self, settings: Settings) -> None:
        self.live = releases.LiveConfig(settings, "router")
        self.ruleset = load_ruleset(self.live.folder)
        self.stamp = self.live.stamp
        self.reloads = 0

    def close(self) -> None:
        self.live.close()

    def maybe_reload(self) -> bool:
        """Apply a release that took effect, or reload changed files; True when new rules
        took effect."""
        change = self.live.changed()
        if change is None:
            return False
        folder, stamp = change
        try:
            self.ruleset = load_ruleset(folder)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload rejected, keeping previous rules: %s", problem)
            return False
        self.stamp = stamp
        self.reloads += 1
        log.info("rules reloaded from %s (%s)", folder, stamp)
        return True


class ProfileTable:
    """Every customer profile, by customer id (raw Avro), read from the profiles topic.

    `load()` reads the topic to its end; `poll()` applies what arrived since, without
    waiting; `catch_up()` waits (bounded) until everything on the topic *now* is applied.
    Undecodable profiles are skipped here: the router's group dead-letters them once.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.PROFILES)
        self.bootstrap = settings.kafka_bootstrap
        self.rows: dict[bytes, bytes] = {}
        self.consumer: Consumer | None = None
        self.partitions: list[int] = []
        self.caught_up_ms = 0
        self.catch_ups = 0

    def load(self) -> int:
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"profiles-view-{id(self):x}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 20,
        })
        self.partitions = topics.ready_partitions(consumer, self.topic)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions])
        self.consumer = consumer
        if not self.catch_up(timeout=300.0):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            f"could not read {self.topic} to its end in 300 s"))
        return len(self.rows)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self.rows.pop(key, None)
            return
        try:
            customer = avro.decode("customer_profile", value)["customer_id"].encode()
        except avro.DecodeError:
            return
        except RetryableError:  # a registry-framed profile, the registry away: by its key
            if key is None:
                return
            customer = key  # decoded when an event needs it (and retried until then)
        self.rows[customer] = value

    def poll(self) -> None:
        assert self.consumer is not None
        for msg in self.consumer.consume(5000, 0):
            if not msg.error():
                self.apply(msg.key(), msg.value())

    def catch_up(self, timeout: float = CATCH_UP_S) -> bool:
        """Apply everything on the topic up to its end as of now; False if not in time."""
        assert self.consumer is not None
        self.catch_ups += 1
        started_ms = int(time.time() * 1000)
        ends = {p: watermarks(self.consumer, self.topic, p)[1] for p in self.partitions}
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.consumer.consume(5000, 0.05):
                if not msg.error():
                    self.apply(msg.key(), msg.value())
            positions = self.consumer.position(
                [TopicPartition(self.topic, p) for p in self.partitions])
            behind = [tp for tp in positions if ends[tp.partition] > 0
                      and tp.offset < ends[tp.partition]]
            if not behind:
                self.caught_up_ms = started_ms
                return True
            if time.monotonic() > deadline:
                log.warning("profiles: %d partition(s) of %s not read to their end in %.0f s",
                            len(behind), self.topic, timeout)
                return False

    def get(self, customer_id: str, event_ms: int) -> bytes | None:
        """The customer's profile; catches up with the topic first when it is unknown and
        the event may be newer than the last catch-up."""
        key = customer_id.encode()
        raw = self.rows.get(key)
        if raw is None and event_ms >= self.caught_up_ms - CLOCK_MARGIN_MS:
            self.catch_up()
            raw = self.rows.get(key)
        return raw

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class LearnedWeights:
    """The current variant weights of `strategy: bandit` rules, by rule id, followed on the
    compacted `rules.variant_weights` (written by the campaign worker's learner)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.VARIANT_WEIGHTS)
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"weights-view-{id(self):x}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        })
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self.rows: dict[str, dict[str, float]] = {}

    def load(self, timeout: float = CATCH_UP_S) -> None:
        """Read the weights written so far before the first event is routed: a router that
        started routing on a bare `poll` used the rules' own weights for its first events
        (`test_bandit_rules.py` caught it on a slow machine)."""
        low, high = watermarks(self.consumer, self.topic, 0, timeout)
        if high <= low:  # nothing written yet (its writer is not transactional: no markers)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.1)
            position = self.consumer.position([TopicPartition(self.topic, 0)])[0].offset
            if position >= high:
                return
        log.warning("weights of %s not read to the end within %.0f s; routing with what is "
                    "read so far", self.topic, timeout)

    def poll(self, wait_s: float = 0) -> None:
        for msg in self.consumer.consume(100, wait_s):
            if msg.error() is not None or msg.key() is None:
                continue
            if msg.value() is None:
                self.rows.pop(msg.key().decode(), None)
                continue
            try:
                weights = json.loads(msg.value())["weights"]
                self.rows[msg.key().decode()] = {str(k): float(v) for k, v in weights.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("ignoring unreadable weights for %r: %s", msg.key(), exc)

    def close(self) -> None:
        self.consumer.close()


@dataclass
class RouterStats:
    """What the router did: counts by outcome, and its transactions."""

    counts: Counter[str] = field(default_factory=Counter)
    events: int = 0
    transactions: int = 0
    aborted: int = 0

    @property
    def unmatched(self) -> Counter[str]:
        """Committed events that matched no rule, by event type (for metrics)."""
        prefix = f"{NO_RULE}:"
        return Counter({k[len(prefix):]: v for k, v in self.counts.items()
                        if k.startswith(prefix)})

    def line(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return (f"{self.events} events in {self.transactions} transactions "
                f"({self.aborted} aborted); {counts or 'nothing routed'}")


class RouterWorker:
    """One router process. `run()` until `stop()` (SIGTERM/SIGINT in the CLI)."""

    def __init__(self, settings: Settings, worker_id: str = "0",
                 health: metrics.Health | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.health = health or metrics.Health()  # /healthz, /readyz (pipeline.metrics)
        self.joined = False
        self.health.require("partitions assigned", lambda: self.joined)
        self._lag = metrics.LagSampler()
        self.group = f"{settings.app_id}-router"
        self.rules = RuleBook(settings)
        self.profiles = ProfileTable(settings)
        self.learned: LearnedWeights | None = None
        self.stats = RouterStats()
        self.schema_of = {settings.topic(name): schema for name, schema in topics.EVENT_TOPICS.items()}
        self.profiles_topic = settings.topic(topics.PROFILES)
        self.lane_names = {lane: settings.topic(name) for lane, name in LANE_TOPICS.items()}
        self.dlq = settings.topic(topics.DEAD_LETTERS)
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.stopping = False
        self.reg = avro.registry()
        # The broker refuses a whole produce batch when one record is too large for the
        # topic, so a refusal makes every event in that batch a suspect: routed again after
        # the abort, each suspect's output goes in a batch of its own. An event refused
        # alone is guilty: routed again, it becomes a dead letter with the broker's answer.
        self.suspects: set[Source] = set()
        self.refused: dict[Source, str] = {}
        self._source: Source | None = None
        self._rewind_pending = False
        self._fresh_producer = False
        self._delivery_errors: list[tuple[Source | None, bool, KafkaError]] = []
        self._routed: list[Source] = []  # the open transaction's input records
        self._counts: Counter[str] = Counter()  # the open transaction's, added on commit

    # ---------------------------------------------------------------- set-up
    def _new_producer(self) -> Producer:
        producer = Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "transactional.id": f"{self.group}-{self.worker_id}",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            **kafka_io.TRANSACTIONAL_PRODUCER,
        })
        producer.init_transactions(60)
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
            "fetch.wait.max.ms": kafka_io.FETCH_WAIT_MAX_MS,
            "enable.partition.eof": False,
        })
        consumer.subscribe([*self.schema_of, self.profiles_topic],
                           on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        return consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        log.info("router %s reads %s", self.worker_id,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("router %s gives up %d partition(s)", self.worker_id, len(partitions))

    # ------------------------------------------------------------------ loop
    def run(self) -> RouterStats:
        """Read the profiles, join the group and route until `stop()`; returns the stats."""
        loaded = self.profiles.load()
        log.info("router %s: %d profiles loaded from %s", self.worker_id, loaded,
                 self.profiles_topic)
        self.learned = LearnedWeights(self.settings)
        self.learned.load()
        self.producer = self._new_producer()
        self.consumer = self._new_consumer()
        next_reload = next_stats = next_sample = time.monotonic()
        metrics.set_config_stamp(self.rules.stamp)
        try:
            while not self.stopping:
                now = time.monotonic()
                self.health.beat()
                if now >= next_reload:
                    if self.rules.maybe_reload():
                        metrics.set_config_stamp(self.rules.stamp)
                    next_reload = now + self.rules.live.check_every_s
                if now >= next_stats:
                    log.info("router %s: %s", self.worker_id, self.stats.line())
                    next_stats = now + STATS_EVERY_S
                if now >= next_sample:
                    self._lag.sample(self.consumer)
                    next_sample = now + metrics.SAMPLE_EVERY_S
                self._cycle()
        finally:
            self.consumer.close()
            self.profiles.close()
            self.learned.close()
            self.rules.close()
        return self.stats

    def stop(self) -> None:
        self.stopping = True

    def _cycle(self) -> None:
        assert self.consumer is not None and self.producer is not None
        if self._rewind_pending:
            try:
                self._abort_and_rewind()
            except KafkaException as exc:  # the broker is away: try again shortly
                log.warning("router %s: cannot abort or rewind yet (%s)", self.worker_id,
                            exc.args[0] if exc.args else exc)
                time.sleep(1.0)
                return
            self._rewind_pending = False
        self._fresh_producer = False
        # What is buffered already, else wait (bounded) for the first event only: a batch
        # call waits its whole timeout unless BATCH_MAX events come, which at a few hundred
        # events/s added up to 200 ms to each event's latency.
        msgs = self.consumer.consume(BATCH_MAX, 0)
        if not msgs:
            msgs = self.consumer.consume(1, 0.2)
            if msgs:
                msgs += self.consumer.consume(BATCH_MAX - 1, 0)
        errors = [m.error() for m in msgs if m.error() is not None]
        for err in errors:
            if err.fatal():
                raise KafkaException(err)
            log.warning("router %s: consumer: %s", self.worker_id, err)
        msgs = [m for m in msgs if m.error() is None]
        self.profiles.poll()
        if self.learned is not None:
            self.learned.poll()
        if not msgs:
            return
        try:
            self._transaction(msgs)
        except KafkaException as exc:
            self.stats.aborted += 1
            err = exc.args[0] if exc.args else None
            if err is not None and err.code() == KafkaError._STATE:
                self._fresh_producer = True
            log.warning("router %s: transaction failed (%s); aborting and reading the batch "
                        "again from the last commit", self.worker_id,
                        exc.args[0] if exc.args else exc)
            self._rewind_pending = True

    def _transaction(self, msgs: list[Message]) -> None:
        assert self.consumer is not None and self.producer is not None
        producer = self.producer
        self._delivery_errors = []
        self._routed = []
        self._counts = Counter()
        began = time.monotonic()
        producer.begin_transaction()
        done: dict[tuple[str, int], int] = {}
        rest: dict[tuple[str, int], int] = {}
        budget_ends = time.monotonic() + BATCH_BUDGET_S
        now_ms = int(time.time() * 1000)
        for msg in msgs:
            tp = (msg.topic(), msg.partition())
            if tp in rest or (done and time.monotonic() > budget_ends):
                rest.setdefault(tp, msg.offset())
                continue
            self._source = (msg.topic(), msg.partition(), msg.offset())
            self._routed.append(self._source)
            if self._source in self.suspects:
                producer.flush(30)  # nothing else in its produce batches
                self._handle(msg, now_ms)
                producer.flush(30)
            else:
                self._handle(msg, now_ms)
            done[tp] = msg.offset() + 1
        self._source = None
        for (topic, partition), offset in rest.items():  # routed by the next transaction
            self.consumer.seek(TopicPartition(topic, partition, offset))
        kafka_io.send_offsets(producer, [TopicPartition(t, p, o) for (t, p), o in done.items()],
                              self.consumer.consumer_group_metadata())
        kafka_io.commit_transaction(producer)  # raises if any record was refused
        if self.suspects or self.refused:  # settled by this commit
            for source in [*self.suspects, *self.refused]:
                if source[2] < done.get(source[:2], -1):
                    self.suspects.discard(source)
                    self.refused.pop(source, None)
        self.stats.counts.update(self._counts)
        self.stats.transactions += 1
        self.stats.events += len(self._routed)
        took = time.monotonic() - began
        metrics.TRANSACTION_SECONDS.labels("router").observe(took)
        if kafka_io.slow_transaction(took, len(msgs)):
            log.warning("router %s: a transaction of %d events took %.0f ms", self.worker_id,
                        len(msgs), took * 1000)
        metrics.count_committed("router", self._counts)
        metrics.count_topics(Counter(source[0] for source in self._routed))

    def _abort_and_rewind(self) -> None:
        """Abort the open transaction and read every owned partition again from its
        committed offset. Refused outputs are remembered, so the next try dead-letters
        their events instead of failing again."""
        assert self.consumer is not None and self.producer is not None
        # A failed transaction makes the next produce() raise before the refused records'
        # delivery reports were served: serve them now, to learn which events they were.
        self.producer.poll(0)
        for source, alone, err in self._delivery_errors:
            if source is None or err.code() not in REFUSALS:
                continue
            # After a refused record the idempotent producer's sequence has a gap it does
            # not recover from (its next produce says "erroneous state"): start a new one.
            self._fresh_producer = True
            if alone:
                self.suspects.discard(source)
                self.refused[source] = f"{err.name()}: {err.str()}"
            else:  # every event of the transaction: the next try finds the culprit at once
                self.suspects.update(s for s in self._routed if s not in self.refused)
        if self._delivery_errors:
            log.warning("router %s: %d record(s) refused; %d event(s) now produced alone, %d "
                        "refused alone", self.worker_id, len(self._delivery_errors),
                        len(self.suspects), len(self.refused))
        self._delivery_errors = []
        old = self.producer
        self.producer = kafka_io.abort_or_renew(old, self._new_producer, f"router {self.worker_id}")
        if self._fresh_producer and self.producer is old:
            self.producer = self._new_producer()  # same transactional id: fences the old one
        self._fresh_producer = False
        assignment = self.consumer.assignment()
        if not assignment:
            return
        for tp in self.consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        time.sleep(0.5)

    # ------------------------------------------------------------- one event
    def _handle(self, msg: Message, now_ms: int) -> None:
        source: Source = (msg.topic(), msg.partition(), msg.offset())
        if source in self.refused:
            self._dead_letter(msg, PRODUCE_FAILED, "output not stored: " + self.refused[source],
                              self._event_id(msg))
            return
        if msg.topic() == self.profiles_topic:
            self._check_profile(msg)
            return
        try:
            self._route(msg, now_ms)
        except KafkaException:
            raise
        except Exception as exc:  # a bug on one event must not cost the others
            log.exception("routing %s[%d]@%d failed", *source)
            self._dead_letter(msg, "route_error", f"{exc.__class__.__name__}: {exc}")

    def _event_id(self, msg: Message) -> str | None:
        schema = self.schema_of.get(msg.topic())
        try:
            return avro.decode(schema, msg.value() or b"", self.reg).get("event_id") if schema else None
        except avro.DecodeError:
            return None

    def _check_profile(self, msg: Message) -> None:
        if msg.value() is None:
            return
        try:
            avro.decode("customer_profile", msg.value(), self.reg)
        except avro.DecodeError as exc:
            self._dead_letter(msg, exc.reason, str(exc))
            return
        self._counts["profile"] += 1

    def _route(self, msg: Message, now_ms: int) -> None:
        schema = self.schema_of[msg.topic()]
        try:
            record = avro.decode(schema, msg.value() or b"", self.reg)
        except avro.DecodeError as exc:
            self._dead_letter(msg, exc.reason, str(exc))
            return
        problem = invalid_event(record)
        if problem:
            self._dead_letter(msg, "invalid_event", problem, record.get("event_id"))
            return
        _kind, stamped = msg.timestamp()
        raw_profile = self.profiles.get(record["customer_id"], stamped if stamped > 0 else now_ms)
        if raw_profile is None:
            self._dead_letter(msg, "unknown_customer",
                              f"no profile for customer {record['customer_id']!r} on "
                              f"{self.profiles_topic}", record["event_id"])
            return
        profile = avro.decode("customer_profile", raw_profile, self.reg)
        result = route(self.rules.ruleset, schema, record, profile, now_ms,
                       self.learned.rows if self.learned is not None else None)
        for failure in result.failures:
            self._dead_letter(msg, failure.reason, f"rule {failure.rule_id}: {failure.error}",
                              record["event_id"])
        if not result.requests and not result.failures:
            # No topic record: counted per event type (added on commit, so once per event)
            # and in the stats line; `rassylka rules explain` shows each rule's reason.
            self._counts[f"{NO_RULE}:{schema}"] += 1
            log.debug("router %s: event %s (%s, customer %s) matched no rule", self.worker_id,
                      record["event_id"], schema, record["customer_id"])
        for request in result.requests:
            try:
                request["config_version"] = self.rules.stamp
                self._produce(self.lane_names[request["lane"]], request["customer_id"].encode(),
                              avro.encode("notification_request", request))
            except KafkaException as exc:  # refused at once, e.g. larger than the limit
                err = exc.args[0] if exc.args else None
                if err is None or err.code() not in REFUSALS:
                    raise
                self._dead_letter(msg, PRODUCE_FAILED, f"request of rule {request['rule_id']}: "
                                  f"{err.name()}: {err.str()}", record["event_id"])
                continue
            self._counts[f"request:{request['lane']}"] += 1

    def _dead_letter(self, msg: Message, reason: str, error: str,
                     event_id: str | None = None) -> None:
        self._counts[f"dead_letter:{reason}"] += 1
        record = dead_letter("router", reason, error, msg.topic(), msg.partition(), msg.offset(),
                             msg.key(), msg.value(), event_id)
        try:
            self._produce(self.dlq, msg.key(), avro.encode("dead_letter", record))
        except KafkaException as exc:  # e.g. the original is close to the size limit
            err = exc.args[0] if exc.args else None
            if err is not None and err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            slim = without_payload(record, "the dead letter with them was too large")
            self._produce(self.dlq, None, avro.encode("dead_letter", slim))

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        assert self.producer is not None
        source = self._source
        alone = source in self.suspects
        while True:
            try:
                self.producer.produce(
                    topic, key=key, value=value,
                    on_delivery=lambda err, _msg: self._delivered(source, alone, err))
                return
            except BufferError:
                self.producer.poll(0.05)

    def _delivered(self, source: Source | None, alone: bool, err: KafkaError | None) -> None:
        if err is not None:
            self._delivery_errors.append((source, alone, err))


def invalid_event(record: dict[str, Any]) -> str | None:
    """Why a decoded business event cannot be routed, or None when it can."""
    if not record.get("event_id"):
        return "event_id is empty"
    if not record.get("customer_id"):
        return "customer_id is empty"
    if record.get("occurred_at_ms", 0) <= 0:
        return "occurred_at_ms must be a positive epoch-milliseconds timestamp"
    return None

