"""Poison input at volume into the router and the sender: workers live, bad input is answered.

Every bad input ends dead-lettered (with its reason and original bytes) or rejected (with
its reason); template syntax inside event fields is printed, never evaluated; every good
input still goes out, once. A hostile template (one that would stall the router, build a
huge text or print Python internals) costs only its own events, each dead-lettered with
the limit it hit, and the router keeps routing and answers SIGTERM.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, TopicPartition
from sendkit import NOW, make_request, outcomes, phone, sender, simulator
from stages import profiles_read, settle, stage, wait_for

from pipeline import avro, kafka_io, topics
from pipeline.procs import stop
from pipeline.rules.loader import validate
from pipeline.samples import make_profile, order_event
from pipeline.settings import Settings

HUGE = 900_000  # bytes: under the broker's 1 MB message limit, far over any SMS
INJECTIONS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for i in range(3) %}x{% endfor %}",
    "{{ 7*7 }}",
    "{{ config }}{{ self }}",
    "{% raw %}{{ cycler.__init__.__globals__.os }}{% endraw %}",
]
# (phone as typed, reason the sender must give; None = a valid number, it goes out)
PHONES: list[tuple[str, str | None]] = [
    ("", "invalid_number"), (" ", "invalid_number"), ("abc", "invalid_number"),
    ("+", "invalid_number"), ("++", "invalid_number"), ("0", "invalid_number"),
    ("+7916123", "invalid_number"), ("+791612345678901234", "invalid_number"),
    ("+7-916-45-67", "invalid_number"), ("\x00\x01\x02", "invalid_number"),
    ("9" * 5000, "invalid_number"), ("+0000000000", "invalid_number"),
    ("NaN", "invalid_number"), ("-79161234567", None), ("1e10", "invalid_number"),
    ("+74951234567", "not_mobile"), ("+12025550123", "country_not_allowed"),
    ("8 (916) 555-01-23", None), ("+7 916 555 01 24", None), ("89165550125", None),
]
GARBAGE = [b"", b"\x00", b"garbage bytes", b"\xc3\x01" + bytes(8), b"\xc3\x01" + b"\xff" * 8 + b"x",
           bytes(range(256)), b"{\"json\": true}"]


def garbage(rng: random.Random, n: int) -> list[bytes]:
    """`n` undecodable values: fixed shapes, random bytes, truncated records, one huge blob."""
    sample = avro.encode("order_status_changed",
                         order_event(rng, "cust-x", "shipped", NOW()))
    out = list(GARBAGE) + [sample[:12], sample[:-3], rng.randbytes(HUGE)]
    while len(out) < n:
        out.append(rng.randbytes(rng.randrange(1, 300)))
    return out


def assert_dead_lettered(dead: list[Any], sent: list[tuple[bytes | None, bytes | None, str]],
                         stage_name: str) -> None:
    """Each (key, value, reason) sent shows up once as a dead letter of `stage_name`."""
    mine = [m.record for m in dead if m.record["stage"] == stage_name]
    assert len(mine) == len(sent), f"{len(mine)} dead letters for {len(sent)} bad inputs"
    left = Counter((r["key"], r["value"] or b"", r["reason"]) for r in mine)
    for key, value, reason in sent:
        assert left[(key, value or b"", reason)] > 0, (key, reason, (value or b"")[:40])
        left[(key, value or b"", reason)] -= 1
    assert all(r["error"] for r in mine)


def test_poison_into_the_router(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(5)
    good = [make_profile(rng, i) | {"phone": phone(100_000 + i)} for i in range(80)]
    odd_phone = [make_profile(rng, 1000 + i) | {"phone": p} for i, (p, _) in enumerate(PHONES)]
    odd_name = [make_profile(rng, 2000 + i, locale="ru") | {"phone": phone(102_000 + i), "first_name": s}
                for i, s in enumerate(INJECTIONS)]
    profiles = good + odd_phone + odd_name

    def shipped(profile: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return order_event(rng, profile["customer_id"], "shipped", NOW()) | {"tracking_url": None} | fields

    good_events = [shipped(p) for p in good]
    odd_events = ([shipped(p) for p in odd_phone] + [shipped(p) for p in odd_name]
                  + [shipped(good[i], order_id=s) for i, s in enumerate(INJECTIONS)])
    # A 900 KB order number would make a 900 KB SMS text: the render's size limit stops it.
    huge_event = shipped(good[10], order_id="9" * HUGE)
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k%d" % i, v, "undecodable") for i, v in enumerate(garbage(rng, 120))]
    bad += [(b"wrong", avro.encode("inbound_message", {
        "inbound_id": "i", "from_number": "+7", "to": "x", "text": "t", "received_at_ms": 1}),
        "undecodable")]
    bad += [(b"tomb", None, "undecodable")]
    bad += [(b"cust-nobody", avro.encode("order_status_changed", shipped(good[0], customer_id="cust-nobody")),
             "unknown_customer")]
    for fields in ({"event_id": ""}, {"customer_id": ""}, {"occurred_at_ms": 0},
                   {"occurred_at_ms": -(2**62)}):
        bad.append((b"inv", avro.encode("order_status_changed", shipped(good[1], **fields)),
                    "invalid_event"))
    bad.append((huge_event["customer_id"].encode(),
                avro.encode("order_status_changed", huge_event), "render_too_large"))
    wanted_requests = len(good_events) + len(odd_events)
    with simulator(tmp_path) as sim, stage(ns, ["router"], tmp_path) as router, \
            sender(ns, sim, tmp_path) as snd:
        kafka_io.publish(ns, topics.PROFILES, ((p["customer_id"], p) for p in profiles),
                         "customer_profile")
        profiles_read(ns)
        mixed: list[tuple[bytes | None, bytes | None]] = [(k, v) for k, v, _ in bad]
        mixed += [(e["customer_id"].encode(), avro.encode("order_status_changed", e))
                  for e in good_events + odd_events]
        rng.shuffle(mixed)
        kafka_io.publish(ns, topics.ORDER_STATUS, mixed)
        dead = wait_for(ns, topics.DEAD_LETTERS, len(bad), timeout=60)
        requests = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, wanted_requests, timeout=60)
        got = outcomes(ns, wanted_requests, timeout=60)
        assert router.poll() is None and snd.poll() is None, "workers must survive poison"
        dead = settle(ns, topics.DEAD_LETTERS, idle=1.0)
        submits = sim.submits()
    assert_dead_lettered(dead, bad, "router")
    assert len(requests) == wanted_requests
    by_event = {m.record["event_id"]: m.record for m in requests}
    for text in INJECTIONS:  # printed as typed: nothing evaluated
        hits = [r for r in by_event.values() if text in r["text"]]
        assert len(hits) == 2, (text, [r["text"] for r in by_event.values() if "{" in r["text"]])
    assert not any("<class" in r["text"] or "subclasses" in r["text"] and "__" not in r["text"]
                   for r in by_event.values())
    per_number = Counter(s["destination"] for s in submits if s["status"] == 0)
    for event in good_events:
        request = by_event[event["event_id"]]
        assert got[request["request_id"]]["status"] == "submitted", got[request["request_id"]]
        assert per_number[request["phone"][1:]] == 1
    for profile, (typed, reason) in zip(odd_phone, PHONES, strict=True):
        event = next(e for e in odd_events if e["customer_id"] == profile["customer_id"])
        outcome = got[by_event[event["event_id"]]["request_id"]]
        if reason is None:
            assert outcome["status"] == "submitted", (typed, outcome)
        else:
            assert (outcome["status"], outcome["reason"]) == ("rejected", reason), (typed, outcome)
    assert huge_event["event_id"] not in by_event
    assert max(per_number.values()) == 1


def test_poison_into_the_sender(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(6)
    good = [make_request(phone=phone(110_000 + i), text=f"Ваш код {i}") for i in range(150)]
    odd: list[tuple[dict[str, Any], tuple[str, str | None]]] = []
    for i, (typed, reason) in enumerate(PHONES):
        want = ("rejected", reason) if reason else ("submitted", None)
        odd.append((make_request(phone=typed, text=f"Номер {i}"), want))
    for i, text in enumerate(INJECTIONS):
        odd.append((make_request(phone=phone(111_000 + i), text=f"Заказ {text} готов"),
                    ("rejected", "unrendered_placeholder")))
    odd += [
        (make_request(phone=phone(112_000), text="Ж" * (HUGE // 2)), ("rejected", "too_many_segments")),
        (make_request(phone=phone(112_001), expires_at_ms=0), ("expired", "ttl_expired")),
        (make_request(phone=phone(112_002), expires_at_ms=-(2**63)), ("expired", "ttl_expired")),
        (make_request(phone=phone(112_003), send_at_ms=2**62), ("expired", "expires_during_hold")),
        (make_request(phone=phone(112_004), priority=-(2**31)), ("submitted", None)),
        (make_request(phone=phone(112_005), priority=2**31 - 1), ("submitted", None)),
        (make_request(phone=phone(112_006), dedup_window_s=0), ("submitted", None)),
        (make_request(phone=phone(112_007), dedup_window_s=-(2**31)), ("submitted", None)),
        (make_request(phone=phone(112_008), created_at_ms=-1, event_occurred_at_ms=2**62),
         ("submitted", None)),
        (make_request(phone=phone(112_009), time_zone="Not/AZone"), ("submitted", None)),
        (make_request(phone=phone(112_010), country="ZZZ"), ("submitted", None)),
        (make_request(phone="9165550199", country=""), ("submitted", None)),
        (make_request(phone=phone(112_011), sender_id=""), ("rejected", "unregistered_sender_id")),
    ]
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k%d" % i, v, "undecodable") for i, v in enumerate(garbage(rng, 150))]
    bad += [(b"wrong", avro.encode("send_outcome", {
        "request_id": "r", "message_id": "m", "status": "submitted", "reason": None,
        "detail": None, "lane": "transactional", "rule_id": "x", "template_id": "x",
        "variant": "x", "campaign_id": None, "customer_id": "c", "phone": None, "region": None,
        "operator": None, "gateway": None, "gateway_message_ids": [], "segments": 0,
        "encoding": None, "cost": 0.0, "event_occurred_at_ms": 1, "decided_at_ms": 1,
        "attempts": 1}), "undecodable"), (b"tomb", None, "undecodable")]
    bad += [(b"lane", avro.encode("notification_request", make_request(phone=phone(113_000), lane="sms")),
             "invalid_request"),
            (b"rid", avro.encode("notification_request", make_request(phone=phone(113_001), request_id="")),
             "invalid_request")]
    # the lane topics both get poison; the valid requests go to their own lane's topic
    mixed: list[tuple[bytes | None, bytes | None]] = [(k, v) for k, v, _ in bad[len(bad) // 2:]]
    mixed += [(r["customer_id"].encode(), avro.encode("notification_request", r))
              for r in good + [r for r, _ in odd]]
    rng.shuffle(mixed)
    requests = good + [r for r, _ in odd]
    with simulator(tmp_path) as sim, sender(ns, sim, tmp_path) as snd:
        kafka_io.publish(ns, topics.REQUESTS_TRANSACTIONAL, mixed)
        kafka_io.publish(ns, topics.REQUESTS_MARKETING, [(k, v) for k, v, _ in bad[: len(bad) // 2]])
        got = outcomes(ns, len(requests), timeout=60)
        dead = wait_for(ns, topics.DEAD_LETTERS, len(bad), timeout=30)
        time.sleep(1.0)
        assert snd.poll() is None, "the sender must survive poison"
        dead = settle(ns, topics.DEAD_LETTERS, idle=1.0)
        submits = sim.submits()
    assert_dead_lettered(dead, bad, "sender")
    assert set(got) == {r["request_id"] for r in requests}, "no outcome for a dead letter"
    per_number = Counter(s["destination"] for s in submits if s["status"] == 0)
    for request in good:
        assert got[request["request_id"]]["status"] == "submitted"
        assert per_number[request["phone"][1:]] == 1
    for request, (status, reason) in odd:
        outcome = got[request["request_id"]]
        assert (outcome["status"], outcome["reason"]) == (status, reason), (request["phone"][:30], outcome)
    assert max(per_number.values()) == 1
    assert len(per_number) == sum(1 for o in got.values() if o["status"] == "submitted")


def test_letters_in_a_number_are_not_dialled_as_keypad_digits() -> None:
    from pipeline.sender.numbers import normalise

    got = normalise("+7-916-ABC-45-67", "RU", frozenset({"RU"}))
    assert getattr(got, "reason", None) == "invalid_number", got


HOSTILE_TEMPLATE = (
    "{% set mode = event.attributes.get('mode', '') %}"
    "{% set blob = event.attributes.get('blob', '') %}"
    # slow: two loops over a 20,000-character attribute, 4e8 steps (minutes) without a limit
    "{% if mode == 'slow' %}{% for a in blob %}{% for b in blob %}{% endfor %}{% endfor %}."
    "{% elif mode == 'big' %}{{ blob }}"  # a 20,000-character SMS
    "{% elif mode == 'leak' %}{{ event.get('attributes') }}"  # a Python dict repr as an SMS
    "{% else %}Заказ {{ event.order_id }} отправлен{% endif %}"
)
EXPECTED = {"slow": "render_timeout", "big": "render_too_large", "leak": "render_unsafe"}


def _config_with_hostile_template(src: Path, dst: Path) -> None:
    """A config whose order_shipped template passes `rules validate` but turns hostile on
    events whose attributes ask it to."""
    shutil.copytree(src, dst)
    path = dst / "templates" / "order_shipped.yaml"
    template = yaml.safe_load(path.read_text(encoding="utf-8"))
    template["locales"] = {"ru": HOSTILE_TEMPLATE, "en": HOSTILE_TEMPLATE}
    path.write_text(yaml.safe_dump(template, allow_unicode=True), encoding="utf-8")


def _outcomes(cfg: Settings, event_ids: set[str], timeout: float = 45.0) -> dict[str, set[Any]]:
    """Each event's distinct visible outcomes, read until every one of `event_ids` has one
    (bounded by `timeout`): ('request', request_id) or ('dead_letter', reason)."""
    found: dict[str, set[Any]] = {}
    deadline = time.monotonic() + timeout

    def note(msgs: list[Any], kind: str) -> None:
        for m in msgs:
            key = m.record["request_id"] if kind == "request" else m.record["reason"]
            found.setdefault(m.record["event_id"], set()).add((kind, key))

    while time.monotonic() < deadline:
        found.clear()
        note(settle(cfg, topics.REQUESTS_TRANSACTIONAL, idle=0.5, timeout=10), "request")
        note(settle(cfg, topics.DEAD_LETTERS, idle=0.5, timeout=10), "dead_letter")
        if event_ids <= set(found):
            break
    return found


def test_hostile_templates_cost_only_their_own_events(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=tmp_path / "config")
    _config_with_hostile_template(ns.config_dir, cfg.config_dir)
    assert validate(cfg.config_dir) == [], "the hostile template must pass validation"
    rng = random.Random(7)
    profiles = [make_profile(rng, i) for i in range(20)]

    def events(modes: list[str]) -> list[dict[str, Any]]:
        out = []
        for i, mode in enumerate(modes):
            event = order_event(rng, profiles[i % len(profiles)]["customer_id"], "shipped", NOW())
            if mode != "good":
                event["attributes"] = {"mode": mode, "blob": "x" * 20_000}
            out.append(event)
        return out

    def publish(batch: list[dict[str, Any]]) -> None:
        kafka_io.publish(cfg, topics.ORDER_STATUS, ((e["customer_id"], e) for e in batch),
                         "order_status_changed")

    first = events(["good"] * 30 + ["slow"] * 6 + ["big"] * 4 + ["leak"] * 4)
    rng.shuffle(first)
    second = events(["slow"] * 40 + ["good"] * 10)
    with stage(cfg, ["router"], tmp_path) as router:
        kafka_io.publish(cfg, topics.PROFILES, ((p["customer_id"], p) for p in profiles),
                         "customer_profile")
        profiles_read(cfg)
        publish(first)
        found = _outcomes(cfg, {e["event_id"] for e in first}, timeout=30)
        assert router.poll() is None, "the router must survive hostile templates"
        # Busy with 40 renders that each run to their time limit, it still stops on SIGTERM.
        publish(second)
        wait_for(cfg, topics.DEAD_LETTERS, 15, timeout=30)
        asked = time.monotonic()
        code = stop(router, timeout=20)
        took = time.monotonic() - asked
    assert code in (0, -15) and took < 15, f"SIGTERM answered in {took:.1f} s (exit {code})"
    for event in first:
        mode = event["attributes"].get("mode", "good")
        want = {("dead_letter", EXPECTED[mode])} if mode in EXPECTED else None
        got = found.get(event["event_id"], set())
        if want is None:
            assert len(got) == 1 and next(iter(got))[0] == "request", (mode, got)
        else:
            assert got == want, (mode, got)
    # Stopped mid-work, the router committed no offset past an event it had not finished:
    # every event below the committed offsets has its outcome (the rest are routed by
    # the next router to read the partitions).
    committed = _committed(cfg, f"{cfg.app_id}-router", topics.ORDER_STATUS)
    below = [m for m in wait_for(cfg, topics.ORDER_STATUS, len(first) + len(second))
             if m.offset < committed.get(m.partition, 0)]
    assert len(below) >= len(first)
    found = _outcomes(cfg, {m.record["event_id"] for m in below}, timeout=30)
    for m in below:
        mode = m.record["attributes"].get("mode", "good")
        got = found.get(m.record["event_id"], set())
        assert got, f"offset {m.partition}@{m.offset} ({mode}) committed without an outcome"
        if mode == "slow":
            assert got == {("dead_letter", "render_timeout")}, got


def _committed(cfg: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of catalog topic `topic` (absent: none)."""
    name = cfg.topic(topic)
    consumer = Consumer({"bootstrap.servers": cfg.kafka_bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(name, timeout=10).topics[name].partitions
        done = consumer.committed([TopicPartition(name, p) for p in parts], timeout=10)
        return {tp.partition: tp.offset for tp in done if tp.offset >= 0}
    finally:
        consumer.close()
