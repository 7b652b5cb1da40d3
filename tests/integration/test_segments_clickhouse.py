"""Segments on a real embedded ClickHouse (chDB), checked against plain Python.

A seeded random world (3,000 customers with profile versions and deletions, messages,
receipts, clicks, conversions, replies, consent changes and orders, some rows stored
twice) goes through the sink's row functions into a fresh database; then, for every
segment of SEGMENTS (each kind of leaf, all / any / not, references), the compiled query
must return exactly the customers a direct Python reading of the same rows selects.

The last test runs the real sink on the real broker: profiles (with a tombstone) and
order events published to Kafka must land in `profiles` and `orders`, numbers hashed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from stages import stage

from connectors.clickhouse import Client, migrate
from pipeline import kafka_io, topics
from pipeline.analytics.privacy import mask, phone_hash
from pipeline.analytics.rows import (
    MAPPINGS,
    PROFILE_COLUMNS,
    deleted_profile_row,
    profile_number,
    to_row,
)
from pipeline.analytics.sink import progress
from pipeline.campaigns.segments import (
    AllOf,
    AnyOf,
    AttributeIs,
    CityIs,
    Clicked,
    Converted,
    CountryIs,
    Delivered,
    HasSegmentsTag,
    HasTag,
    InSegment,
    LocaleIs,
    NoResponse,
    Not,
    OperatorIs,
    OptedInSince,
    Ordered,
    Received,
    RegionIs,
    Segment,
    compile_segment,
    parse_segments,
    preview,
    quote,
)
from pipeline.procs import settings_env, stop
from pipeline.settings import ROOT, Settings

KEY = "segments-test-key"
DAY = 86_400_000
NOW = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC
CUSTOMERS = 3_000
SEED = 20_261_201

SEGMENTS = """
segments:
  in_russia: {description: d, where: {country: RU}}
  capitals: {description: d, where: {region: [RU-MOW, RU-SPE]}}
  kazan: {description: d, where: {city: Kazan}}
  english: {description: d, where: {locale: en}}
  big_two: {description: d, where: {operator: [MegaFon, Beeline]}}
  vip: {description: d, where: {tag: vip}}
  new_or_churn: {description: d, where: {segments: [new, churn_risk]}}
  gold: {description: d, where: {attribute: {name: tier, equals: gold}}}
  no_tier: {description: d, where: {attribute: {name: tier, equals: ""}}}
  gold_or_silver: {description: d, where: {attribute: {name: tier, in: [gold, silver]}}}
  received_30: {description: d, where: {received: {within_days: 30}}}
  delivered_14: {description: d, where: {delivered: {within_days: 14}}}
  clicked_60: {description: d, where: {clicked: {within_days: 60}}}
  converted_90: {description: d, where: {converted: {within_days: 90}}}
  converted_big: {description: d, where: {converted: {within_days: 120, min_revenue: 400}}}
  silent_30: {description: d, where: {no_response: {days: 30}}}
  opted_in_14: {description: d, where: {opted_in_since: {days: 14}}}
  ordered_30: {description: d, where: {ordered: {within_days: 30}}}
  loyal: {description: d, where: {ordered: {within_days: 365, min_count: 3,
                                            status: [paid, delivered]}}}
  engaged_vip:
    description: d
    where:
      all:
        - tag: vip
        - any: [{clicked: {within_days: 30}}, {converted: {within_days: 30}}]
  lapsed:
    description: d
    where:
      all:
        - ordered: {within_days: 365, status: paid}
        - not: {ordered: {within_days: 90}}
  gold_outside_moscow:
    description: d
    where: {all: [{segment: gold}, {not: {city: Moscow}}]}
  lapsed_or_engaged_vip:
    description: d
    where: {any: [{segment: lapsed}, {segment: engaged_vip}]}
  nested:
    description: d
    where:
      not:
        any:
          - country: KZ
          - all: [{locale: en}, {received: {within_days: 7}}]
  hostile_values:
    description: values that would break naive SQL
    where: {any: [{city: "x' OR 1=1 --"}, {attribute: {name: "t\\\\'", in: ["\\\\", "'"]}}]}
"""

# -- the world --------------------------------------------------------------------------


@dataclass
class World:
    """Every row inserted, by table, and the views plain Python needs to answer segments."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(list))
    later: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(list))
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest version
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest decision
    receipts: list[dict[str, Any]] = field(default_factory=list)
    clicks: list[dict[str, Any]] = field(default_factory=list)
    conversions: dict[str, dict[str, Any]] = field(default_factory=dict)
    inbound: list[dict[str, Any]] = field(default_factory=list)
    consent: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    phones: dict[str, str] = field(default_factory=dict)  # E.164 of the last upsert

    def add(self, schema: str, record: dict[str, Any], published: int = 0,
            later: bool = False) -> dict[str, Any]:
        """Map `record` as the sink does, keep its row for insertion; returns it as a dict."""
        table, row = to_row(schema, record, KEY, published)
        (self.later if later else self.rows)[table].append(row)
        return dict(zip(MAPPINGS[schema].columns, row, strict=True))


CITIES = {"Moscow": "RU-MOW", "Saint Petersburg": "RU-SPE", "Kazan": "RU-TA",
          "Novosibirsk": "RU-NVS"}
PREFIXES = ("903", "905", "920", "926", "950", "999", "987", "916")
TAGS = ("vip", "new", "churn_risk", "b2b")


def profile_record(rng: random.Random, n: int) -> dict[str, Any]:
    kazakh = rng.random() < 0.05
    city = "Almaty" if kazakh else rng.choice(list(CITIES))
    attributes = {"city": city}
    if rng.random() < 0.9:
        attributes["region"] = "KZ-ALA" if kazakh else CITIES[city]
    if rng.random() < 0.9:
        attributes["tier"] = rng.choice(["gold", "silver", "basic"])
    return {
        "customer_id": f"c{n:05d}",
        "phone": f"+7701{n:07d}" if kazakh else f"8{rng.choice(PREFIXES)}{n:07d}",
        "country": "KZ" if kazakh else "RU",
        "locale": "en" if rng.random() < 0.2 else "ru",
        "time_zone": None, "first_name": None, "last_name": None,
        "segments": rng.sample(TAGS, rng.randint(0, 2)),
        "attributes": attributes,
        "updated_at_ms": 0,
    }


def add_profiles(world: World, rng: random.Random) -> None:
    """Latest versions in a second insert; some older versions differ, some are deletions."""
    for n in range(CUSTOMERS):
        record = profile_record(rng, n)
        cid = record["customer_id"]
        world.phones[cid] = profile_number(record["phone"], record["country"])[0]
        roll = rng.random()
        if roll < 0.10:  # an older version that FINAL must hide
            world.add("customer_profile", profile_record(rng, n), NOW - 50 * DAY)
        if roll < 0.03:  # deleted now
            world.add("customer_profile", record, NOW - 40 * DAY)
            row = deleted_profile_row(cid, NOW - 30 * DAY)
            world.later["profiles"].append(row)
            world.profiles[cid] = dict(zip(PROFILE_COLUMNS, row, strict=True))
            continue
        if 0.03 <= roll < 0.04:  # deleted, then signed up again
            world.rows["profiles"].append(deleted_profile_row(cid, NOW - 45 * DAY))
        world.profiles[cid] = world.add("customer_profile", record, NOW - 20 * DAY, later=True)


def add_messages(world: World, rng: random.Random) -> None:
    """Messages with receipts, clicks, conversions; a few decided twice, a few after now."""
    count = 0
    for cid in world.profiles:
        for _ in range(rng.randint(0, 5)):
            count += 1
            decided = NOW - rng.randint(0, 150 * DAY) + (DAY if rng.random() < 0.02 else 0)
            status = "submitted" if rng.random() < 0.85 else rng.choice(["suppressed", "failed"])
            message = message_record(f"m{count:06d}", cid, status, decided)
            replaced = rng.random() < 0.05
            if replaced:  # an earlier, other decision, replaced by the later one
                earlier = "failed" if status == "submitted" else "submitted"
                world.add("send_outcome", {**message, "status": earlier,
                                           "decided_at_ms": decided - 1000})
            world.messages[message["message_id"]] = world.add("send_outcome", message,
                                                              later=replaced)
            if status == "submitted":
                add_reactions(world, rng, message)


def message_record(message_id: str, cid: str, status: str, decided: int) -> dict[str, Any]:
    return {
        "request_id": message_id, "message_id": message_id, "status": status,
        "reason": None if status == "submitted" else "test", "detail": None,
        "lane": "marketing", "rule_id": "promo", "template_id": "t", "variant": "a",
        "campaign_id": None, "customer_id": cid, "phone": None, "region": "RU",
        "operator": None, "gateway": "smpp", "gateway_message_ids": [], "segments": 1,
        "encoding": "UCS2", "cost": 1.0, "event_occurred_at_ms": decided,
        "decided_at_ms": decided, "attempts": 1,
    }


def add_reactions(world: World, rng: random.Random, message: dict[str, Any]) -> None:
    mid, at = message["message_id"], message["decided_at_ms"]
    roll = rng.random()
    if roll > 0.9:
        return
    state = "DELIVRD" if roll < 0.8 else "UNDELIV"
    receipt = {"message_id": mid, "gateway_message_id": f"g{mid}", "state": state,
               "error_code": None, "segment": 1, "segments": 1,
               "received_at_ms": at + rng.randint(1_000, 2 * DAY), "gateway": "smpp"}
    world.receipts.append(world.add("delivery_receipt", receipt))
    if state != "DELIVRD" or rng.random() > 0.25:
        return
    clicked = at + rng.randint(60_000, 3 * DAY)
    click = {"click_id": f"k{mid}", "code": "c", "message_id": mid, "url": "https://x",
             "clicked_at_ms": clicked, "user_agent": None}
    world.clicks.append(world.add("click", click))
    if rng.random() > 0.4:
        return
    conversion = {"conversion_id": f"v{mid}", "order_id": f"o{mid}",
                  "customer_id": message["customer_id"], "message_id": mid, "touch": "click",
                  "touch_at_ms": clicked, "revenue_minor": rng.randint(50, 700) * 100,
                  "currency": "RUB", "rule_id": None, "campaign_id": None, "variant": None,
                  "converted_at_ms": clicked + rng.randint(60_000, DAY)}
    row = world.add("conversion", conversion)
    if rng.random() < 0.1:  # stored twice: revenue must still count once
        world.add("conversion", conversion, later=True)
    world.conversions[row["conversion_id"]] = row


def add_replies_and_consent(world: World, rng: random.Random) -> None:
    """Replies and consent changes come from numbers (E.164), matched to profiles by hash."""
    for cid, phone in world.phones.items():
        if rng.random() < 0.10:
            reply = {"inbound_id": f"i{cid}", "from_number": phone, "to": "SHOP", "text": "ok",
                     "received_at_ms": NOW - rng.randint(0, 60 * DAY), "gateway": "smpp"}
            world.inbound.append(world.add("inbound_message", reply))
        if rng.random() < 0.30:
            opted = NOW - rng.randint(0, 30 * DAY)
            changes = [("marketing", "opt_in", opted), ("transactional", "opt_out", opted)]
            roll = rng.random()
            if roll < 0.2:
                changes.append(("marketing", "opt_out", opted + rng.randint(1, 10 * DAY)))
            elif roll < 0.25:
                changes.append(("marketing", "opt_out", opted))  # same time: opt-out wins
            for scope, status, at in changes:
                change = {"phone": phone, "scope": scope, "status": status, "source": "web_form",
                          "changed_at_ms": at, "customer_id": cid, "evidence": None}
                world.consent.append(world.add("consent_change", change))


def add_orders(world: World, rng: random.Random) -> None:
    count = 0
    for cid in world.profiles:
        for _ in range(rng.choice([0, 0, 1, 2, 3, 4, 5])):
            count += 1
            created = NOW - rng.randint(0, 400 * DAY)
            steps = [("created", 0)]
            if rng.random() < 0.8:
                steps += [("paid", 3_600_000)]
                if rng.random() < 0.6:
                    steps += [("shipped", DAY), ("delivered", 3 * DAY)]
            elif rng.random() < 0.5:
                steps += [("cancelled", 7_200_000)]
            for i, (status, after) in enumerate(steps):
                event = {"event_id": f"e{count:06d}-{i}", "customer_id": cid,
                         "occurred_at_ms": created + after, "source": "shop-web",
                         "attributes": {}, "order_id": f"o{count:06d}", "status": status,
                         "previous_status": steps[i - 1][0] if i else None,
                         "amount_minor": 199_900, "currency": "RUB", "tracking_url": None,
                         "pickup_point": None}
                world.orders.append(world.add("order_status_changed", event))
                if rng.random() < 0.05:  # a republished event
                    world.add("order_status_changed", event, later=True)


def build_world() -> World:
    rng = random.Random(SEED)
    world = World()
    add_profiles(world, rng)
    add_messages(world, rng)
    add_replies_and_consent(world, rng)
    add_orders(world, rng)
    return world


# -- the same segments in plain Python ---------------------------------------------------


class Reference:
    """Answers segments by reading the world's rows directly: the semantics of the module
    docstring of pipeline.campaigns.segments, written without SQL."""

    def __init__(self, world: World, segments: dict[str, Segment]) -> None:
        self.world = world
        self.segments = segments
        self.live = {cid: p for cid, p in world.profiles.items() if not p["deleted"]}

    def members(self, name: str) -> set[str]:
        where = self.segments[name].where
        return {cid for cid, profile in self.live.items() if self.holds(where, profile)}

    def holds(self, node: Any, p: dict[str, Any]) -> bool:  # noqa: C901 - one case per leaf
        cid = p["customer_id"]
        match node:
            case AllOf(all=items):
                return all(self.holds(item, p) for item in items)
            case AnyOf(any=items):
                return any(self.holds(item, p) for item in items)
            case Not(not_=inner):
                return not self.holds(inner, p)
            case CountryIs(country=v):
                return p["country"] in v
            case RegionIs(region=v):
                return p["region"] in v
            case CityIs(city=v):
                return p["city"] in v
            case LocaleIs(locale=v):
                return p["locale"] in v
            case OperatorIs(operator=v):
                return p["operator"] in v
            case HasTag(tag=v) | HasSegmentsTag(segments=v):
                return bool(set(v) & set(p["segments"]))
            case AttributeIs(attribute=test):
                values = (test.equals,) if test.equals is not None else test.in_
                return p["attributes"].get(test.name, "") in values
            case Received(received=w):
                return cid in self.received(w.within_days)
            case Delivered(delivered=w):
                return cid in self.delivered(w.within_days)
            case Clicked(clicked=w):
                return cid in self.clicked(w.within_days)
            case Converted(converted=w):
                return self.revenue(w.within_days).get(cid, -1) >= round(
                    (w.min_revenue or 0) * 100)
            case NoResponse(no_response=q):
                return (cid in self.received(q.days) and cid not in self.clicked(q.days)
                        and p["phone_hash"] not in self.repliers(q.days))
            case OptedInSince(opted_in_since=q):
                return p["phone_hash"] in self.opted_in(q.days)
            case Ordered(ordered=w):
                return len(self.orders(w.within_days, w.status).get(cid, ())) >= w.min_count
            case InSegment(segment=name):
                return self.holds(self.segments[name].where, p)
        raise AssertionError(node)

    # Behaviour is read once per window (cached), then looked up per customer.

    @staticmethod
    def within(at: int, days: int) -> bool:
        return NOW - days * DAY <= at <= NOW

    @cache  # noqa: B019 - one Reference per test
    def received(self, days: int) -> set[str]:
        return {m["customer_id"] for m in self.world.messages.values()
                if m["status"] == "submitted" and self.within(m["decided_at"], days)}

    @cache  # noqa: B019
    def delivered(self, days: int) -> set[str]:
        messages = self.world.messages
        return {messages[r["message_id"]]["customer_id"] for r in self.world.receipts
                if r["state"] == "DELIVRD" and self.within(r["received_at"], days)}

    @cache  # noqa: B019
    def clicked(self, days: int) -> set[str]:
        messages = self.world.messages
        return {messages[k["message_id"]]["customer_id"] for k in self.world.clicks
                if self.within(k["clicked_at"], days)}

    @cache  # noqa: B019
    def revenue(self, days: int) -> dict[str, int]:
        total: Counter[str] = Counter()
        for v in self.world.conversions.values():
            if self.within(v["converted_at"], days):
                total[v["customer_id"]] += v["revenue_minor"]
        return total

    @cache  # noqa: B019
    def repliers(self, days: int) -> set[str]:
        return {i["sender_hash"] for i in self.world.inbound if self.within(i["received_at"], days)}

    @cache  # noqa: B019
    def opted_in(self, days: int) -> set[str]:
        latest: dict[str, tuple[int, bool, str]] = {}
        for c in self.world.consent:
            if c["scope"] != "marketing" or c["changed_at"] > NOW:
                continue
            key = (c["changed_at"], c["status"] == "opt_out", c["status"])
            latest[c["phone_hash"]] = max(latest.get(c["phone_hash"], key), key)
        return {h for h, (at, _, status) in latest.items()
                if status == "opt_in" and self.within(at, days)}

    @cache  # noqa: B019
    def orders(self, days: int, statuses: tuple[str, ...] | None) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)
        for o in self.world.orders:
            if self.within(o["occurred_at"], days) and (not statuses or o["status"] in statuses):
                found[o["customer_id"]].add(o["order_id"])
        return found


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(chdb_client: Client) -> Client:
    return chdb_client


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture(scope="module")
def db(client: Client, world: World) -> Iterator[str]:
    """A fresh database holding the world: first inserts, then the later versions and
    copies in other parts, kept unmerged so that queries without FINAL would see both
    (one insert collapses its own duplicates: optimize_on_insert)."""
    name = f"t_seg_{uuid.uuid4().hex[:10]}"
    migrate(client, name)
    columns = {m.table: m.columns for m in MAPPINGS.values()}
    for table in columns:
        client.command(f"SYSTEM STOP MERGES {name}.{table}")
    for batch in (world.rows, world.later):
        for table, rows in batch.items():
            for start in range(0, len(rows), 20_000):
                client.insert(table, rows[start:start + 20_000], columns[table], database=name)
    yield name
    client.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def segments() -> dict[str, Segment]:
    parsed, problems = parse_segments(SEGMENTS)
    assert problems == []
    return parsed


# -- tests ------------------------------------------------------------------------------


def members_in_clickhouse(client: Client, segments: dict[str, Segment], name: str,
                          db: str) -> set[str]:
    rows = client.rows(compile_segment(segments, name, NOW, database=db))
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), "customer ids must be distinct"
    return set(ids)


@pytest.mark.parametrize("name", [n for n in parse_segments(SEGMENTS)[0] if n != "hostile_values"])
def test_compiled_segment_selects_what_python_selects(
    client: Client, db: str, world: World, segments: dict[str, Segment], name: str
) -> None:
    expected = Reference(world, segments).members(name)
    got = members_in_clickhouse(client, segments, name, db)
    assert got == expected, (f"{name}: only in ClickHouse {sorted(got - expected)[:5]}, "
                             f"only in Python {sorted(expected - got)[:5]}")
    live = sum(1 for p in world.profiles.values() if not p["deleted"])
    assert 0 < len(expected) < live, f"{name}: {len(expected)} of {live} is not a useful check"


def test_the_world_exercises_versions_deletions_and_duplicates(
    client: Client, db: str, world: World
) -> None:
    raw, final, deleted = client.rows(
        f"SELECT (SELECT count() FROM {db}.profiles), count(), countIf(deleted = 1) "
        f"FROM {db}.profiles FINAL")[0]
    assert final == CUSTOMERS and raw > CUSTOMERS
    assert deleted == sum(p["deleted"] for p in world.profiles.values()) > 50
    revenue = client.rows(f"SELECT sum(revenue_minor) FROM {db}.conversions FINAL")[0][0]
    assert revenue == sum(v["revenue_minor"] for v in world.conversions.values())


def test_hostile_values_are_only_values(
    client: Client, db: str, segments: dict[str, Segment]
) -> None:
    assert members_in_clickhouse(client, segments, "hostile_values", db) == set()
    for value in ("x' OR 1=1 --", "\\", "'", "\\'", "a\nb\tc\0", "漢字 ё"):
        assert client.rows(f"SELECT {quote(value)}") == [(value,)]


def test_preview_counts_breaks_down_and_samples_masked_members(
    client: Client, db: str, world: World, segments: dict[str, Segment]
) -> None:
    expected = Reference(world, segments).members("engaged_vip")
    result = preview(client, segments, "engaged_vip", NOW, sample=5, database=db)
    profiles = world.profiles
    assert result.size == len(expected)
    assert dict(result.by_region) == Counter(profiles[c]["region"] for c in expected)
    assert dict(result.by_operator) == Counter(profiles[c]["operator"] for c in expected)
    counts = [n for _, n in result.by_region]
    assert counts == sorted(counts, reverse=True)
    assert len(result.sample) == 5
    for customer_id, masked in result.sample:
        assert customer_id in expected
        assert masked == profiles[customer_id]["phone_masked"] and "*****" in masked
    again = preview(client, segments, "engaged_vip", NOW, sample=5, database=db)
    assert again.sample == result.sample  # a stable pick, not a new one each time
    assert preview(client, segments, "vip", NOW, sample=0, database=db).sample == []


# -- through the real sink ---------------------------------------------------------------

PROFILES = [
    ("c1", {"customer_id": "c1", "phone": "8 903 123-45-67", "country": "RU", "locale": "ru",
            "time_zone": "Europe/Moscow", "first_name": "Анна", "last_name": None,
            "segments": ["vip"], "attributes": {"city": "Moscow", "region": "RU-MOW"},
            "updated_at_ms": 0}),
    ("c2", {"customer_id": "c2", "phone": "+79261112233", "country": "RU", "locale": "en",
            "time_zone": None, "first_name": None, "last_name": None, "segments": [],
            "attributes": {"city": "Kazan"}, "updated_at_ms": 1_700_000_000_000}),
    ("c2", {"customer_id": "c2", "phone": "+79261112233", "country": "RU", "locale": "en",
            "time_zone": None, "first_name": None, "last_name": None, "segments": ["new"],
            "attributes": {"city": "Moscow", "note": "call +79261112233"},
            "updated_at_ms": 1_700_000_100_000}),
    ("c3", {"customer_id": "c3", "phone": "+79997776655", "country": "RU", "locale": "ru",
            "time_zone": None, "first_name": None, "last_name": None, "segments": [],
            "attributes": {}, "updated_at_ms": 0}),
    ("c3", None),  # deleted
]


def order_event(n: int, status: str) -> dict[str, Any]:
    return {"event_id": f"e{n}", "customer_id": "c1", "occurred_at_ms": 1_700_000_000_000 + n,
            "source": "shop-web", "attributes": {}, "order_id": "o1", "status": status,
            "previous_status": None, "amount_minor": 129_900, "currency": "RUB",
            "tracking_url": None, "pickup_point": None}


def analytics_query(ns: Settings, sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "analytics", "query", sql, "--format", "json"],
        cwd=ROOT, env=settings_env(ns), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def wait_stored(ns: Settings, proc: subprocess.Popen[bytes], at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, end = progress(ns)
        if end >= at_least and done >= end:
            return
        assert proc.poll() is None, f"sink exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"sink stored {done} of {end} records")


@pytest.mark.integration
def test_sink_stores_profiles_tombstones_and_orders(ns: Settings, tmp_path: Path) -> None:
    for key, value in PROFILES:  # one at a time: Kafka timestamps must increase
        kafka_io.publish(ns, topics.PROFILES, [(key, value)], "customer_profile")
        time.sleep(0.01)
    events = [("c1", order_event(n, status)) for n, status in enumerate(["created", "paid"])]
    kafka_io.publish(ns, topics.ORDER_STATUS, events + events[:1], "order_status_changed")
    with stage(ns, ["sink"], tmp_path) as proc:
        wait_stored(ns, proc, len(PROFILES) + 3)
        assert stop(proc) == 0

    rows = analytics_query(ns, "SELECT * FROM rassylka.profiles FINAL ORDER BY customer_id")
    assert [r["customer_id"] for r in rows] == ["c1", "c2", "c3"]
    c1, c2, c3 = rows
    for row in analytics_query(ns, "SELECT * FROM rassylka.profiles"):  # every version
        text = json.dumps(row, ensure_ascii=False)
        assert "1234567" not in text and "1112233" not in text and "7776655" not in text, row
    assert c1["phone_hash"] == phone_hash("+79031234567", ns.phone_hash_key)
    assert c1["phone_masked"] == mask("+79031234567") == "+7903*****67"
    assert (c1["region"], c1["city"], c1["operator"], c1["time_zone"]) == (
        "RU-MOW", "Moscow", "Beeline", "Europe/Moscow")
    assert c1["segments"] == ["vip"] and c1["deleted"] == 0
    assert (c2["city"], c2["segments"], c2["operator"]) == ("Moscow", ["new"], "MegaFon")
    assert c2["attributes"]["note"] == "call +7926*****33"
    assert c3["deleted"] == 1 and c3["phone_hash"] == "" and c3["published_at"] > c1["published_at"]

    orders = analytics_query(ns, "SELECT event_id, order_id, status, amount_minor "
                                 "FROM rassylka.orders FINAL ORDER BY event_id")
    assert orders == [
        {"event_id": "e0", "order_id": "o1", "status": "created", "amount_minor": 129_900},
        {"event_id": "e1", "order_id": "o1", "status": "paid", "amount_minor": 129_900},
    ]

    config = tmp_path / "config"
    config.mkdir()
    (config / "segments.yaml").write_text(
        "segments:\n  moscow:\n    description: Customers in Moscow.\n"
        "    where: {city: Moscow}\n")
    shown = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "segments", "preview", "moscow",
         "--config-dir", str(config)],
        cwd=ROOT, env=settings_env(ns), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "audience: 2 customers" in shown.stdout
    assert "+7903*****67" in shown.stdout and "+7926*****33" in shown.stdout
    assert "1234567" not in shown.stdout
