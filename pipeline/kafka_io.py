"""Small confluent-kafka helpers for publishing and reading Avro records (CLI, demo, tests)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipeline import avro
from pipeline.settings import Settings


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
