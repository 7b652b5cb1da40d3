"""The sink's fast path on fakes: outcomes mapped in bulk next to records mapped one by
one, and batches inserted in the background while the loop reads on (`Sink._step` with
`wait=False`, as `run` drives it) — with the same guarantees: a batch's offsets are
committed only after its rows are stored, in order, and an outage holds the batch."""

from __future__ import annotations

import threading
from typing import Any

from test_sink_buffer import (
    OUTCOMES,
    SAMPLES,
    SETTINGS,
    Clock,
    Msg,
    Store,
    make_sink,
    outcome,
)

from pipeline import avro, topics
from pipeline.analytics.rows import message_row, to_row

REDELIVERIES = SETTINGS.topic(topics.REDELIVERIES)


def record(n: int, **over: Any) -> dict[str, Any]:
    return {**SAMPLES["send_outcome"], "request_id": f"r{n}", "message_id": f"r{n}", **over}


class SlowStore(Store):
    """A store whose inserts wait until `release` is set (a long ClickHouse insert)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()

    def insert(self, table: str, rows: Any, columns: Any, **kw: Any) -> int:
        self.started.set()
        assert self.release.wait(5), "the test never released the insert"
        return super().insert(table, rows, columns, **kw)


def test_outcomes_in_bulk_and_other_records_one_by_one() -> None:
    store, clock = Store(), Clock()
    sink, consumer, producer = make_sink(store, clock, max_rows=100)
    clicks = SETTINGS.topic(topics.CLICKS)
    duplicate = avro.encode("send_outcome", record(3, reason="duplicate"))
    sink.process([
        Msg(OUTCOMES, 0, 0, outcome(0)),
        Msg(OUTCOMES, 1, 0, outcome(1)),
        Msg(OUTCOMES, 0, 1, outcome(2)[:20]),  # truncated: a dead letter
        Msg(OUTCOMES, 0, 2, duplicate),  # a redelivery: never a `messages` row
        Msg(clicks, 0, 7, avro.encode("click", SAMPLES["click"])),
        Msg(REDELIVERIES, 0, 4, duplicate),
        Msg(OUTCOMES, 1, 1, outcome(4)),
    ])
    clock.now += 1.0
    sink.step()
    expected = [message_row(record(n), SETTINGS.phone_hash_key) for n in (0, 1, 4)]
    assert store.rows["messages"] == expected
    redelivery = to_row("send_outcome", record(3, reason="duplicate"), "")[1]
    assert store.rows["redeliveries"] == [redelivery, redelivery]
    assert len(store.rows["clicks"]) == 1
    letters = [avro.decode("dead_letter", value) for _, value, _ in producer.produced]
    assert [(d["source_offset"], d["reason"]) for d in letters] == [(1, "undecodable")]
    assert consumer.commits == [{(OUTCOMES, 0): 3, (OUTCOMES, 1): 2, (clicks, 0): 8,
                                 (REDELIVERIES, 0): 5}]
    assert sink.stats.consumed == 7 and sink.stats.rows["messages"] == 3


def test_a_bulk_mapping_bug_leaves_the_records_to_the_per_record_path() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    reader = next(iter(sink._bulk.values()))
    reader.messages = lambda *a: 1 / 0  # type: ignore[method-assign]
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3)])
    sink.step()
    assert [r[0] for r in store.rows["messages"]] == ["r0", "r1", "r2"]
    assert consumer.commits == [{(OUTCOMES, 0): 3}]


def test_the_loop_reads_on_while_a_batch_is_inserted_and_commits_after_it() -> None:
    store, clock = SlowStore(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3)])
    sink._step(wait=False)
    assert store.started.wait(5)
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3, 5)])  # read on
    sink._step(wait=False)
    assert consumer.commits == [] and sink._inflight is not None
    store.release.set()
    sink._inflight[1].result(5)
    sink._step(wait=False)  # the insert is done: commit it
    assert consumer.commits == [{(OUTCOMES, 0): 3}]
    sink.process([Msg(OUTCOMES, 0, 5, outcome(5))])
    sink._step(wait=False)  # the buffer is due: the next batch goes in flight
    sink.step()
    assert consumer.commits == [{(OUTCOMES, 0): 3}, {(OUTCOMES, 0): 6}]
    assert [r[0] for r in store.rows["messages"]] == [f"r{n}" for n in range(6)]
    assert store.events == ["insert messages", "commit", "insert messages", "commit"]


def test_a_due_batch_waits_for_the_one_in_flight() -> None:
    store, clock = SlowStore(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3)])
    sink._step(wait=False)
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3, 6)])
    threading.Timer(0.2, store.release.set).start()
    sink._step(wait=False)  # due again: waits, commits the first, sends the second
    assert consumer.commits == [{(OUTCOMES, 0): 3}]
    sink.step()
    assert consumer.commits == [{(OUTCOMES, 0): 3}, {(OUTCOMES, 0): 6}]


def test_a_failed_background_insert_holds_the_batch_and_pauses() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    store.down = True
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3)])
    sink._step(wait=False)
    sink._inflight[1].exception(5)  # type: ignore[index]
    sink.process([Msg(OUTCOMES, 1, 0, outcome(9))])  # read before the pause took hold
    sink._step(wait=False)
    assert sink._pending is not None and consumer.paused == {(OUTCOMES, 0), (OUTCOMES, 1)}
    assert consumer.commits == [] and sink.stats.retries == 1
    store.down = False
    clock.now = sink._retry_at
    sink._step(wait=False)  # the held batch first, synchronously, then resume
    assert consumer.commits == [{(OUTCOMES, 0): 3}] and consumer.paused == set()
    clock.now += 1.0
    sink.step()
    assert consumer.commits[-1] == {(OUTCOMES, 1): 1}
    assert [r[0] for r in store.rows["messages"]] == ["r0", "r1", "r2", "r9"]


def _inflight_and_buffered() -> tuple[Any, Any]:
    """A sink with three rows of partition 0 being inserted (the store answers at once
    from now on) and one row of partition 1 buffered behind them."""
    store, clock = SlowStore(), Clock()
    sink, consumer, _ = make_sink(store, clock)
    sink.process([Msg(OUTCOMES, 0, n, outcome(n)) for n in range(3)])
    sink._step(wait=False)
    sink.process([Msg(OUTCOMES, 1, 0, outcome(7))])
    store.release.set()
    return sink, consumer


def test_revoke_commits_the_batch_in_flight_then_the_buffer() -> None:
    sink, consumer = _inflight_and_buffered()
    sink._on_revoke(consumer, consumer.assignment())
    assert consumer.commits == [{(OUTCOMES, 0): 3}, {(OUTCOMES, 1): 1}]
    assert sink._inflight is None and len(sink.buffer) == 0


def test_lost_partitions_drop_the_batch_in_flight_uncommitted() -> None:
    sink, consumer = _inflight_and_buffered()
    sink._on_lost(consumer, consumer.assignment())
    sink.step()
    assert consumer.commits == [] and sink.stats.dropped_rows == 4
    assert sink._inflight is None and len(sink.buffer) == 0


def test_run_drains_everything_through_background_inserts() -> None:
    store, clock = Store(), Clock()
    sink, consumer, _ = make_sink(store, clock, max_rows=50)
    queue = [Msg(OUTCOMES, n % 2, n // 2, outcome(n)) for n in range(1_000)]

    def consume_then_stop(num: int, timeout: float) -> list[Any]:
        out = [queue.pop(0) for _ in range(min(num, len(queue)))]
        if not out:
            sink.stop()
        return out

    consumer.consume = consume_then_stop  # type: ignore[method-assign]
    stats = sink.run()
    assert sorted(r[0] for r in store.rows["messages"]) == sorted(f"r{n}" for n in range(1_000))
    assert consumer.commits[-1] == {(OUTCOMES, 0): 500, (OUTCOMES, 1): 500}
    offsets = [c.get((OUTCOMES, 0), 0) for c in consumer.commits]
    assert offsets == sorted(offsets)  # commits in order
    assert stats.rows["messages"] == 1_000 and stats.batches == len(consumer.commits)
