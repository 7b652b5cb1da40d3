"""The router through the real broker: requests, variants, locales, idempotency, dead letters."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from stages import kill, profiles_read, settle, stage, wait_for

from pipeline import avro, kafka_io, topics
from pipeline.samples import make_profile, order_event, payment_event, promotion_event
from pipeline.settings import Settings

NOW = int(time.time() * 1000)


def load_profiles(settings: Settings, profiles: list[dict]) -> None:
    """Publish profiles and wait until the running router has read them all."""
    kafka_io.publish(settings, topics.PROFILES, ((p["customer_id"], p) for p in profiles),
                     "customer_profile")
    profiles_read(settings)


def requests_by_event(settings: Settings, count: int) -> dict[str, list[dict]]:
    msgs = wait_for(settings, topics.REQUESTS_TRANSACTIONAL, count)
    out: dict[str, list[dict]] = {}
    for m in msgs:
        assert m.schema == "notification_request"
        out.setdefault(m.record["event_id"], []).append(m.record)
    return out


def test_router_renders_personalised_requests_with_locale_fallback(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(1)
    ru = make_profile(rng, 1, locale="ru") | {"first_name": "Анна"}
    en = make_profile(rng, 2, locale="en") | {"first_name": "Emma"}
    de = make_profile(rng, 3, locale="de") | {"first_name": "Greta"}
    with stage(ns, ["router"], tmp_path):
        load_profiles(ns, [ru, en, de])
        events = [order_event(rng, p["customer_id"], "shipped", NOW) for p in (ru, en, de)]
        kafka_io.publish(ns, topics.ORDER_STATUS,
                         ((e["customer_id"], e) for e in events), "order_status_changed")
        by_event = requests_by_event(ns, 3)
    texts = {e["customer_id"]: by_event[e["event_id"]][0] for e in events}
    assert texts[ru["customer_id"]]["locale"] == "ru"
    assert "Анна" in texts[ru["customer_id"]]["text"]
    assert events[0]["order_id"] in texts[ru["customer_id"]]["text"]
    assert texts[en["customer_id"]]["locale"] == "en" and "Emma" in texts[en["customer_id"]]["text"]
    # German is not a template locale: falls back to the default (ru), still personalised.
    assert texts[de["customer_id"]]["locale"] == "ru" and "Greta" in texts[de["customer_id"]]["text"]
    for request in texts.values():
        assert request["lane"] == "transactional"
        assert request["rule_id"] and request["template_id"] and request["sender_id"]
        assert request["expires_at_ms"] > request["created_at_ms"]


def test_promotion_variants_follow_customers_and_go_to_marketing_lane(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(2)
    profiles = [make_profile(rng, i, locale="ru") for i in range(40)]
    events = [promotion_event(rng, p["customer_id"], NOW, "bf-test") for p in profiles]
    with stage(ns, ["router"], tmp_path):
        load_profiles(ns, profiles)
        kafka_io.publish(ns, topics.PROMOTION, ((e["customer_id"], e) for e in events),
                         "promotion")
        msgs = wait_for(ns, topics.REQUESTS_MARKETING, 40)
    variants = {m.record["variant"] for m in msgs}
    assert len(variants) >= 2, "40 customers should see more than one variant"
    for m in msgs:
        assert m.record["campaign_id"] == "bf-test"
        assert m.record["lane"] == "marketing"
        assert m.key == m.record["customer_id"].encode()


def test_idempotency_key_is_stable_across_republishing(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(3)
    profile = make_profile(rng, 7)
    event = payment_event(rng, profile["customer_id"], NOW)
    with stage(ns, ["router"], tmp_path):
        load_profiles(ns, [profile])
        for _ in range(2):
            kafka_io.publish(ns, topics.PAYMENT_DUE, [(event["customer_id"], event)],
                             "payment_due")
        msgs = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, 2)
    keys = {m.record["request_id"] for m in msgs}
    assert len(keys) == 1, "the same event must give the same idempotency key"
    assert len(next(iter(keys))) == 32


def test_bad_input_is_dead_lettered_with_reason_and_worker_keeps_running(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(4)
    profile = make_profile(rng, 9)
    good = order_event(rng, profile["customer_id"], "shipped", NOW)
    unknown = order_event(rng, "cust-nobody", "shipped", NOW)
    invalid = dict(order_event(rng, profile["customer_id"], "paid", NOW), event_id="")
    wrong_schema = avro.encode("inbound_message", {"inbound_id": "i", "from_number": "+7",
                                                   "to": "x", "text": "t", "received_at_ms": 1})
    bad = [
        (b"k1", b"\x00garbage bytes", "undecodable"),
        (b"k2", wrong_schema, "undecodable"),
        (b"cust-nobody", avro.encode("order_status_changed", unknown), "unknown_customer"),
        (profile["customer_id"].encode(), avro.encode("order_status_changed", invalid), "invalid_event"),
        (b"k5", avro.encode("order_status_changed", order_event(rng, "x", "paid", NOW))[:20], "undecodable"),
    ]
    with stage(ns, ["router"], tmp_path) as proc:
        load_profiles(ns, [profile])
        kafka_io.publish(ns, topics.ORDER_STATUS, [(k, v) for k, v, _ in bad])
        kafka_io.publish(ns, topics.ORDER_STATUS, [(good["customer_id"], good)],
                         "order_status_changed")
        dead = wait_for(ns, topics.DEAD_LETTERS, len(bad))
        ok = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, 1)
        assert proc.poll() is None, "the router must survive bad input"
    by_value = {m.record["value"]: m.record for m in dead}
    for key, value, reason in bad:
        record = by_value[value]
        assert record["reason"] == reason, (reason, record["error"])
        assert record["key"] == key and record["stage"] == "router"
        assert record["source_topic"] == ns.topic(topics.ORDER_STATUS)
        assert record["error"]
    assert ok[0].record["event_id"] == good["event_id"]


def test_render_error_is_dead_lettered(ns: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "config"
    _copy_config_with_broken_template(ns.config_dir, rules)
    from dataclasses import replace

    cfg = replace(ns, config_dir=rules)
    rng = random.Random(5)
    profile = make_profile(rng, 11)
    event = order_event(rng, profile["customer_id"], "shipped", NOW)
    with stage(cfg, ["router"], tmp_path):
        load_profiles(cfg, [profile])
        kafka_io.publish(cfg, topics.ORDER_STATUS, [(event["customer_id"], event)],
                         "order_status_changed")
        dead = wait_for(cfg, topics.DEAD_LETTERS, 1)
    assert dead[0].record["reason"] == "render_error"
    assert dead[0].record["event_id"] == event["event_id"]


def _copy_config_with_broken_template(
        src: Path, dst: Path,
        text: str = "Order {{ event.order_id }}: gift card {{ event.attributes.gift_card }}") -> None:
    """A config whose 'shipped' template is `text` (by default it reads an event attribute
    that events do not carry)."""
    import shutil

    import yaml

    shutil.copytree(src, dst)
    rules = yaml.safe_load((dst / "rules.yaml").read_text(encoding="utf-8"))
    shipped = next(r for r in rules["rules"] if r.get("when", {}).get("status") == "shipped")
    template_id = shipped.get("template") or shipped["variants"][0]["template"]
    path = dst / "templates" / f"{template_id}.yaml"
    template = yaml.safe_load(path.read_text(encoding="utf-8"))
    for locale in template["locales"]:
        template["locales"][locale] = text
    path.write_text(yaml.safe_dump(template, allow_unicode=True), encoding="utf-8")


def test_profiles_survive_a_killed_worker(ns: Settings, tmp_path: Path) -> None:
    """SIGKILL the router after it committed past the profiles: its group does not read
    them again, so the restarted worker must rebuild its table from the profiles topic."""
    rng = random.Random(6)
    profiles = [make_profile(rng, i) for i in range(5)]
    name = ns.topic(topics.PROFILES)
    with stage(ns, ["router"], tmp_path) as first:
        load_profiles(ns, profiles)
        deadline = time.monotonic() + 30
        while not _committed_to_end(ns, name) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _committed_to_end(ns, name), "router never committed its profile offsets"
        kill(first)
    events = [order_event(rng, p["customer_id"], "shipped", NOW) for p in profiles]
    with stage(ns, ["router"], tmp_path):
        kafka_io.publish(ns, topics.ORDER_STATUS, ((e["customer_id"], e) for e in events),
                         "order_status_changed")
        msgs = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, len(events))
        dead = settle(ns, topics.DEAD_LETTERS, idle=1.0, timeout=5)
    assert {m.record["event_id"] for m in msgs} == {e["event_id"] for e in events}
    assert not dead, [d.record["reason"] for d in dead]


def _committed_to_end(settings: Settings, topic: str) -> bool:
    """Has the router's group committed every partition of `topic` to its end?"""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"{settings.app_id}-router", "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        for tp in committed:
            high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


def test_killed_router_routes_every_event_exactly_once(ns: Settings, tmp_path: Path) -> None:
    """SIGKILL the router twice mid-stream: every event still has exactly one request on
    the lane (read_committed), none lost and none twice. Each batch of events, its
    requests and its input offsets commit in one Kafka transaction. Regression: the Faust
    router was at-least-once (a killed worker's last batch was routed again, one request
    more per event) and could commit past an event it never routed."""
    rng = random.Random(9)
    profiles = [make_profile(rng, i) for i in range(50)]
    events = [payment_event(rng, profiles[i % len(profiles)]["customer_id"], NOW)
              for i in range(6000)]
    kafka_io.publish(ns, topics.PROFILES, ((p["customer_id"], p) for p in profiles),
                     "customer_profile")
    kafka_io.publish(ns, topics.PAYMENT_DUE, ((e["customer_id"], e) for e in events),
                     "payment_due")
    for target in (1000, 3000):
        with stage(ns, ["router"], tmp_path) as router:
            wait_for(ns, topics.REQUESTS_TRANSACTIONAL, target, timeout=90)
            kill(router)
    with stage(ns, ["router"], tmp_path):
        wait_for(ns, topics.REQUESTS_TRANSACTIONAL, len(events), timeout=120)
        more = settle(ns, topics.REQUESTS_TRANSACTIONAL, idle=3.0, timeout=30)
    per_event = Counter(m.record["event_id"] for m in more)
    assert set(per_event) == {e["event_id"] for e in events}, "an event was lost"
    assert len(more) == len(events) and set(per_event.values()) == {1}, \
        f"{len(more) - len(per_event)} requests more than events"


def test_a_record_the_broker_refuses_dead_letters_its_event_and_no_other(
        ns: Settings, tmp_path: Path) -> None:
    """The transactional lane takes records of at most 1,500 bytes (the topic's
    `max.message.bytes`); two events render texts of 900 CJK characters (2.7 KB). The
    broker refuses whole produce batches, so the batches those two were in fail, their
    transactions abort and nothing of them is visible; routed again, each event of a
    refused batch goes in a batch of its own, and an event refused alone becomes a dead
    letter `produce_failed`. Every other event has exactly one request. Regression (issue 8
    item 3): the Faust router committed the offset of an event whose output was refused."""
    rules = tmp_path / "config"
    _copy_config_with_broken_template(ns.config_dir, rules,
                                      "Order {{ event.order_id }} {{ event.attributes.note }}")
    cfg = replace(ns, config_dir=rules)
    lane = cfg.topic(topics.REQUESTS_TRANSACTIONAL)
    admin = AdminClient({"bootstrap.servers": cfg.kafka_bootstrap})
    limit = ConfigResource(ResourceType.TOPIC, lane, incremental_configs=[
        ConfigEntry("max.message.bytes", "1500",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([limit])[limit].result(30)
    rng = random.Random(12)
    profiles = [make_profile(rng, i) for i in range(30)]
    events = [order_event(rng, p["customer_id"], "shipped", NOW) for p in profiles * 2]
    for e in events:
        e["attributes"] = {"note": "ok"}
    huge = [events[7], events[41]]
    for e in huge:
        e["attributes"] = {"note": "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(900))}
    with stage(cfg, ["router"], tmp_path):
        load_profiles(cfg, profiles)
        kafka_io.publish(cfg, topics.ORDER_STATUS, ((e["customer_id"], e) for e in events),
                         "order_status_changed")
        wait_for(cfg, topics.REQUESTS_TRANSACTIONAL, len(events) - len(huge), timeout=90)
        dead = wait_for(cfg, topics.DEAD_LETTERS, len(huge), timeout=60)
        lanes = settle(cfg, topics.REQUESTS_TRANSACTIONAL, idle=3.0, timeout=30)
    assert {d.record["reason"] for d in dead} == {"produce_failed"}
    assert {d.record["event_id"] for d in dead} == {e["event_id"] for e in huge}
    assert "MSG_SIZE_TOO_LARGE" in dead[0].record["error"], dead[0].record["error"]
    per_event = Counter(m.record["event_id"] for m in lanes)
    assert set(per_event) == {e["event_id"] for e in events} - {e["event_id"] for e in huge}
    assert set(per_event.values()) == {1}, "a request twice"
