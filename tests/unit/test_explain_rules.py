"""`rules explain` and `send-test`, pure parts: why a rule does not match, texts, sender checks."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.router.worker import RouterStats
from pipeline.rules.explain import (
    UNKNOWN,
    event_type_of,
    explain,
    load_event,
    sender_checks,
)
from pipeline.rules.loader import load_ruleset
from pipeline.rules.matching import Miss, explain_match, matching_rules
from pipeline.rules.model import Condition, CustomerFilter
from pipeline.samples import make_profile, order_event, payment_event, promotion_event
from pipeline.sender.consent import ConsentState, apply_change
from pipeline.sender.setup import load_policy
from pipeline.sendtest import TEST_MARK, build_test, is_test, sample_event

NOON_MSK = int(datetime.fromisoformat("2026-12-01T12:00+03:00").timestamp() * 1000)
NIGHT_MSK = int(datetime.fromisoformat("2026-12-01T23:30+03:00").timestamp() * 1000)


@pytest.fixture(scope="module")
def ruleset(fixture_config: Path):
    return load_ruleset(fixture_config)


@pytest.fixture(scope="module")
def policy(fixture_config: Path):
    return load_policy(fixture_config)[0]


def profile(**overrides):
    base = {"customer_id": "c-1", "phone": "+79161234567", "country": "RU", "locale": "ru",
            "time_zone": "Europe/Moscow", "first_name": "Анна", "last_name": None,
            "segments": [], "attributes": {}, "updated_at_ms": 1}
    return base | overrides


def opted_in() -> ConsentState:
    return apply_change(None, {"phone": "+79161234567", "scope": "marketing", "status": "opt_in",
                               "source": "web_form", "changed_at_ms": 1})


def by_id(result):
    return {r.rule_id: r for r in result.rules}


# ------------------------------------------------------------------- why not
def test_explain_match_agrees_with_matching_rules(ruleset):
    rng = random.Random(5)
    statuses = ["created", "paid", "shipped", "ready_for_pickup", "delivered", "cancelled"]
    for i in range(300):
        p = make_profile(rng, i)
        p["segments"] = rng.sample(["vip", "no_marketing", "new"], k=rng.randint(0, 2))
        kind, event = rng.choice([
            ("order_status_changed", order_event(rng, p["customer_id"], rng.choice(statuses), 1)),
            ("payment_due", dict(payment_event(rng, p["customer_id"], 1),
                                 amount_minor=rng.choice([0, 100]))),
            ("promotion", dict(promotion_event(rng, p["customer_id"], 1, "bf"),
                               discount_percent=rng.choice([0, 10]))),
        ])
        if i % 5 == 0:
            event["source"] = "pos"
        picked = {r.id for r in matching_rules(ruleset, kind, event, p)}
        explained = {r.id for r in ruleset.rules if explain_match(r, kind, event, p) is None}
        assert picked == explained, (kind, event, p)


def test_a_when_condition_names_the_value_the_event_has(ruleset, policy):
    event = order_event(random.Random(1), "c-1", "created", 1)
    rules = by_id(explain(ruleset, "order_status_changed", event, profile(), policy, NOON_MSK))
    shipped = rules["order_shipped"]
    assert not shipped.matched and shipped.miss == "when"
    assert shipped.why == 'when: status eq "shipped"; the event has "created"'
    assert rules["order_created"].matched
    assert rules["payment_due_reminder"].why == "listens to payment_due events"
    assert rules["payment_due_reminder"].texts == ()  # another event type: not rendered


def test_a_missing_field_and_an_exists_condition(ruleset, policy):
    event = order_event(random.Random(1), "c-1", "ready_for_pickup", 1) | {"pickup_point": None}
    rule = by_id(explain(ruleset, "order_status_changed", event, profile(), policy,
                         NOON_MSK))["order_ready_for_pickup"]
    assert rule.why == "when: pickup_point exists true; the event has null"
    # A rule that does not match is never rendered by the router: its render error is no
    # dead letter, only a note on the locale.
    assert rule.route_error is None


def test_customer_filters_name_the_part_and_the_customer_data(ruleset, policy):
    event = promotion_event(random.Random(1), "c-1", 1, "bf")
    rule = by_id(explain(ruleset, "promotion", event, profile(segments=["vip", "no_marketing"]),
                         policy, NOON_MSK))["promotion_discount"]
    assert rule.miss == "customer"
    assert rule.why == "customer: segments_none ['no_marketing']; the customer is in ['no_marketing']"


@pytest.mark.parametrize("flt, prof, expected", [
    (CustomerFilter(segments_any=("vip",)), profile(segments=["new"]),
     "customer: segments_any ['vip']; the customer is in ['new']"),
    (CustomerFilter(locale_in=("en",)), profile(), "customer: locale_in ['en']; the customer's locale is 'ru'"),
    (CustomerFilter(attributes=(Condition("tier", "eq", "gold"),)), profile(attributes={"tier": "basic"}),
     'customer: attributes.tier eq "gold"; the customer has "basic"'),
    (CustomerFilter(attributes=(Condition("tier", "eq", "gold"),)), profile(),
     'customer: attributes.tier eq "gold"; the customer has <missing>'),
])
def test_every_customer_filter_part(ruleset, flt, prof, expected):
    from dataclasses import replace

    from pipeline.rules.explain import describe_miss

    rule = replace(ruleset.rule("order_shipped"), customer=flt)
    event = order_event(random.Random(1), "c-1", "shipped", 1)
    miss = explain_match(rule, "order_status_changed", event, prof)
    assert isinstance(miss, Miss) and miss.part == "customer"
    assert describe_miss(rule, miss, event, prof) == expected


def test_a_campaign_event_is_for_its_rule_only(ruleset):
    event = promotion_event(random.Random(1), "c-1", 1, "bf")
    event["attributes"] = {"campaign_rule": "some_other_rule"}
    miss = explain_match(ruleset.rule("promotion_discount"), "promotion", event, profile())
    assert miss == Miss("campaign", "some_other_rule")


# ---------------------------------------------------------- texts and sender
def test_a_matching_rule_shows_every_locale_with_size_and_cost(ruleset, policy):
    event = order_event(random.Random(1), "c-1", "shipped", 1)
    rule = by_id(explain(ruleset, "order_status_changed", event, profile(), policy,
                         NOON_MSK, consent=None))["order_shipped"]
    assert rule.variant == "default" and rule.template_id == "order_shipped"
    texts = {t.locale: t for t in rule.texts}
    assert set(texts) == {"ru", "en"}
    assert texts["ru"].chosen and not texts["en"].chosen
    assert texts["ru"].encoding == "UCS2" and texts["ru"].segments >= 1
    assert texts["ru"].cost == texts["ru"].segments * policy.content.cost_per_segment
    assert event["order_id"] in texts["en"].text and "Анна" in texts["ru"].text
    assert "https://s.rsl.ink/c/" in texts["ru"].text  # links shortened as the router does
    assert rule.decision.startswith("send to +79161234567")
    checks = {c.name: c for c in rule.checks}
    assert checks["consent"].verdict == "pass"
    assert checks["quiet hours"].detail == "no quiet hours on the transactional lane"
    assert checks["dedup"].verdict == "not checked"


def test_marketing_at_night_shows_local_time_and_hold(ruleset, policy):
    event = promotion_event(random.Random(1), "c-1", 1, "bf")
    rule = by_id(explain(ruleset, "promotion", event, profile(), policy, NIGHT_MSK,
                         consent=opted_in()))["promotion_discount"]
    assert rule.matched and rule.variant in ("a", "b")
    assert rule.variant_basis.startswith("stable per customer")
    quiet = {c.name: c for c in rule.checks}["quiet hours"]
    assert quiet.verdict == "hold" and quiet.reason == "quiet_hours"
    assert "Europe/Moscow 23:30" in quiet.detail and "2026-12-02 09:00" in quiet.detail
    assert {c.name: c for c in rule.checks}["caps"].verdict == "not checked"
    assert rule.decision.startswith("hold (quiet_hours)")


def test_marketing_without_consent_or_unknown_consent(ruleset, policy):
    event = promotion_event(random.Random(1), "c-1", 1, "bf")
    none = by_id(explain(ruleset, "promotion", event, profile(), policy, NOON_MSK,
                         consent=None))["promotion_discount"]
    assert none.decision.startswith("suppressed no_marketing_consent")
    unknown = by_id(explain(ruleset, "promotion", event, profile(), policy, NOON_MSK,
                            consent=UNKNOWN))["promotion_discount"]
    assert {c.name: c for c in unknown.checks}["consent"].verdict == "unknown"


def test_a_bad_number_is_rejected_before_consent(ruleset, policy):
    event = order_event(random.Random(1), "c-1", "shipped", 1)
    rule = by_id(explain(ruleset, "order_status_changed", event, profile(phone="+74951234567"),
                         policy, NOON_MSK))["order_shipped"]
    assert rule.decision.startswith("rejected not_mobile")
    assert {c.name: c for c in rule.checks}["number"].reason == "not_mobile"


def test_no_match_says_what_the_router_counts(ruleset, policy):
    event = order_event(random.Random(1), "c-1", "returned", 1)
    result = explain(ruleset, "order_status_changed", event, profile(), policy, NOON_MSK)
    assert result.matched == []
    assert any("no_rule:order_status_changed" in note for note in result.notes)
    json.dumps(result.to_dict(), ensure_ascii=False)  # --format json


# ------------------------------------------------------------------- inputs
def test_event_type_is_inferred_from_fields_or_named():
    assert event_type_of({"order_id": "1", "status": "paid"}) == "order_status_changed"
    assert event_type_of({"invoice_id": "1", "amount_minor": 1, "due_date": "x"}) == "payment_due"
    assert event_type_of({}, "events.promotion") == "promotion"
    with pytest.raises(ConfigError, match="cannot tell the event type") as caught:
        event_type_of({"customer_id": "c"})
    assert "--type" in (caught.value.hint or "")
    with pytest.raises(ConfigError):
        event_type_of({}, "nonsense")


def test_load_event_fills_ids_and_checks_the_contract(tmp_path):
    good = tmp_path / "e.json"
    good.write_text(json.dumps({"order_id": "1", "status": "paid"}))
    kind, event = load_event(good, None, "c-9", 123)
    assert kind == "order_status_changed" and event["customer_id"] == "c-9"
    assert event["occurred_at_ms"] == 123 and event["event_id"].startswith("explain-")
    assert event["attributes"] == {}  # schema defaults, as the router decodes it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"order_id": 1, "status": "paid", "customer_id": "c"}))
    with pytest.raises(ConfigError, match="not a valid order_status_changed"):
        load_event(bad, None, None, 1)


# ---------------------------------------------------------------- router
def test_router_stats_count_unmatched_events_per_type():
    stats = RouterStats()
    stats.counts.update({"no_rule:promotion": 2, "no_rule:order_status_changed": 1,
                         "request:marketing": 5})
    assert stats.unmatched == {"promotion": 2, "order_status_changed": 1}
    assert "no_rule:promotion=2" in stats.line()


# ---------------------------------------------------------------- send-test
def test_sample_events_satisfy_their_rules(ruleset):
    from pipeline.rules.matching import event_matches

    for rule in ruleset.rules:
        if rule.trigger == "event":
            assert event_matches(rule, sample_event(rule, NOON_MSK, seed=1)), rule.id


def test_test_sends_are_marked_and_unique(ruleset, policy):
    one = build_test(ruleset, "promotion_discount", "+79161234567", NOON_MSK, locale="en")
    two = build_test(ruleset, "promotion_discount", "+79161234567", NOON_MSK, locale="en")
    r = one.request
    assert is_test(r) and r["customer_id"] == TEST_MARK and r["campaign_id"] == TEST_MARK
    assert r["variant"].startswith("test:") and r["locale"] == "en"
    assert r["lane"] == "marketing" and one.topic == "sms.requests.marketing"
    assert not r["dedup_by_content"]
    assert r["request_id"] != two.request["request_id"]
    forced = build_test(ruleset, "promotion_discount", "+79161234567", NOON_MSK,
                        transactional=True)
    assert forced.request["lane"] == "transactional" and forced.warnings
    _checks, decision = sender_checks(forced.request, policy, NIGHT_MSK, None)
    assert decision.startswith("send to +79161234567")  # no marketing consent or quiet hours
