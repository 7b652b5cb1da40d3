"""Segments without a database: parsing and validation errors, SQL quoting, the shape of
the compiled query; and the sink's new rows (profiles, tombstones, orders) they read."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline import avro, topics
from pipeline.analytics.privacy import phone_hash
from pipeline.analytics.rows import (
    ORDER_COLUMNS,
    PROFILE_COLUMNS,
    deleted_profile_row,
    to_row,
)
from pipeline.analytics.sink import Sink, SinkConfig
from pipeline.campaigns.segments import (
    UnknownSegment,
    audience_sql,
    compile_segment,
    load_segments,
    parse_segments,
    quote,
    validate_segments,
)
from pipeline.errors import ConfigError
from pipeline.settings import Settings

NOW_MS = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC
LABEL = "segs.yaml"


def parse(text: str) -> tuple[dict[str, Any], list[str]]:
    return parse_segments(textwrap.dedent(text), LABEL)


def problems(text: str) -> list[str]:
    segments, found = parse(text)
    assert found, "expected problems"
    assert segments == {}
    return found


def one_problem(where_yaml: str) -> str:
    """The only problem of a file with one segment `s` whose `where` is `where_yaml`."""
    body = textwrap.indent(textwrap.dedent(where_yaml).strip(), " " * 6)
    found = problems(f"segments:\n  s:\n    description: test\n    where:\n{body}\n")
    assert len(found) == 1, found
    return found[0]


# -- parsing ----------------------------------------------------------------------------


VALID = """
segments:
  moscow:
    description: Customers in Moscow.
    where: {city: Moscow}
  active:
    description: Clicked lately, or bought twice this quarter.
    where:
      any:
        - clicked: {within_days: 30}
        - ordered: {within_days: 90, min_count: 2, status: [paid, delivered]}
  active_moscow:
    description: Active and in Moscow, not VIP.
    where:
      all:
        - segment: active
        - segment: moscow
        - not: {tag: vip}
        - attribute: {name: tier, in: [gold, silver]}
        - converted: {within_days: 30, min_revenue: 1500.50}
"""


def test_a_valid_file_loads_every_segment() -> None:
    segments, found = parse(VALID)
    assert found == []
    assert sorted(segments) == ["active", "active_moscow", "moscow"]
    assert segments["moscow"].description == "Customers in Moscow."


def test_load_and_validate_read_segments_yaml_of_a_folder(tmp_path: Path) -> None:
    assert load_segments(tmp_path) == {} and validate_segments(tmp_path) == []  # no file
    (tmp_path / "segments.yaml").write_text(VALID)
    assert sorted(load_segments(tmp_path)) == ["active", "active_moscow", "moscow"]
    (tmp_path / "segments.yaml").write_text(VALID.replace("within_days: 30}", "within_days: 0}"))
    found = validate_segments(tmp_path)
    assert len(found) == 1 and "segments.yaml: segment 'active', line 10: " in found[0]
    with pytest.raises(ConfigError) as info:
        load_segments(tmp_path)
    assert info.value.problems == found and "rassylka segments validate" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("{countyr: RU}",
         "line 4: where: unknown condition 'countyr' (did you mean 'country'?)"),
        ("{country: ru}", "line 5: where.country: 'ru' is not an ISO 3166-1 alpha-2"),
        ("{locale: no}", "where.locale: must be text or a list of texts, got False (YAML reads"),
        ("{region: []}", "where.region: must not be an empty list"),
        ("{city: Moscow, locale: ru}", "a condition has one key, this one has city, locale: "
                                       "put them under all"),
        ("{}", "where: empty condition"),
        ("all: []", "where.all: List should have at least 1 item"),
        ("all: [vip]", "where.all[0]: a condition is a mapping such as {country: RU}, got 'vip'"),
        ("{received: {within_days: 0}}", "where.received.within_days: must be at least 1, got 0"),
        ("{clicked: {within_days: 99999}}", "where.clicked.within_days: must be at most 3650"),
        ("{delivered: {within_days: 7d}}", "where.delivered.within_days: must be a whole number, "
                                           "got '7d'"),
        ("{delivered: {within_days: 2.5}}", "where.delivered.within_days: must be a whole number"),
        ("{delivered: {within_days: true}}", "where.delivered.within_days: must be a whole number"),
        ("{delivered: {}}", "where.delivered: missing key 'within_days'"),
        ("{received: {within_day: 3, within_days: 3}}",
         "where.received: unknown key 'within_day' (did you mean 'within_days'?)"),
        ("{converted: {within_days: 3, min_revenue: -1}}",
         "where.converted.min_revenue: must be at least 0"),
        ("{ordered: {within_days: 3, status: payed}}",
         "where.ordered.status: unknown order status 'payed' (did you mean 'paid'?)"),
        ("{ordered: {within_days: 3, min_count: 0}}",
         "where.ordered.min_count: must be at least 1"),
        ("{attribute: {name: tier}}", "where.attribute: give exactly one of equals or in"),
        ("{attribute: {name: tier, equals: a, in: [b]}}",
         "where.attribute: give exactly one of equals or in"),
        ("{attribute: {name: tier, equal: gold}}",
         "where.attribute: unknown key 'equal' (did you mean 'equals'?)"),
        ("not: {all: [{tag: a}, {tagg: b}]}",
         "line 5: where.not.all[1]: unknown condition 'tagg' (did you mean 'tag'?)"),
    ],
)
def test_problems_name_the_file_the_segment_the_line_and_the_key(where: str, expected: str) -> None:
    problem = one_problem(where)
    assert problem.startswith(f"{LABEL}: segment 's', line ")
    assert expected in problem


def test_a_misplaced_key_is_unknown_and_the_right_one_missing() -> None:
    found = problems("segments:\n  s:\n    description: x\n"
                     "    where: {no_response: {within_days: 3}}\n")
    assert found == [f"{LABEL}: segment 's', line 4: where.no_response: missing key 'days'",
                     f"{LABEL}: segment 's', line 4: where.no_response: unknown key 'within_days'"]


def test_unknown_keys_of_a_segment_and_of_the_file() -> None:
    found = problems("""
        segments:
          s:
            descripton: typo
            where: {tag: vip}
        segmnts: {}
    """)
    assert found == [
        f"{LABEL}: segment 's', line 3: missing key 'description'",
        f"{LABEL}: segment 's', line 4: unknown key 'descripton' (did you mean 'description'?)",
        f"{LABEL}, line 6: unknown key 'segmnts' (did you mean 'segments'?)",
    ]


def test_segment_names_must_be_simple() -> None:
    found = problems("segments:\n  'two words':\n    description: x\n    where: {tag: a}\n")
    assert found == [f"{LABEL}: segment 'two words', line 2: a segment name is letters, "
                     "digits, '_', '-' or '.', starting with a letter or digit"]


def test_yaml_errors_and_duplicate_keys_have_lines() -> None:
    assert problems("segments:\n  s: [\n") == [
        f"{LABEL}, line 3, column 1: YAML error: expected the node content, but found '<stream end>'"
    ]
    found = problems("""
        segments:
          s: {description: a, where: {tag: x}}
          s: {description: b, where: {tag: y}}
    """)
    assert found == [f"{LABEL}, line 4: duplicate key 's'"]


def test_unknown_references_and_cycles() -> None:
    found = problems("""
        segments:
          a:
            description: refers to a typo and to b
            where:
              all:
                - segment: bb
                - segment: b
          b: {description: b, where: {segment: c}}
          c: {description: c, where: {any: [{tag: x}, {not: {segment: b}}]}}
          d: {description: d, where: {segment: d}}
    """)
    assert found == [
        f"{LABEL}: segment 'a', line 7: where.all[0].segment: unknown segment 'bb' "
        "(did you mean 'b'?)",
        f"{LABEL}: segment 'b', line 9: segments refer to each other in a cycle: b → c → b",
        f"{LABEL}: segment 'd', line 11: segments refer to each other in a cycle: d → d",
    ]


def test_an_empty_file_has_no_segments() -> None:
    assert parse("") == ({}, [])
    assert parse("segments: {}") == ({}, [])


# -- quoting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("Moscow", "'Moscow'"),
        ("O'Brien", r"'O\'Brien'"),
        ("back\\slash", r"'back\\slash'"),
        ("\\'", r"'\\\''"),
        ("x'); DROP TABLE rassylka.profiles; --", r"'x\'); DROP TABLE rassylka.profiles; --'"),
        ("two\nlines\tand\r\0", r"'two\nlines\tand\r\0'"),
        ("Санкт-Петербург", "'Санкт-Петербург'"),
        ("", "''"),
    ],
)
def test_quote_escapes_quotes_backslashes_and_control_characters(value: str, literal: str) -> None:
    assert quote(value) == literal


def test_quote_takes_only_text() -> None:
    with pytest.raises(TypeError):
        quote(1)  # type: ignore[arg-type]


# -- compiling --------------------------------------------------------------------------


def segments_of(text: str) -> dict[str, Any]:
    segments, found = parse(text)
    assert found == []
    return segments


def test_compiled_query_selects_distinct_customers_of_live_profiles() -> None:
    sql = compile_segment(segments_of(VALID), "moscow", NOW_MS)
    assert sql == ("SELECT DISTINCT customer_id\nFROM rassylka.profiles FINAL\n"
                   "WHERE deleted = 0\n  AND city = 'Moscow'")
    assert compile_segment(segments_of(VALID), "moscow", NOW_MS, database="t_1").startswith(
        "SELECT DISTINCT customer_id\nFROM t_1.profiles FINAL")


def test_references_are_inlined_and_windows_end_now() -> None:
    sql = compile_segment(segments_of(VALID), "active_moscow", NOW_MS)
    assert sql.count("SELECT") == 1 + 4  # clicks → messages, orders, conversions
    assert "city = 'Moscow'" in sql and "NOT (hasAny(segments, ['vip']))" in sql
    assert "attributes['tier'] IN ('gold', 'silver')" in sql
    assert "status IN ('paid', 'delivered') GROUP BY customer_id " \
           "HAVING uniqExact(order_id) >= 2" in sql
    assert "HAVING sum(revenue_minor) >= 150050" in sql
    now = "toDateTime64('2026-05-28 20:26:40.000', 3, 'UTC')"
    thirty_days_ago = "toDateTime64('2026-04-28 20:26:40.000', 3, 'UTC')"
    assert f"clicked_at >= {thirty_days_ago} AND clicked_at <= {now}" in sql
    assert sql.count("(") == sql.count(")")


def test_yaml_values_reach_sql_only_quoted() -> None:
    hostile = "x') OR 1=1 OR (city = 'y"
    segments = segments_of(f"""
        segments:
          s:
            description: hostile values
            where:
              all:
                - city: "{hostile}"
                - attribute: {{name: "a']", equals: "b\\\\"}}
    """)
    sql = compile_segment(segments, "s", NOW_MS)
    assert f"city = {quote(hostile)}" in sql
    assert "attributes['a\\']'] = 'b\\\\'" in sql
    assert "OR 1=1 OR (city = 'y'" not in sql


def test_every_leaf_kind_compiles() -> None:
    segments = segments_of("""
        segments:
          s:
            description: every leaf
            where:
              any:
                - country: [RU, KZ]
                - region: RU-MOW
                - city: Kazan
                - locale: en
                - operator: [MTS, Beeline]
                - tag: vip
                - segments: [new, churn]
                - attribute: {name: tier, equals: gold}
                - received: {within_days: 1}
                - delivered: {within_days: 2}
                - clicked: {within_days: 3}
                - converted: {within_days: 4}
                - no_response: {days: 5}
                - opted_in_since: {days: 6}
                - ordered: {within_days: 7}
    """)
    sql = compile_segment(segments, "s", NOW_MS)
    for part in ("country IN ('RU', 'KZ')", "region = 'RU-MOW'", "locale = 'en'",
                 "operator IN ('MTS', 'Beeline')", "hasAny(segments, ['new', 'churn'])",
                 "FROM rassylka.messages FINAL WHERE status = 'submitted'",
                 "FROM rassylka.receipts WHERE state = 'DELIVRD'",
                 "phone_hash NOT IN (SELECT sender_hash FROM rassylka.inbound",
                 "HAVING argMax(status, (changed_at, status = 'opt_out')) = 'opt_in'",
                 "FROM rassylka.orders WHERE occurred_at >= "):
        assert part in sql, part
    assert sql.count("\n    OR ") == 14


def test_unknown_names_cycles_and_bad_databases_are_refused() -> None:
    segments = segments_of(VALID)
    with pytest.raises(UnknownSegment, match=r"no segment 'activ' \(did you mean 'active'\?\)"):
        compile_segment(segments, "activ", NOW_MS)
    with pytest.raises(ValueError, match="invalid database"):
        compile_segment(segments, "moscow", NOW_MS, database="x; DROP")
    # load_segments refuses cycles; segments built in code are checked while compiling
    from pipeline.campaigns.segments import InSegment, Segment

    looped = {"a": Segment(description="a", where=InSegment(segment="b")),
              "b": Segment(description="b", where=InSegment(segment="a"))}
    with pytest.raises(ConfigError, match="cycle: a → b → a"):
        compile_segment(looped, "a", NOW_MS)


def test_audience_sql_selects_the_given_columns() -> None:
    sql = audience_sql(segments_of(VALID), "moscow", NOW_MS, "region, count()")
    assert sql.startswith("SELECT region, count()\nFROM rassylka.profiles FINAL\n")


# -- profile and order rows (what segments read) ---------------------------------------

KEY = "unit-key"
PROFILE = {
    "customer_id": "c1", "phone": "8 (903) 123-45-67", "country": "RU", "locale": "ru",
    "time_zone": None, "first_name": "Анна", "last_name": None, "segments": ["vip"],
    "attributes": {"city": "Moscow", "region": "RU-MOW", "tier": "gold"},
    "updated_at_ms": 0,
}
ORDER = {
    "event_id": "e1", "customer_id": "c1", "occurred_at_ms": 5, "source": "shop-web",
    "attributes": {}, "order_id": "o1", "status": "paid", "previous_status": None,
    "amount_minor": 129_900, "currency": "RUB", "tracking_url": None, "pickup_point": None,
}


def test_profile_rows_hash_the_e164_number_and_take_region_and_city_from_attributes() -> None:
    table, row = to_row("customer_profile", PROFILE, KEY, 1_000)
    profile = dict(zip(PROFILE_COLUMNS, row, strict=True))
    assert table == "profiles"
    assert profile["phone_hash"] == phone_hash("+79031234567", KEY)  # as messages hash it
    assert profile["phone_masked"] == "+7903*****67"
    assert (profile["region"], profile["city"], profile["operator"]) == ("RU-MOW", "Moscow",
                                                                          "Beeline")
    assert profile["time_zone"] == "" and profile["segments"] == ["vip"]
    assert profile["deleted"] == 0 and profile["published_at"] == 1_000
    assert profile["updated_at"] == 1_000  # no updated_at_ms: the Kafka time
    assert not any("1234567" in str(v) for v in row)
    assert to_row("customer_profile", {**PROFILE, "updated_at_ms": 7}, KEY, 1_000)[1][-2] == 7


def test_unreadable_numbers_are_still_hashed_never_stored_in_clear() -> None:
    row = dict(zip(PROFILE_COLUMNS, to_row("customer_profile", {**PROFILE, "phone": "12345678"},
                                           KEY, 1)[1], strict=True))
    assert row["phone_hash"] == phone_hash("12345678", KEY) and row["operator"] == ""
    assert "12345678" not in str(row)


def test_a_tombstone_is_a_deleted_row_and_orders_keep_their_fields() -> None:
    deleted = dict(zip(PROFILE_COLUMNS, deleted_profile_row("c1", 9), strict=True))
    assert deleted["deleted"] == 1 and deleted["published_at"] == 9 and deleted["phone_hash"] == ""
    table, row = to_row("order_status_changed", ORDER, KEY)
    order = dict(zip(ORDER_COLUMNS, row, strict=True))
    assert table == "orders"
    assert order == {"event_id": "e1", "order_id": "o1", "customer_id": "c1", "status": "paid",
                     "previous_status": "", "amount_minor": 129_900, "currency": "RUB",
                     "source": "shop-web", "occurred_at": 5}


class Msg:
    """A consumed record, with the Kafka timestamp the sink versions profiles by."""

    def __init__(self, topic: str, offset: int, value: bytes | None, key: bytes | None,
                 ts: int) -> None:
        self._topic, self._offset, self._value, self._key, self._ts = topic, offset, value, key, ts

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts  # TIMESTAMP_CREATE_TIME


def test_sink_stores_profile_tombstones_as_deleted_and_skips_consent_tombstones() -> None:
    settings = Settings(topic_prefix="u.", app_id="u", phone_hash_key=KEY)
    profiles = settings.topic(topics.PROFILES)
    sink = Sink(settings, consumer=None, producer=None, writers={},  # type: ignore[arg-type]
                config=SinkConfig(), clock=lambda: 0.0)
    sink.process([
        Msg(profiles, 0, avro.encode("customer_profile", PROFILE), b"c1", 1_000),
        Msg(profiles, 1, None, b"c1", 2_000),
        Msg(settings.topic(topics.CONSENT), 0, None, b"+79031234567|marketing", 3_000),
        Msg(settings.topic(topics.ORDER_STATUS), 0, avro.encode("order_status_changed", ORDER),
            b"c1", 4_000),
    ])
    batch = sink.buffer.drain()
    assert [row[-1] for row in batch.rows["profiles"]] == [1_000, 2_000]  # published_at
    assert [row[PROFILE_COLUMNS.index("deleted")] for row in batch.rows["profiles"]] == [0, 1]
    assert [row[0] for row in batch.rows["orders"]] == ["e1"]
    assert sink.stats.tombstones == 2 and sink.stats.dead_letters == 0
    assert len(batch.offsets) == 3  # the consent tombstone still advances its offset
