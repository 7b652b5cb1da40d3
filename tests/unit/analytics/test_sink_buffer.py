"""The sink's decisions without a broker or a database: batching, tokens, retries, pausing,
dead letters and rebalances, on an in-memory store that honours dedup tokens the way
ClickHouse does (the real engine's token dedup is covered in
tests/integration/test_clickhouse.py and test_sink.py)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from connectors.clickhouse import ClickHouseUnavailable
from pipeline import avro, topics
from pipeline.analytics.rows import MAPPINGS
from pipeline.analytics.sink import (
    AFTER_INSERT,
    JSON_TOPICS,
    FaultInjectingWriter,
    Sink,
    SinkConfig,
    build_writers,
    decode_registry,
)
from pipeline.analytics.writer import (
    Batch,
    BatchWriter,
    Offset,
    SinkBuffer,
    batch_token,
    write_with_retry,
)
from pipeline.settings import Settings

SETTINGS = Settings(topic_prefix="u.", app_id="u", phone_hash_key="unit-key")
OUTCOMES = SETTINGS.topic(topics.OUTCOMES)
CLICKS = SETTINGS.topic(topics.CLICKS)
SAMPLES: dict[str, dict[str, Any]] = {
    "send_outcome": {
        "request_id": "r1", "message_id": "r1", "status": "submitted", "reason": None,
        "detail": None, "lane": "marketing", "rule_id": "promo", "template_id": "t",
        "variant": "b", "campaign_id": None, "customer_id": "c1", "phone": "+79161234567",
        "region": "RU", "operator": "MTS", "gateway": "smpp", "gateway_message_ids": ["g1"],
        "segments": 1, "encoding": "UCS2", "cost": 2.5, "event_occurred_at_ms": 1,
        "decided_at_ms": 2, "attempts": 1,
    },
    "click": {
        "click_id": "k1", "code": "abc", "message_id": "r1", "url": "https://x",
        "clicked_at_ms": 6, "user_agent": None,
    },
    "consent_change": {
        "phone": "+79161234567", "scope": "marketing", "status": "opt_out",
        "source": "sms_reply", "changed_at_ms": 9, "customer_id": None, "evidence": "STOP",
    },
}


class Store:
    """Stands in for ClickHouse: keeps rows per table, drops a repeated (table, token)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.tokens: set[tuple[str, str]] = set()
        self.down = False
        self.events: list[str] = []

    def insert(self, table: str, rows: Any, columns: Any, *, database: Any = None,
               token: str | None = None) -> int:
        if self.down:
            raise ClickHouseUnavailable("store down")
        self.events.append(f"insert {table}")
        if (table, token) in self.tokens:
            return 0
        self.tokens.add((table, token or ""))
        self.rows.setdefault(table, []).extend(rows)
        return len(rows)


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None,
                 key: bytes | None = b"k") -> None:
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k


class FakeConsumer:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.assigned = [TopicPartition(OUTCOMES, 0), TopicPartition(OUTCOMES, 1)]
        self.paused: set[tuple[str, int]] = set()
        self.commits: list[dict[tuple[str, int], int]] = []
        self.queue: list[Any] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        out = [m for m in self.queue if (m.topic(), m.partition()) not in self.paused]
        self.queue = [m for m in self.queue if m not in out]
        return out[:num_messages]

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.events.append("commit")
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def close(self) -> None:
        self.events.append("close")


class FakeProducer:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.produced: list[tuple[str, bytes, bytes | None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.produced.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.events.append("flush dead letters")
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def outcome(n: int) -> bytes:
    return avro.encode("send_outcome", {**SAMPLES["send_outcome"], "request_id": f"r{n}",
                                         "message_id": f"r{n}"})


def make_sink(store: Store, clock: Clock, fault_file: Path | None = None,
              **config: Any) -> tuple[Sink, FakeConsumer, FakeProducer]:
    consumer = FakeConsumer(store.events)
    producer = FakeProducer(store.events)
    writers = build_writers(store, fault_file=fault_file)  # type: ignore[arg-type]
    cfg = SinkConfig(**{"max_rows": 3, "max_age_s": 1.0, "inner_retry_s": 0.0, **config})
    return Sink(SETTINGS, consumer, producer, writers, cfg, clock), consumer, producer


# -- SinkBuffer and tokens --------------------------------------------------------------


def test_skipped_records_advance_offsets_without_rows() -> None:
    buffer = SinkBuffer(max_rows=10, max_age_s=1.0, clock=lambda: 0.0)
    buffer.add("messages", ("a",), Offset("t", 0, 5))
    buffer.skip(Offset("t", 0, 6))
    buffer.skip(Offset("t", 1, 0))
    batch = buffer.drain()
    assert batch.rows == {"messages": [("a",)]}
    assert batch.offsets == {("t", 0): 7, ("t", 1): 1}
    assert len(buffer) == 0 and buffer.drain().empty


def test_only_skipped_records_still_make_a_batch_due() -> None:
    now = [0.0]
    buffer = SinkBuffer(max_rows=10, max_age_s=1.0, clock=lambda: now[0])
    buffer.skip(Offset("t", 0, 3))
    assert not buffer.due()
    now[0] = 1.0
    assert buffer.due()
    batch = buffer.drain()
    assert batch.row_count == 0 and batch.offsets == {("t", 0): 4} and batch.token


def test_token_is_the_same_whatever_the_arrival_order_across_partitions() -> None:
    def token(order: list[Offset]) -> str:
        buffer = SinkBuffer(clock=lambda: 0.0)
        for source in order:
            buffer.add("messages", (source.offset,), source)
        return buffer.drain().token

    sources = [Offset("t", p, o) for p in range(2) for o in range(3)]
    tokens = {token(list(order)) for order in itertools.permutations(sources[:4])}
    assert len(tokens) == 1
    assert token(sources) == batch_token({("t", 0): (0, 2), ("t", 1): (0, 2)})
    assert token(sources) != batch_token({("t", 0): (0, 2), ("t", 1): (0, 1)})


def test_replaying_the_same_batch_stores_it_once() -> None:
    store = Store()
    writers = build_writers(store)  # type: ignore[arg-type]
    batch = Batch({"messages": [("a",), ("b",)], "clicks": [("c",)]}, "tok", {("t", 0): 3})
    assert write_with_retry(writers, batch) == {("t", 0): 3}
    assert write_with_retry(writers, batch) == {("t", 0): 3}
    assert store.rows == {"messages": [("a",), ("b",)], "clicks": [("c",)]}


def test_write_with_retry_sleeps_doubling_then_gives_up() -> None:
    store = Store()
    store.down = True
    slept: list[float] = []
    batch = Batch({"messages": [("a",)]}, "tok", {("t", 0): 1})
    with pytest.raises(ClickHouseUnavailable):
        write_with_retry(build_writers(store), batch, sleep=slept.append,  # type: ignore[arg-type]
                         max_wait=1.0, first_delay=0.1, max_delay=0.3)
    assert slept == [0.1, 0.2, 0.3, 0.3]


def test_fault_file_fails_writes_before_or_after_the_insert(tmp_path: Path) -> None:
    store = Store()
    fault = tmp_path / "fault"
    writer = FaultInjectingWriter(BatchWriter(store, "messages", ("x",)), fault)  # type: ignore[arg-type]
    fault.write_text("")
    with pytest.raises(ClickHouseUnavailable, match="injected"):
        writer.insert([("a",)], "t1")
    assert store.rows == {}
    fault.write_text(AFTER_INSERT)
    with pytest.raises(ClickHouseUnavailable, match="acknowledgement lost"):
        writer.insert([("a",)], "t1")
    fault.unlink()
    writer.insert([("a",)], "t1")  # the retry: same token, dropped
    assert store.rows == {"messages": [("a",)]}


def test_decode_registry_decodes_like_the_project_registry() -> None:
    registry = decode_registry()
    for schema, record in SAMPLES.items():
        data = avro.encode(schema, record)
        assert avro.decode_any(data, registry) == avro.decode_any(data)
    assert set(MAPPINGS) - set(JSON_TOPICS.values()) <= set(registry.current)
    assert len(registry.by_fingerprint) == len(avro.registry().by_fingerprint)


# -- the sink loop on fakes -------------------------------------------------------------


def test_batch_is_stored_then_exactly_its_offsets_committed() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(2)])
    sink.step()
    assert store.rows == {} and consumer.commits == []  # 2 rows < 3, not old yet
    sink.process([Msg(OUTCOMES, 1, 7, outcome(7))])
    sink.step()
    assert len(store.rows["messages"]) == 3
    assert consumer.commits == [{(OUTCOMES, 0): 2, (OUTCOMES, 1): 8}]
    assert store.events == ["insert messages", "commit"]
    assert sink.stats.rows["messages"] == 3 and sink.stats.batches == 1


def test_old_buffer_is_flushed_by_age() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    sink.process([Msg(OUTCOMES, 0, 0, outcome(0))])
    clock.now += 1.0
    sink.step()
    assert consumer.commits == [{(OUTCOMES, 0): 1}]


def test_poison_records_are_dead_lettered_before_the_commit() -> None:
    store, clock = Store(), Clock()
    sink, consumer, producer = make_sink(store, clock)
    click = avro.encode("click", SAMPLES["click"])
    sink.process([
        Msg(OUTCOMES, 0, 0, b"garbage"),
        Msg(OUTCOMES, 0, 1, click),  # a valid record on the wrong topic
        Msg(OUTCOMES, 0, 2, outcome(2)),
        Msg(CLICKS, 0, 4, None),  # tombstone
    ])
    clock.now += 1.0
    sink.step()
    assert [topic for topic, _, _ in producer.produced] == [SETTINGS.topic(topics.DEAD_LETTERS)] * 2
    letters = [avro.decode("dead_letter", value) for _, value, _ in producer.produced]
    assert [(d["reason"], d["source_offset"], d["value"]) for d in letters] == [
        ("undecodable", 0, b"garbage"),
        ("undecodable", 1, click),
    ]
    assert letters[0]["stage"] == "sink" and "C3 01" in letters[0]["error"]
    assert store.events == ["insert messages", "flush dead letters", "commit"]
    assert consumer.commits == [{(OUTCOMES, 0): 3, (CLICKS, 0): 5}]
    assert sink.stats.dead_letters == 2 and sink.stats.tombstones == 1


def test_outage_pauses_keeps_the_batch_backs_off_and_resumes() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock, max_backoff_s=0.5)
    store.down = True
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3)])
    sink.step()
    assert consumer.paused == {(OUTCOMES, 0), (OUTCOMES, 1)}
    assert consumer.commits == []
    consumer.queue = [Msg(OUTCOMES, 0, 3, outcome(3))]
    waits = []
    for _ in range(4):
        assert consumer.consume(10, 0) == []  # paused: nothing more is read
        waits.append(round(sink._retry_at - clock.now, 2))
        clock.now = sink._retry_at
        sink.step()
    assert waits == [0.2, 0.4, 0.5, 0.5]
    assert consumer.commits == [] and sink.stats.retries == 5
    store.down = False
    clock.now = sink._retry_at
    sink.step()
    assert consumer.commits == [{(OUTCOMES, 0): 3}]
    assert consumer.paused == set()
    sink.process(consumer.consume(10, 0))
    clock.now += 1.0
    sink.step()
    assert consumer.commits[-1] == {(OUTCOMES, 0): 4}
    assert [r[0] for r in store.rows["messages"]] == ["r0", "r1", "r2", "r3"]


def test_revoke_during_outage_drops_the_buffer_without_committing() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    store.down = True
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(4)])
    sink.step()  # 4 rows drained into the held batch
    sink.process([Msg(OUTCOMES, 1, 0, outcome(9))])
    sink._on_revoke(consumer, consumer.assignment())
    assert consumer.commits == [] and store.rows == {}
    assert sink.stats.dropped_rows == 5 and len(sink.buffer) == 0 and sink._pending is None


def test_revoke_stores_and_commits_the_buffer_when_clickhouse_answers() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    sink.process([Msg(OUTCOMES, 1, 5, outcome(5))])
    sink._on_revoke(consumer, consumer.assignment())
    assert consumer.commits == [{(OUTCOMES, 1): 6}] and len(store.rows["messages"]) == 1


def test_run_stores_the_buffer_on_stop() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock, max_rows=100)
    consumer.queue = [Msg(OUTCOMES, 0, n, outcome(n)) for n in range(5)]
    original = consumer.consume

    def consume_then_stop(num: int, timeout: float) -> list[Any]:
        out = original(num, timeout)
        if not out:
            sink.stop()
        return out

    consumer.consume = consume_then_stop  # type: ignore[method-assign]
    stats = sink.run()
    assert consumer.commits == [{(OUTCOMES, 0): 5}]
    assert stats.rows["messages"] == 5 and store.events[-1] == "close"
