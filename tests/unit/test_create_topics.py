"""`create_topics` against a broker whose metadata lags its answers (a stand-in admin).

A broker answers CreateTopics before every part of it knows the new topic: a listing taken
right after can miss it, and a topic made meanwhile by someone else (the broker itself on a
first write) makes CreateTopics fail with TOPIC_ALREADY_EXISTS. Both happened in CI runs.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline import topics
from pipeline.settings import Settings


def _done(value: object = None, error: BaseException | None = None) -> Future:
    future: Future = Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
    return future


@dataclass
class LaggingAdmin:
    """Topics appear in listings `lag` listings after they are made; `raced` topics exist
    on the broker (with `configs`) but not yet in any listing."""

    lag: int = 0
    raced: dict[str, dict[str, str]] = field(default_factory=dict)
    shown_after: dict[str, int] = field(default_factory=dict)
    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    listings: int = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        self.listings += 1
        partition = SimpleNamespace(leader=1)
        shown = {name: SimpleNamespace(error=None, partitions={0: partition})
                 for name, at in self.shown_after.items() if self.listings > at}
        return SimpleNamespace(topics=shown)

    def create_topics(self, new: list, request_timeout: float = -1) -> dict[str, Future]:
        out = {}
        for t in new:
            if t.topic in self.raced:
                self.configs[t.topic] = self.raced[t.topic]
                self.shown_after[t.topic] = self.listings + self.lag
                out[t.topic] = _done(error=KafkaException(KafkaError(
                    KafkaError.TOPIC_ALREADY_EXISTS, f"Topic '{t.topic}' already exists.")))
            else:
                self.configs[t.topic] = {"cleanup.policy": t.config["cleanup.policy"],
                                         **t.config}
                self.shown_after[t.topic] = self.listings + self.lag
                out[t.topic] = _done()
        return out

    def describe_configs(self, resources: list, request_timeout: float = -1) -> dict:
        return {r: _done({k: SimpleNamespace(value=v) for k, v in self.configs[r.name].items()})
                for r in resources}

    def incremental_alter_configs(self, resources: list, request_timeout: float = -1) -> dict:
        for r in resources:
            for entry in r.incremental_configs:
                self.configs[r.name][entry.name] = entry.value
        return {r: _done() for r in resources}


@pytest.fixture
def settings() -> Settings:
    return replace(Settings.from_env({}), topic_prefix="u.", partitions=2)


def _use(monkeypatch: pytest.MonkeyPatch, admin: LaggingAdmin) -> None:
    monkeypatch.setattr(topics, "AdminClient", lambda _conf: admin)
    monkeypatch.setattr(time, "sleep", lambda _s: None)


def test_returns_only_once_every_created_topic_is_listed_with_a_leader(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    admin = LaggingAdmin(lag=3)
    _use(monkeypatch, admin)

    result = topics.create_topics(settings)

    assert set(result.values()) == {"created"} and len(result) == len(topics.CATALOG)
    last = admin.list_topics()
    assert set(result) <= set(last.topics)
    assert admin.listings > 1 + admin.lag  # it listed again until the topics showed


def test_a_topic_made_meanwhile_gets_the_catalogs_configs(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    consent = settings.topic(topics.CONSENT)
    admin = LaggingAdmin(lag=1, raced={consent: {"cleanup.policy": "delete"}})
    _use(monkeypatch, admin)

    result = topics.create_topics(settings)

    assert result[consent] == "updated: cleanup.policy compact (was delete)"
    assert admin.configs[consent]["cleanup.policy"] == "compact"
    assert result[settings.topic(topics.OUTCOMES)] == "created"


def test_a_policy_described_in_another_order_is_the_same_policy(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """A broker may describe "compact,delete" as "delete,compact": that is no change to
    make (it used to be set again on every run, and with the wait for the new value it
    would never have been seen)."""
    forwarded = settings.topic(topics.RECEIPTS_FORWARDED)
    admin = LaggingAdmin()
    _use(monkeypatch, admin)
    topics.create_topics(settings)
    admin.configs[forwarded]["cleanup.policy"] = "delete, compact"

    assert topics.create_topics(settings)[forwarded] == "exists"
