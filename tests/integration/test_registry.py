"""The Schema Registry (real Apicurio, Confluent API) with the router on the real broker:
registration, evolution through the registry, and records from a stock Confluent publisher."""

from __future__ import annotations

import copy
import json
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from stages import profiles_read, settle, stage, wait_for

from pipeline import avro, kafka_io, topics
from pipeline.registry import (
    RegistryClient,
    RegistryUnavailable,
    SchemaRejected,
    register_contracts,
    subjects,
)
from pipeline.samples import make_profile, order_event
from pipeline.settings import Settings

NOW = int(time.time() * 1000)
CONTRACT = "order_status_changed"


def evolved(change: str) -> dict[str, Any]:
    """The order event contract with one change a publisher might make."""
    schema = copy.deepcopy(avro.registry().contract(CONTRACT).schema)
    if change == "new field with default":
        schema["fields"].append({"name": "channel", "type": "string", "default": "web"})
    elif change == "new field without default":
        schema["fields"].append({"name": "channel", "type": "string"})
    elif change == "type change":
        for field in schema["fields"]:
            if field["name"] == "order_id":
                field["type"] = "long"
    return schema


def subject_of(settings: Settings) -> str:
    return f"{settings.topic(topics.ORDER_STATUS)}-value"


def confluent_publish(settings: Settings, registry_url: str, schema: dict[str, Any],
                      events: list[dict[str, Any]]) -> None:
    """Publish like a service that knows nothing of Rassylka: stock serializer, auto-registering."""
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), json.dumps(schema))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    topic = settings.topic(topics.ORDER_STATUS)
    for event in events:
        value = serializer(event, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, key=event["customer_id"].encode(), value=value)
    assert producer.flush(30) == 0


def wait_for_log(log_dir: Path, text: str, count: int, timeout: float = 60.0) -> int:
    """How often `text` is in the stage logs under `log_dir` once it is there `count` times."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = sum(p.read_text(errors="replace").count(text) for p in log_dir.glob("*.log"))
    return seen


def test_contracts_register_once_per_topic_and_compatible_change_is_accepted(
        ns: Settings, schema_registry_url: str) -> None:
    client = RegistryClient(schema_registry_url)
    ids = register_contracts(ns, client)
    assert set(ids) == set(subjects(ns))
    assert subject_of(ns) in ids and f"{ns.topic(topics.DEAD_LETTERS)}-value" in ids
    assert ids[f"{ns.topic(topics.REQUESTS_TRANSACTIONAL)}-value"] == \
        ids[f"{ns.topic(topics.REQUESTS_MARKETING)}-value"], "one schema, one id"
    assert register_contracts(ns, client) == ids, "registering again changes nothing"

    client.set_compatibility("BACKWARD", subject_of(ns))
    new_id = client.register(subject_of(ns), evolved("new field with default"))
    assert new_id != ids[subject_of(ns)]
    assert client.versions(subject_of(ns)) == [1, 2]


@pytest.mark.parametrize("change", ["new field without default", "type change"])
def test_incompatible_change_is_refused_with_a_clear_error(
        ns: Settings, schema_registry_url: str, change: str) -> None:
    client = RegistryClient(schema_registry_url)
    register_contracts(ns, client)
    client.set_compatibility("BACKWARD", subject_of(ns))
    with pytest.raises(SchemaRejected) as refused:
        client.register(subject_of(ns), evolved(change), "the publisher's order event")
    message = str(refused.value)
    assert f"the publisher's order event as subject {subject_of(ns)}" in message
    assert "not BACKWARD compatible" in message and schema_registry_url in message
    assert "default" in (refused.value.hint or "")
    assert client.versions(subject_of(ns)) == [1]


def test_router_started_before_the_change_routes_a_stock_confluent_publishers_events(
        ns: Settings, schema_registry_url: str, tmp_path: Path) -> None:
    register_contracts(ns, RegistryClient(schema_registry_url))
    rng = random.Random(31)
    profiles = [make_profile(rng, i) for i in range(3)]
    new_events = [order_event(rng, p["customer_id"], "shipped", NOW) | {"channel": "app"}
                  for p in profiles[:2]]
    old_event = order_event(rng, profiles[2]["customer_id"], "shipped", NOW)
    with stage(ns, ["router"], tmp_path):
        kafka_io.publish(ns, topics.PROFILES, ((p["customer_id"], p) for p in profiles),
                         "customer_profile")
        profiles_read(ns)
        # The router is running: only now does the publisher's new version exist.
        confluent_publish(ns, schema_registry_url, evolved("new field with default"), new_events)
        kafka_io.publish(ns, topics.ORDER_STATUS, [(old_event["customer_id"], old_event)], CONTRACT)
        requests = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, 3)
        dead = settle(ns, topics.DEAD_LETTERS, idle=1.0, timeout=5)
    assert not dead, [(d.record["reason"], d.record["error"]) for d in dead]
    routed = {m.record["event_id"] for m in requests}
    assert routed == {e["event_id"] for e in [*new_events, old_event]}
    assert SchemaRegistryClient({"url": schema_registry_url}).get_versions(subject_of(ns)) == [1, 2]


def test_registry_outage_is_retried_never_dead_lettered(
        ns: Settings, schema_registry_url: str, tmp_path: Path) -> None:
    register_contracts(ns, RegistryClient(schema_registry_url))
    rng = random.Random(32)
    profile = make_profile(rng, 1)
    event = order_event(rng, profile["customer_id"], "shipped", NOW) | {"channel": "app"}
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        away = f"http://127.0.0.1:{probe.getsockname()[1]}/apis/ccompat/v7"
    with pytest.raises(RegistryUnavailable, match="not reachable"):
        RegistryClient(away).schema(1)
    kafka_io.publish(ns, topics.PROFILES, [(profile["customer_id"], profile)], "customer_profile")
    confluent_publish(ns, schema_registry_url, evolved("new field with default"), [event])
    with stage(ns, ["router"], tmp_path / "away", extra_env={"SCHEMA_REGISTRY_URL": away}):
        retries = wait_for_log(tmp_path / "away", "Schema Registry is not reachable", 2)
        assert retries >= 2, "the router should retry the batch while the registry is away"
        assert not settle(ns, topics.REQUESTS_TRANSACTIONAL, idle=1.0, timeout=3)
        assert not settle(ns, topics.DEAD_LETTERS, idle=1.0, timeout=3)
    with stage(ns, ["router"], tmp_path):  # the registry is back: the event was kept
        [request] = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, 1)
        assert not settle(ns, topics.DEAD_LETTERS, idle=1.0, timeout=3)
    assert request.record["event_id"] == event["event_id"]
