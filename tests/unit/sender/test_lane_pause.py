"""The sender's bound on a marketing backlog (`SenderWorker._bound_inbox`): the lane is
paused at `waiting_max` requests held, resumed at half, and a rewind or rebalance that
empties the inbox never leaves a partition paused for good. The real broker side is
tests/integration/test_faults_priority.py::test_a_marketing_backlog_held_in_memory_is_bounded."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from pipeline.errors import ConfigError
from pipeline.sender.worker import SenderStats, SenderWorker, marketing_waiting_max

LANE, URGENT = "requests.marketing", "requests.transactional"


class Consumer:
    """Records what was paused; `assignment` is whatever the test sets."""

    def __init__(self, partitions: list[int]) -> None:
        self.assigned = [TopicPartition(t, p) for t in (LANE, URGENT) for p in partitions]
        self.paused: set[tuple[str, int]] = set()
        self.calls: list[str] = []

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("pause")
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("resume")
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}


def worker(consumer: Consumer, most: int = 100) -> SenderWorker:
    w = object.__new__(SenderWorker)
    w.consumer = consumer
    w.worker_id = "0"
    w.lane_topics = {URGENT: "transactional", LANE: "marketing"}
    w.waiting_max, w.lane_paused, w._paused, w.inbox = most, False, set(), {}
    w.stats = SenderStats()
    return w


def test_the_lane_is_paused_when_full_and_resumed_at_half() -> None:
    consumer = Consumer([0, 1])
    w = worker(consumer)
    w._bound_inbox(99)
    assert consumer.paused == set() and not w.lane_paused
    w._bound_inbox(100)
    assert consumer.paused == {(LANE, 0), (LANE, 1)}, "only the marketing lane pauses"
    w._bound_inbox(120)
    w._bound_inbox(51)
    assert consumer.calls == ["pause"] and w.lane_paused, "no pause twice, no early resume"
    w._bound_inbox(50)
    assert consumer.paused == set() and not w.lane_paused and consumer.calls == ["pause", "resume"]
    assert w.stats.lane_pauses == 1


def test_a_partition_assigned_while_full_is_paused_too() -> None:
    consumer = Consumer([0])
    w = worker(consumer)
    w._bound_inbox(150)
    consumer.assigned.append(TopicPartition(LANE, 3))
    w._bound_inbox(150)
    assert consumer.paused == {(LANE, 0), (LANE, 3)}


def test_a_rewind_that_empties_the_inbox_resumes_what_it_forgot() -> None:
    """`_on_revoke` (called by a rewind too) forgets its partitions' pauses, but librdkafka
    keeps a partition paused across a seek: the next check resumes every marketing
    partition assigned, remembered or not."""
    consumer = Consumer([0, 1])
    w = worker(consumer)
    w._bound_inbox(100)
    w._paused.clear()  # what `_on_revoke` leaves after a rewind of both partitions
    w._bound_inbox(0)
    assert consumer.paused == set() and not w.lane_paused


def test_the_bound_is_a_whole_number_of_at_least_one() -> None:
    assert marketing_waiting_max("500") == 500
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(ConfigError, match="RASSYLKA_MARKETING_WAITING_MAX"):
            marketing_waiting_max(bad)
