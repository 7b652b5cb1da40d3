"""Which rules an event triggers for a customer, and which template variant they get.

Pure functions over validated rules: they never raise on odd data; a condition that
cannot be evaluated (missing field, wrong type) simply does not hold.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pipeline.rules.model import Condition, CustomerFilter, Rule, RuleSet, Variant

log = logging.getLogger(__name__)

_MISSING = object()


def matching_rules(
    ruleset: RuleSet, event_type: str, event: Mapping[str, Any], profile: Mapping[str, Any]
) -> list[Rule]:
    """Rules of `ruleset` that `event` of `event_type` triggers for `profile`, highest priority first.

    Called by the router once per event. An empty list means no rule applies ("no_rule").
    """
    only = campaign_rule(event) or follow_up_rule(event)
    return [
        rule
        for rule in ruleset.rules_for(event_type)
        if (only is None or rule.id == only)
        and (rule.trigger != "follow_up" or rule.id == only)
        and event_matches(rule, event) and customer_matches(rule.customer, profile)
    ]


@dataclass(frozen=True)
class Miss:
    """Why one rule does not match an event for a customer: the first part that failed.

    `part` is 'event' (another event type), 'campaign' / 'follow_up' (the event is meant
    for another rule only), 'trigger' (a follow-up rule on an ordinary event), 'when' (the
    `condition` that does not hold) or 'customer' (`key` is the filter part, as
    `customer_mismatch` names it).
    """

    part: str
    key: str = ""
    condition: Condition | None = None


def explain_match(
    rule: Rule, event_type: str, event: Mapping[str, Any], profile: Mapping[str, Any]
) -> Miss | None:
    """None when `matching_rules` would pick `rule` for this event and profile, else why not.

    Called by `rassylka rules explain`, never by the router: it checks the same things in
    the same order as `matching_rules`, one rule at a time.
    """
    if rule.event != event_type:
        return Miss("event", rule.event)
    campaign = campaign_rule(event)
    only = campaign or follow_up_rule(event)
    if only is not None and rule.id != only:
        return Miss("campaign" if campaign else "follow_up", only)
    if rule.trigger == "follow_up" and rule.id != only:
        return Miss("trigger", rule.trigger)
    failed = failing_condition(rule.when, event)
    if failed is not None:
        return Miss("when", failed.path, failed)
    part = customer_mismatch(rule.customer, profile)
    if part is not None:
        return Miss("customer", part)
    return None


def follow_up_rule(event: Mapping[str, Any]) -> str | None:
    """The rule a scheduled follow-up event is for (`attributes.follow_up_rule`), else None."""
    return (event.get("attributes") or {}).get("follow_up_rule") or None


def campaign_rule(event: Mapping[str, Any]) -> str | None:
    """The one rule a campaign's promotion event is for (`attributes.campaign_rule`), or
    None for any other event: a campaign message never triggers a second rule."""
    if not event.get("campaign_id"):
        return None
    attributes = event.get("attributes") or {}
    return attributes.get("campaign_rule") or None


def forced_variant(rule: Rule, event: Mapping[str, Any]) -> Variant | None:
    """The variant a campaign assigned to this recipient (`attributes.campaign_variant` of
    a promotion event with a campaign id), when `rule` has it; else None."""
    if not event.get("campaign_id"):
        return None
    name = (event.get("attributes") or {}).get("campaign_variant")
    return next((v for v in rule.variants if v.name == name), None) if name else None


def event_matches(rule: Rule, event: Mapping[str, Any]) -> bool:
    """True when every `when:` condition of `rule` holds on `event`."""
    return failing_condition(rule.when, event) is None


def failing_condition(when: tuple[Condition, ...], event: Mapping[str, Any]) -> Condition | None:
    """The first of `when` that does not hold on `event`, or None when they all hold."""
    for condition in when:
        if not condition_holds(condition, event):
            return condition
    return None


def customer_matches(flt: CustomerFilter, profile: Mapping[str, Any]) -> bool:
    """True when `profile` passes every part of the rule's `customer:` filter."""
    return customer_mismatch(flt, profile) is None


def customer_mismatch(flt: CustomerFilter, profile: Mapping[str, Any]) -> str | None:
    """The first part of `flt` that `profile` fails, or None when it passes them all.

    Parts, in the order checked: 'segments_any', 'segments_none', 'locale_in', then
    'attributes.<key>' for the first attribute condition that does not hold.
    """
    segments = set(profile.get("segments") or ())
    if flt.segments_any and not segments.intersection(flt.segments_any):
        return "segments_any"
    if flt.segments_none and segments.intersection(flt.segments_none):
        return "segments_none"
    if flt.locale_in and profile.get("locale") not in flt.locale_in:
        return "locale_in"
    attributes = profile.get("attributes") or {}
    for condition in flt.attributes:
        if not condition_holds(condition, attributes, attributes_only=True):
            return f"attributes.{condition.path}"
    return None


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at `path` ('field' or 'attributes.key') in `record`, or a private MISSING marker."""
    if path.startswith("attributes."):
        attributes = record.get("attributes")
        if not isinstance(attributes, Mapping):
            return _MISSING
        return attributes.get(path[len("attributes.") :], _MISSING)
    return record.get(path, _MISSING)


def condition_holds(
    condition: Condition, record: Mapping[str, Any], *, attributes_only: bool = False
) -> bool:
    """Evaluate one condition; `attributes_only` means `record` is itself an attributes map."""
    actual = (
        record.get(condition.path, _MISSING) if attributes_only else lookup(record, condition.path)
    )
    op, expected = condition.op, condition.value
    if op == "exists":
        present = actual is not _MISSING and actual is not None
        return present is bool(expected)
    if actual is _MISSING:
        actual = None
    try:
        if op == "eq":
            return _equal(actual, expected)
        if op == "ne":
            return not _equal(actual, expected)
        if op == "in":
            return any(_equal(actual, item) for item in expected)
        if op == "not_in":
            return not any(_equal(actual, item) for item in expected)
        if op == "regex":
            return actual is not None and _regex(expected).search(str(actual)) is not None
        if op in ("gt", "gte", "lt", "lte"):
            return _compare(op, actual, expected)
    except (TypeError, ValueError):
        return False
    log.warning("unknown operator %r in condition on %s", op, condition.path)
    return False


def _coerce(actual: Any, expected: Any) -> Any:
    """Attributes are strings; compare them as the type the rule author wrote."""
    if not isinstance(actual, str) or isinstance(expected, str) or expected is None:
        return actual
    if isinstance(expected, bool):
        lowered = actual.strip().lower()
        return True if lowered == "true" else False if lowered == "false" else actual
    if isinstance(expected, int):
        try:
            return int(actual)
        except ValueError:
            try:
                return float(actual)
            except ValueError:
                return actual
    if isinstance(expected, float):
        try:
            return float(actual)
        except ValueError:
            return actual
    return actual


def _equal(actual: Any, expected: Any) -> bool:
    actual = _coerce(actual, expected)
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    return bool(actual == expected)


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if actual is None or isinstance(actual, bool):
        return False
    actual = _coerce(actual, expected)
    if isinstance(actual, str) != isinstance(expected, str):
        return False
    if op == "gt":
        return bool(actual > expected)
    if op == "gte":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    return bool(actual <= expected)


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def variant_point(rule_id: str, customer_id: str) -> float:
    """A stable point in [0, 1) for (rule, customer): sha256 of 'rule_id|customer_id'."""
    digest = hashlib.sha256(f"{rule_id}|{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_variant(rule: Rule, customer_id: str,
                 learned: Mapping[str, float] | None = None) -> Variant:
    """The variant `customer_id` sees for `rule`; the same customer always gets the same one
    while the weights stay the same.

    Over many customers the variants' shares follow their weights: the rule's own, or for
    a `strategy: bandit` rule the `learned` ones when there are any (variants the learned
    weights do not name keep none). Called by the router for every matching rule; never
    fails (validated rules have at least one variant).
    """
    if len(rule.variants) == 1:
        return rule.variants[0]
    if learned and rule.bandit is not None and any(learned.get(v.name, 0) > 0 for v in rule.variants):
        weights = [max(float(learned.get(v.name, 0.0)), 0.0) for v in rule.variants]
    else:
        weights = [v.weight for v in rule.variants]
    point = variant_point(rule.id, customer_id) * sum(weights)
    upto = 0.0
    for variant, weight in zip(rule.variants, weights, strict=True):
        upto += weight
        if point < upto:
            return variant
    return rule.variants[-1]
