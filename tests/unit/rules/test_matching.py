"""Rule matching: condition operators, customer filters, priority order, variant choice."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.rules.matching import condition_holds, customer_matches, matching_rules, pick_variant
from pipeline.rules.model import Condition, CustomerFilter, Rule, RuleSet, RuleSettings, Variant

SETTINGS = RuleSettings(("ru", "en"), "ru", "SHOPRU", 86400, 86400)

EVENT = {
    "event_id": "e-1",
    "customer_id": "c-1",
    "occurred_at_ms": 1_700_000_000_000,
    "source": "shop-web",
    "attributes": {"channel": "app", "items": "3", "express": "true"},
    "order_id": "A-1001",
    "status": "shipped",
    "previous_status": None,
    "amount_minor": 150_000,
    "currency": "RUB",
    "tracking_url": "https://track.example/A-1001",
    "pickup_point": None,
}

PROFILE = {
    "customer_id": "c-1",
    "phone": "+79161234567",
    "locale": "ru",
    "segments": ["vip", "moscow"],
    "attributes": {"tier": "gold", "orders": "12"},
}


NO_FILTER = CustomerFilter()


def make_rule(
    rule_id="r",
    when=(),
    customer=NO_FILTER,
    priority=0,
    variants=None,
    event="order_status_changed",
):
    return Rule(
        id=rule_id,
        event=event,
        when=tuple(when),
        customer=customer,
        variants=tuple(variants or (Variant("default", "t", 1),)),
        lane="transactional",
        priority=priority,
        ttl_s=3600,
        dedup_window_s=86400,
        dedup_by_content=False,
        sender_id="SHOPRU",
        allow_transliteration=False,
    )


def ruleset(*rules: Rule) -> RuleSet:
    by_event: dict[str, tuple[Rule, ...]] = {}
    for rule in sorted(rules, key=lambda r: -r.priority):
        by_event[rule.event] = (*by_event.get(rule.event, ()), rule)
    return RuleSet(settings=SETTINGS, rules=rules, templates={}, by_event=by_event)


@pytest.mark.parametrize(
    ("path", "op", "value", "expected"),
    [
        ("status", "eq", "shipped", True),
        ("status", "eq", "created", False),
        ("status", "ne", "created", True),
        ("status", "in", ("paid", "shipped"), True),
        ("status", "not_in", ("paid", "shipped"), False),
        ("amount_minor", "gt", 150_000, False),
        ("amount_minor", "gte", 150_000, True),
        ("amount_minor", "lt", 200_000, True),
        ("amount_minor", "lte", 100_000, False),
        ("tracking_url", "exists", True, True),
        ("pickup_point", "exists", True, False),
        ("pickup_point", "exists", False, True),
        ("attributes.promo", "exists", False, True),
        ("tracking_url", "regex", r"^https://track\.", True),
        ("order_id", "regex", r"^B-", False),
        ("previous_status", "eq", None, True),
        ("previous_status", "ne", None, False),
        ("pickup_point", "regex", ".*", False),  # null never matches a pattern
        ("pickup_point", "gt", "a", False),  # null never compares
        ("no_such_field", "eq", "x", False),
        # attributes are strings; they compare as the type the rule author wrote
        ("attributes.channel", "eq", "app", True),
        ("attributes.items", "gte", 3, True),
        ("attributes.items", "lt", 2.5, False),
        ("attributes.items", "eq", 3, True),
        ("attributes.express", "eq", True, True),
        ("attributes.channel", "gt", 5, False),  # 'app' is not a number: does not hold
        ("amount_minor", "eq", True, False),  # bools never equal numbers
        ("status", "gt", 5, False),  # type mismatch never raises
    ],
)
def test_operators(path, op, value, expected):
    assert condition_holds(Condition(path, op, value), EVENT) is expected


def test_all_conditions_must_hold():
    both = make_rule(
        when=[Condition("status", "eq", "shipped"), Condition("amount_minor", "gte", 100_000)]
    )
    one_fails = make_rule(
        when=[Condition("status", "eq", "shipped"), Condition("amount_minor", "gte", 10**9)]
    )
    assert matching_rules(ruleset(both), "order_status_changed", EVENT, PROFILE) == [both]
    assert matching_rules(ruleset(one_fails), "order_status_changed", EVENT, PROFILE) == []


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (CustomerFilter(), True),
        (CustomerFilter(segments_any=("vip", "new")), True),
        (CustomerFilter(segments_any=("new",)), False),
        (CustomerFilter(segments_none=("moscow",)), False),
        (CustomerFilter(segments_none=("blocked",)), True),
        (CustomerFilter(locale_in=("ru",)), True),
        (CustomerFilter(locale_in=("en",)), False),
        (CustomerFilter(attributes=(Condition("tier", "eq", "gold"),)), True),
        (CustomerFilter(attributes=(Condition("tier", "in", ("silver", "bronze")),)), False),
        (CustomerFilter(attributes=(Condition("orders", "gte", 10),)), True),
        (CustomerFilter(attributes=(Condition("city", "exists", True),)), False),
        (CustomerFilter(segments_any=("vip",), locale_in=("en",)), False),
    ],
)
def test_customer_filters(flt, expected):
    assert customer_matches(flt, PROFILE) is expected


def test_customer_filter_on_a_sparse_profile():
    sparse = {"customer_id": "c-2", "phone": "+79160000000"}
    assert customer_matches(CustomerFilter(), sparse)
    assert not customer_matches(CustomerFilter(segments_any=("vip",)), sparse)
    assert not customer_matches(
        CustomerFilter(attributes=(Condition("tier", "eq", "gold"),)), sparse
    )


def test_matching_rules_by_event_type_and_priority():
    low = make_rule("low", priority=1)
    high = make_rule("high", priority=50)
    tie = make_rule("tie", priority=1)
    other = make_rule("promo", event="promotion")
    rs = ruleset(low, high, tie, other)
    assert [r.id for r in matching_rules(rs, "order_status_changed", EVENT, PROFILE)] == [
        "high",
        "low",
        "tie",
    ]
    assert matching_rules(rs, "payment_due", EVENT, PROFILE) == []


def test_pick_variant_is_deterministic_per_customer():
    rule = make_rule("promo", variants=[Variant("a", "ta", 70), Variant("b", "tb", 30)])
    for customer in ("c-1", "c-2", "c-3", "7"):
        picks = {pick_variant(rule, customer).name for _ in range(5)}
        assert len(picks) == 1
    # the hash includes the rule: a customer is not stuck in variant 'a' of every test
    other = make_rule("promo_2", variants=rule.variants)
    assert any(pick_variant(rule, f"c{i}") != pick_variant(other, f"c{i}") for i in range(50))


def test_pick_variant_distribution_follows_weights():
    rule = make_rule(
        "promo", variants=[Variant("a", "ta", 70), Variant("b", "tb", 20), Variant("c", "tc", 10)]
    )
    n = 20_000
    counts = Counter(pick_variant(rule, f"customer-{i}").name for i in range(n))
    assert abs(counts["a"] / n - 0.70) < 0.02
    assert abs(counts["b"] / n - 0.20) < 0.02
    assert abs(counts["c"] / n - 0.10) < 0.02


def test_single_variant_rule():
    rule = make_rule()
    assert pick_variant(rule, "anyone") == Variant("default", "t", 1)
