"""The router stage as Faust agents: business events in, notification requests out.

The agents only move records. Decisions live in `pipeline.router.core.route` (pure);
customer profiles live in a changelog-backed table fed from the profiles topic, so a
restarted worker recovers them from Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import faust

from pipeline import avro, kafka_io, topics
from pipeline.deadletter import dead_letter
from pipeline.errors import ConfigError
from pipeline.router.core import route
from pipeline.rules.loader import load_ruleset
from pipeline.settings import Settings

log = logging.getLogger(__name__)

LANE_TOPICS = {
    "transactional": topics.REQUESTS_TRANSACTIONAL,
    "marketing": topics.REQUESTS_MARKETING,
}


class RuleBook:
    """The live rule set: loaded at start-up, reloaded when a file under `config/` changes.

    A reload that fails validation keeps the previous rules and logs every problem.
    """

    def __init__(self, settings: Settings) -> None:
        self.config_dir = settings.config_dir
        self.ruleset = load_ruleset(self.config_dir)
        self.version = self._stamp()
        self.reloads = 0

    def _stamp(self) -> tuple[tuple[str, float], ...]:
        files = sorted(p for p in self.config_dir.rglob("*.yaml") if p.is_file())
        return tuple((str(p), p.stat().st_mtime) for p in files)

    def maybe_reload(self) -> bool:
        """Reload if any config file changed; True when new rules took effect."""
        stamp = self._stamp()
        if stamp == self.version:
            return False
        self.version = stamp
        try:
            self.ruleset = load_ruleset(self.config_dir)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload rejected, keeping previous rules: %s", problem)
            return False
        self.reloads += 1
        log.info("rules reloaded from %s", self.config_dir)
        return True


@dataclass
class RouterStats:
    """Counters of what the router did, by outcome."""

    counts: Counter[str] = field(default_factory=Counter)


def install_router(app: faust.App, settings: Settings) -> RouterStats:
    """Declare the router's topics, profile table, agents and reload timer on `app`."""
    rules = RuleBook(settings)
    stats = RouterStats()
    reg = avro.registry()
    schema_of = {settings.topic(name): schema for name, schema in topics.EVENT_TOPICS.items()}

    events_topic = app.topic(*schema_of, key_type=bytes, value_type=bytes)
    profiles_topic = app.topic(settings.topic(topics.PROFILES), key_type=bytes, value_type=bytes)
    profiles = app.Table(
        "profiles",
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
    )

    # Requests and dead letters go out through librdkafka (confluent-kafka): far cheaper per
    # message than Faust's aiokafka producer. Each batch is flushed before the agent asks
    # for the next one, so no offset is committed for an event whose output is not stored.
    out = kafka_io.producer(settings, **{"linger.ms": 5, "batch.num.messages": 10_000})
    lane_names = {lane: settings.topic(name) for lane, name in LANE_TOPICS.items()}
    dlq_name = settings.topic(topics.DEAD_LETTERS)

    def produce(topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                out.produce(topic, key=key, value=value)
                return
            except BufferError:
                out.poll(0.05)

    def send_dead_letter(event: faust.types.EventT, reason: str, error: str,
                         event_id: str | None = None) -> None:
        msg = event.message
        stats.counts[f"dead_letter:{reason}"] += 1
        record = dead_letter("router", reason, error, msg.topic, msg.partition, msg.offset,
                             msg.key, msg.value, event_id)
        produce(dlq_name, msg.key, avro.encode("dead_letter", record))

    @app.agent(profiles_topic, name="profiles")
    async def ingest_profiles(stream: faust.StreamT) -> None:
        async for event in stream.events():
            key, value = event.key, event.value
            if value is None:
                if key is not None:
                    profiles.pop(key, None)
                continue
            try:
                profile = avro.decode("customer_profile", value, reg)
            except avro.DecodeError as exc:
                send_dead_letter(event, exc.reason, str(exc))
                await asyncio.to_thread(out.flush, 30)
                continue
            profiles[profile["customer_id"].encode()] = value
            stats.counts["profile"] += 1

    @app.agent(events_topic, name="route")
    async def route_events(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(1000, within=0.01):
            for event in batch:
                handle_event(event)
            out.poll(0)
            if len(out):
                await asyncio.to_thread(out.flush, 60)

    def handle_event(event: faust.types.EventT) -> None:
        msg = event.message
        schema = schema_of[msg.topic]
        try:
            record = avro.decode(schema, event.value or b"", reg)
        except avro.DecodeError as exc:
            send_dead_letter(event, exc.reason, str(exc))
            return
        problem = invalid_event(record)
        if problem:
            send_dead_letter(event, "invalid_event", problem, record.get("event_id"))
            return
        raw_profile = profiles.get(record["customer_id"].encode())
        if raw_profile is None:
            send_dead_letter(
                event, "unknown_customer",
                f"no profile for customer {record['customer_id']!r} on {settings.topic(topics.PROFILES)}",
                record["event_id"],
            )
            return
        profile = avro.decode("customer_profile", raw_profile, reg)
        result = route(rules.ruleset, schema, record, profile, int(time.time() * 1000))
        for failure in result.failures:
            send_dead_letter(event, failure.reason, f"rule {failure.rule_id}: {failure.error}",
                             record["event_id"])
        if not result.requests and not result.failures:
            stats.counts["no_rule"] += 1
        for request in result.requests:
            produce(lane_names[request["lane"]], request["customer_id"].encode(),
                    avro.encode("notification_request", request))
            stats.counts[f"request:{request['lane']}"] += 1

    @app.timer(interval=2.0)
    async def reload_rules() -> None:
        rules.maybe_reload()

    return stats


def invalid_event(record: dict[str, Any]) -> str | None:
    """Why a decoded business event cannot be routed, or None when it can."""
    if not record.get("event_id"):
        return "event_id is empty"
    if not record.get("customer_id"):
        return "customer_id is empty"
    if record.get("occurred_at_ms", 0) <= 0:
        return "occurred_at_ms must be a positive epoch-milliseconds timestamp"
    return None
