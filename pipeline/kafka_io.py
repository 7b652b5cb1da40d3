"""Small confluent-kafka helpers for publishing and reading Avro records (CLI, demo, tests)."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline import avro
from pipeline.errors import ConfigError, KafkaUnreachable
from pipeline.settings import Settings

# A stage that dies inside a transaction and whose transactional id never comes back
# (a worker scaled away, a host lost) leaves that transaction open until the broker times
# it out; until then every read_committed reader of a partition it wrote to (outcomes,
# receipts, requests, changelogs) stops at its first record. The stall is this timeout
# plus the coordinator's abort sweep (10 s by default), so it is kept short: a stage's
# transaction lasts milliseconds, and one that outlives a broker outage is aborted and
# redone from the last commit either way.
TRANSACTION_TIMEOUT_MS = 10_000

# Settings every transactional producer of a stage shares.
# - The timeout above.
# - Short retry backoffs: right after a commit returns, the coordinator is still writing
#   that transaction's markers, and the next transaction's first AddOffsetsToTxn or
#   AddPartitionsToTxn is answered CONCURRENT_TRANSACTIONS; librdkafka retries it after
#   `retry.backoff.ms` (100 ms by default, growing), which made `send_offsets_to_transaction`
#   most of a busy stage's wall time and added tens of milliseconds to every event's
#   latency. The cap keeps retries against a broker that is away a tenth of a second apart.
TRANSACTIONAL_PRODUCER: dict[str, Any] = {
    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
    "retry.backoff.ms": 5,
    "retry.backoff.max.ms": 100,
}

def slow_transaction(seconds: float, records: int) -> bool:
    """True for a transaction worth a warning: longer than 250 ms plus 0.5 ms per record it
    carried (a backlog's big transactions take longer by design). A stall to explain."""
    return seconds > 0.25 + 0.0005 * records


# librdkafka's own log lines ("Connect to ... failed") during the reachability probe: the
# probe's outcome is reported once, as KafkaUnreachable, not as a stream of retries.
_probe_log = logging.getLogger(f"{__name__}.probe")
_probe_log.addHandler(logging.NullHandler())
_probe_log.propagate = False


def ensure_reachable(
    bootstrap: str, timeout: float = 8.0, on_wait: Callable[[str], None] | None = None
) -> None:
    """Return once a Kafka broker at `bootstrap` answers a metadata request.

    Called by every command and worker before its first Kafka client, so that a broker
    that is down is one clear line rather than a long silent wait and a traceback. Waits
    at most `timeout` seconds (a broker still starting gets that long), calling
    `on_wait(message)` once when the first attempt fails. Raises KafkaUnreachable naming
    the address, ConfigError when `bootstrap` is not a list of host:port.
    """
    servers = _servers(bootstrap)
    deadline = time.monotonic() + timeout
    told = False
    detail = ""
    while True:
        detail = _tcp_probe(servers, max(0.2, min(2.0, deadline - time.monotonic())))
        if not detail:
            detail = _metadata_probe(bootstrap, max(1.0, min(3.0, deadline - time.monotonic())))
            if not detail:
                return
        if time.monotonic() >= deadline:
            raise KafkaUnreachable(bootstrap, timeout, detail)
        if not told and on_wait is not None:
            on_wait(f"waiting up to {timeout:.0f} s for Kafka at {bootstrap} ...")
            told = True
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """(host, port) of each bootstrap server; as librdkafka reads them (an optional
    `protocol://` prefix, port 9092 when none is given)."""
    servers = []
    for item in bootstrap.split(","):
        address = item.strip().split("://", 1)[-1]
        host, sep, port = address.rpartition(":")
        if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = address, "9092"
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ConfigError([f"KAFKA_BOOTSTRAP: {item.strip()!r} is not host:port"])
        servers.append((host, int(port)))
    return servers


def _tcp_probe(servers: list[tuple[str, int]], timeout: float) -> str:
    """'' when some server accepts a TCP connection, else why the last one did not."""
    why = ""
    for host, port in servers:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return ""
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
    return why.lower()


def _metadata_probe(bootstrap: str, timeout: float) -> str:
    """'' when the cluster answers a metadata request, else why it did not."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _probe_log})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        return err.str() if isinstance(err, KafkaError) else str(exc)
    return ""


@dataclass(frozen=True)
class Received:
    """One message read back: where it was, its key, raw value and decoded record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    record: dict[str, Any] | None
    schema: str | None


# The longest a worker's fetch waits for records. It paces only the polling of a quiet
# input: the broker answers a waiting read_committed fetch as soon as a commit makes records
# readable, so it adds no latency (measured by `make bench` at 20/s offered: p50 22 ms with
# 100, 20 ms with 10). At 10 ms, a sixth of the broker's requests in a throughput run were
# empty fetches; with 100, one A/B pair of runs gave 61 µs of its CPU per event against 70.
FETCH_WAIT_MAX_MS = 100


def producer(settings: Settings, **extra: Any) -> Producer:
    """An idempotent producer for `settings`' cluster."""
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    conf.update(extra)
    return Producer(conf)


def publish(
    settings: Settings,
    topic: str,
    items: Iterable[tuple[bytes | str | None, bytes | dict[str, Any] | None]],
    schema: str | None = None,
    prod: Producer | None = None,
    timeout: float = 30.0,
) -> int:
    """Publish (key, value) pairs to catalog topic `topic`; dict values are Avro-encoded.

    Returns how many were delivered; raises RuntimeError if any delivery failed.
    """
    prod = prod or producer(settings)
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    count = 0
    for key, value in items:
        if isinstance(value, dict):
            if schema is None:
                raise ValueError("a schema name is needed to encode dict values")
            value = avro.encode(schema, value)
        if isinstance(key, str):
            key = key.encode()
        while True:
            try:
                prod.produce(settings.topic(topic), key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                prod.poll(0.05)
        count += 1
        prod.poll(0)
    remaining = prod.flush(timeout)
    if remaining or errors:
        raise RuntimeError(f"{remaining} undelivered, errors: {errors[:3]}")
    return count


def _decode(value: bytes | None) -> tuple[str | None, dict[str, Any] | None]:
    if value is None:
        return None, None
    try:
        return avro.decode_any(value)
    except avro.DecodeError:
        return None, None


def read_topic(
    settings: Settings,
    topic: str,
    until: Callable[[list[Received]], bool] | None = None,
    timeout: float = 30.0,
    idle: float | None = None,
) -> list[Received]:
    """Read catalog topic `topic` from the beginning until `until(messages)` holds.

    Stops at `timeout` seconds, or, when `idle` is given, after `idle` seconds with
    no new message. Never commits offsets (a throw-away group).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
        }
    )
    name = settings.topic(topic)
    deadline = time.monotonic() + timeout
    parts: dict[int, Any] = {}
    while not parts:  # a topic a worker creates may not exist yet
        meta = consumer.list_topics(name, timeout=10)
        found = meta.topics.get(name)
        if found is not None and found.error is None:
            parts = found.partitions
        if not parts:
            if time.monotonic() > deadline:
                consumer.close()
                return []
            time.sleep(0.3)
    consumer.assign([TopicPartition(name, p, 0) for p in parts])
    out: list[Received] = []
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if until is not None and until(out):
                break
            if idle is not None and time.monotonic() - last_new > idle:
                break
            batch = consumer.consume(500, 0.2)
            for msg in batch:
                if msg.error():
                    continue
                schema, record = _decode(msg.value())
                out.append(Received(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                    msg.value(), record, schema))
            if batch:
                last_new = time.monotonic()
    finally:
        consumer.close()
    return out


def commit_transaction(producer: Producer, attempts: int = 3) -> None:
    """Commit the producer's open transaction, retrying what librdkafka says may be
    retried (a broker that restarts makes a commit time out; committing again is safe).
    Raises KafkaException otherwise: the caller aborts."""
    for attempt in range(attempts):
        try:
            producer.commit_transaction(30)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if attempt + 1 == attempts or not err.retriable() or err.txn_requires_abort():
                raise


def abort_transaction(producer: Producer, attempts: int = 3) -> None:
    """Abort the producer's open transaction; retriable failures (broker away) are
    retried, a fatal one (fenced by a newer instance) is raised."""
    for attempt in range(attempts):
        try:
            producer.abort_transaction(30)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if attempt + 1 == attempts or err.fatal() or not err.retriable():
                raise
            logging.getLogger(__name__).warning("abort failed (%s); retrying", err)
            time.sleep(1.0)


SEND_OFFSETS_BOUND_S = TRANSACTION_TIMEOUT_MS / 1000 + 5
"""Longest `send_offsets` waits for librdkafka: past the transaction timeout the broker has
aborted the transaction anyway."""
_stuck: set[int] = set()  # id() of producers left blocked in a transactional call


class _Caller:
    """A daemon thread that makes the calls handed to it, one at a time: a transactional
    stage makes one such call per transaction, so a thread per call would cost its start
    (about 75 µs of CPU) every time. Given up when a call does not return."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = \
            queue.SimpleQueue()
        threading.Thread(target=self._run, name="send-offsets", daemon=True).start()

    def _run(self) -> None:
        while True:
            call, finished = self.calls.get()
            call()  # catches everything itself
            finished.set()


_caller: _Caller | None = None
_caller_lock = threading.Lock()


def send_offsets(producer: Producer, offsets: list[TopicPartition], group_metadata: Any,
                 timeout: float = 30.0, bound_s: float = SEND_OFFSETS_BOUND_S) -> None:
    """`producer.send_offsets_to_transaction`, returning within `bound_s` whatever happens.

    librdkafka does not check its own timeout while it looks for the group's coordinator,
    and after a broker restart it can wait there for good (librdkafka #5456 and #5511): a
    sender sat silent in this call until CI's deadline
    (`test_zz_faults_broker.py::test_broker_outage_mid_run_costs_no_resend_and_no_false_failure[restart]`,
    one run in two). So the call is made by a thread of its own (`_Caller`). Past `bound_s`
    this raises a fatal `_TIMED_OUT` and leaves the call blocked in that thread; the next
    call gets a new one. The caller aborts as after any failed transaction, and
    `abort_or_renew` replaces the producer without asking it to abort: it would only
    answer that another call is in progress. The new producer's `init_transactions`
    fences the old one, and the broker aborts what it left open.
    """
    global _caller
    outcome: list[BaseException | None] = []
    finished = threading.Event()

    def call() -> None:
        try:
            producer.send_offsets_to_transaction(offsets, group_metadata, timeout)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    with _caller_lock:
        if _caller is None:
            _caller = _Caller()
        caller = _caller
    caller.calls.put((call, finished))
    if not finished.wait(bound_s):
        with _caller_lock:
            if _caller is caller:
                _caller = None  # blocked for good: the next call starts another thread
        _stuck.add(id(producer))  # it stays referenced by its blocked thread: the id is its
        raise KafkaException(KafkaError(
            KafkaError._TIMED_OUT, f"send_offsets_to_transaction did not return within "
            f"{bound_s:.0f} s (librdkafka lost the group coordinator)", fatal=True))
    if outcome[0] is not None:
        raise outcome[0]


def abort_or_renew(producer: Producer, renew: Callable[[], Producer], who: str) -> Producer:
    """Abort `producer`'s open transaction and return the producer to go on with.

    A producer the abort leaves unusable is replaced by `renew()`, a new producer with the
    same transactional id, whose `init_transactions` fences the old one and aborts whatever
    it left open. That happens when it was fenced, when the broker timed the transaction
    out, and in a race of Kafka 4's transactions (version 2) with librdkafka: an abort sent
    while the transaction's first records are still in flight, right after a commit, is
    answered INVALID_TXN_STATE, which librdkafka makes fatal (a third of such aborts here;
    tests/integration/test_abort_or_renew.py provokes it).
    An abort that does not finish within its timeout is given up the same way: after a
    broker outage an abort could wait on the old connection's requests for good (every
    30 s "retry call to resume", minutes after the broker was back: the stage sent
    nothing more). If the broker is still away, the new producer's `init_transactions`
    raises, and the caller retries on its next cycle.
    Another retriable failure (the broker away) is raised: the caller retries on its next
    cycle.
    """
    if id(producer) in _stuck:
        logging.getLogger(__name__).warning("%s: producer blocked in send_offsets_to_transaction; "
                                            "starting a new one", who)
        renewed = renew()  # the broker away: raises, and the next try comes here again
        _stuck.discard(id(producer))
        return renewed
    try:
        abort_transaction(producer, attempts=1)
        return producer
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if (err is not None and err.retriable() and not err.fatal()
                and err.code() != KafkaError._TIMED_OUT):
            raise
        logging.getLogger(__name__).warning("%s: producer unusable after an abort (%s); "
                                            "starting a new one", who, err or exc)
        return renew()
