"""After a failed transaction every stage aborts, and a producer the abort leaves unusable
(fatal: fenced, timed out, or Kafka 4's INVALID_TXN_STATE race, provoked for real in
tests/integration/test_abort_or_renew.py) is replaced; a stage that kept it would fail
every transaction after it. The follow-ups and the campaign runner used to keep it."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline import kafka_io
from pipeline.campaigns import runner as runner_module
from pipeline.campaigns.followups import FollowUps
from pipeline.campaigns.runner import CampaignRunner, Running
from pipeline.rules.loader import load_ruleset
from pipeline.settings import Settings

FATAL = KafkaError(KafkaError.INVALID_TXN_STATE, "Failed to end transaction", fatal=True)
AWAY = KafkaError(KafkaError._TRANSPORT, "broker away", retriable=True)
TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "Timed out waiting for operation to finish, "
                       "retry call to resume", retriable=True)


class Doomed:
    """A producer whose transaction fails at once and whose abort fails with `abort_error`
    (None: the abort works)."""

    def __init__(self, abort_error: KafkaError | None) -> None:
        self.abort_error = abort_error
        self.aborts = 0

    def begin_transaction(self) -> None:
        raise KafkaException(KafkaError(KafkaError._STATE, "transaction refused"))

    def abort_transaction(self, timeout: float | None = None) -> None:
        self.aborts += 1
        if self.abort_error is not None:
            raise KafkaException(self.abort_error)


class OneMessage:
    """A consumer with one record to read and no partitions to rewind."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return [SimpleNamespace(error=lambda: None)]

    def assignment(self) -> list[Any]:
        return []

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        return []


def test_abort_or_renew_keeps_a_producer_whose_abort_worked() -> None:
    producer = Doomed(None)
    assert kafka_io.abort_or_renew(producer, lambda: pytest.fail("renewed"), "test") is producer
    assert producer.aborts == 1


def test_abort_or_renew_replaces_a_producer_a_fatal_abort_left() -> None:
    fresh = object()
    assert kafka_io.abort_or_renew(Doomed(FATAL), lambda: fresh, "test") is fresh


def test_abort_or_renew_replaces_a_producer_whose_abort_does_not_finish() -> None:
    """Regression (a CI run of the broker-outage fault test): after the broker came back,
    the sender's abort timed out every 30 s ("retry call to resume") for minutes, and the
    sender sent nothing more. Such a producer is now replaced after one timed-out abort."""
    stuck = Doomed(TIMED_OUT)
    fresh = object()
    assert kafka_io.abort_or_renew(stuck, lambda: fresh, "test") is fresh
    assert stuck.aborts == 1


def test_abort_or_renew_raises_while_the_broker_is_away() -> None:
    with pytest.raises(KafkaException):  # retried on the caller's next cycle
        kafka_io.abort_or_renew(Doomed(AWAY), lambda: pytest.fail("renewed"), "test")


def test_follow_ups_replace_a_producer_a_fatal_abort_left(fixture_config: Path) -> None:
    followups = FollowUps(Settings.from_env({}), load_ruleset(fixture_config))
    followups.enabled = True  # as with a follow_up rule; the fixture's rules have none
    fresh = Doomed(None)
    followups.producer, followups.consumer = Doomed(FATAL), OneMessage()
    followups._new_producer = lambda: fresh  # type: ignore[method-assign]
    followups.cycle()
    assert followups.producer is fresh
    followups.cycle()  # the next failure aborts with the new producer
    assert followups.producer is fresh and fresh.aborts == 1


def test_campaign_runner_replaces_a_producer_a_fatal_abort_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module.time, "sleep", lambda s: None)
    runner = CampaignRunner(Settings.from_env({}), {})
    fresh = Doomed(None)
    runner.producer = Doomed(FATAL)
    runner._new_producer = lambda: fresh  # type: ignore[method-assign]
    run = Running(campaign=SimpleNamespace(id="c1"), variants=(), by_phase={},
                  state={"status": "running", "cursors": {"test": {"z": 3}}})
    runner._save(run, "running", [])
    assert runner.producer is fresh
    assert run.state["cursors"] == {"test": {"z": 3}}, "the state went back to the last commit"


class Blocked:
    """A producer whose `send_offsets_to_transaction` never returns (librdkafka waiting for
    a group coordinator it lost track of) and whose abort would say a call is in progress."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.aborts = 0

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.release.wait()  # for good, as far as the caller can tell

    def abort_transaction(self, timeout: float | None = None) -> None:
        self.aborts += 1
        raise KafkaException(KafkaError(KafkaError._CONFLICT, "Conflicting "
                                        "send_offsets_to_transaction API call is already in "
                                        "progress", retriable=True))


def test_a_send_offsets_that_never_returns_is_given_up_and_its_producer_replaced() -> None:
    """Regression: the sender waited in send_offsets_to_transaction for good after a broker
    restart (librdkafka does not check its timeout there), silent until CI's deadline. Now
    the call is bounded; the producer is replaced without an abort that would only say
    another call is in progress (and be retried for ever)."""
    import time

    blocked = Blocked()
    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        kafka_io.send_offsets(blocked, [], None, timeout=30, bound_s=0.3)
    assert time.monotonic() - started < 5
    error = raised.value.args[0]
    assert error.code() == KafkaError._TIMED_OUT and error.fatal()
    def away() -> Any:
        raise KafkaException(AWAY)

    with pytest.raises(KafkaException):  # the broker away: no new producer yet
        kafka_io.abort_or_renew(blocked, away, "test")
    fresh = SimpleNamespace(name="fresh")
    assert kafka_io.abort_or_renew(blocked, lambda: fresh, "test") is fresh
    assert blocked.aborts == 0, "no abort asked of a producer blocked in a call"
    # the blocked thread is given up: the next transaction's call is made by another
    calls: list[Any] = []
    kafka_io.send_offsets(SimpleNamespace(send_offsets_to_transaction=lambda *a: calls.append(a)),
                          ["tp"], "meta", bound_s=5)
    assert calls == [(["tp"], "meta", 30.0)]
    blocked.release.set()


def test_send_offsets_returns_and_raises_as_the_producer_does() -> None:
    class Quick:
        def __init__(self, error: KafkaError | None) -> None:
            self.error, self.calls = error, []

        def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
            self.calls.append((offsets, metadata, timeout))
            if self.error is not None:
                raise KafkaException(self.error)

    ok = Quick(None)
    kafka_io.send_offsets(ok, ["tp"], "meta")
    assert ok.calls == [(["tp"], "meta", 30.0)]
    with pytest.raises(KafkaException) as raised:
        kafka_io.send_offsets(Quick(AWAY), [], None)
    assert raised.value.args[0].code() == KafkaError._TRANSPORT
