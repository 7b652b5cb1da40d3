"""The router's decision, as a pure function: one business event in, notification requests out.

`route()` finds the rules the event triggers for the customer, picks each rule's template
variant, renders it (within the rule set's `RenderLimits`) and builds a
`notification_request` record per rule. A rule that fails (render error, render over its
time or size limit, unsafe template, no locale, bad schedule) becomes a `RouteFailure`
with a reason code while the other rules still produce their requests. No I/O, no clock: the router worker
passes the profile and `now_ms` in and moves the results to topics.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.errors import PermanentError
from pipeline.links import link_base, link_secret, shorten
from pipeline.rules.matching import (
    event_matches,
    forced_variant,
    lookup,
    matching_rules,
    pick_variant,
)
from pipeline.rules.model import Rule, RuleSet
from pipeline.rules.render import RenderError, render

log = logging.getLogger(__name__)

# Optional customer_profile fields and their schema defaults: a profile kept by the worker
# in a table may be sparser than a decoded record, and templates may read any of them.
PROFILE_DEFAULTS: dict[str, Any] = {
    "country": "RU",
    "locale": "ru",
    "time_zone": None,
    "first_name": None,
    "last_name": None,
    "segments": [],
    "attributes": {},
}

NO_PROFILE = "no_profile"
BAD_SEND_AT = "bad_send_at"
ROUTE_ERROR = "route_error"


class SendAtError(PermanentError):
    """The event field a rule schedules by is not an ISO datetime with a time zone."""

    reason = BAD_SEND_AT


@dataclass(frozen=True)
class RouteFailure:
    """One rule (or, with rule_id None, the whole event) that produced no request, and why."""

    rule_id: str | None
    reason: str
    error: str


@dataclass(frozen=True)
class RouteResult:
    """What one event produced: requests to publish (by their `lane`) and failures to record."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    failures: list[RouteFailure] = field(default_factory=list)


def idempotency_key(event_id: str, rule_id: str, customer_id: str) -> str:
    """The request id: first 32 hex chars of sha256('event_id|rule_id|customer_id').

    The same event re-delivered after a crash or rebalance yields the same key, so the
    sender's dedup ledger drops the second copy.
    """
    return hashlib.sha256(f"{event_id}|{rule_id}|{customer_id}".encode()).hexdigest()[:32]


def route(
    ruleset: RuleSet,
    event_type: str,
    event: Mapping[str, Any],
    profile: Mapping[str, Any] | None,
    now_ms: int,
    learned: Mapping[str, Mapping[str, float]] | None = None,
) -> RouteResult:
    """Route one decoded business event of `event_type` for its customer's `profile`.

    Called by the router agent per event. Returns an empty result when no rule matches
    (record it as 'no_rule'); a failure with reason 'no_profile' when rules match but the
    customer has no profile; otherwise one request per matching rule, or a RouteFailure
    (render_error, render_timeout, render_too_large, render_unsafe, no_locale, bad_send_at,
    route_error) for a rule that could not be built.
    Never raises on bad event or profile data.
    """
    if profile is None:
        wanted = [r.id for r in ruleset.rules_for(event_type) if event_matches(r, event)]
        if not wanted:
            return RouteResult()
        return RouteResult(
            failures=[
                RouteFailure(
                    None,
                    NO_PROFILE,
                    f"no profile for customer {event.get('customer_id')!r} (rules: {', '.join(wanted)})",
                )
            ]
        )
    profile = PROFILE_DEFAULTS | dict(profile)
    result = RouteResult()
    for rule in matching_rules(ruleset, event_type, event, profile):
        try:
            result.requests.append(build_request(ruleset, rule, event_type, event, profile,
                                                 now_ms, learned or {}))
        except (RenderError, SendAtError) as exc:
            result.failures.append(RouteFailure(rule.id, exc.reason, str(exc)))
        except Exception as exc:  # a bug or data we did not foresee must not kill the worker
            log.exception("rule %s failed on event %s", rule.id, event.get("event_id"))
            result.failures.append(
                RouteFailure(rule.id, ROUTE_ERROR, f"{exc.__class__.__name__}: {exc}")
            )
    return result


def build_request(
    ruleset: RuleSet,
    rule: Rule,
    event_type: str,
    event: Mapping[str, Any],
    profile: Mapping[str, Any],
    now_ms: int,
    learned: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The `notification_request` record for one matching rule (`learned`: the current
    weights of `strategy: bandit` rules, by rule id).

    Raises RenderError (or a subclass: NoLocaleError, RenderTimeout, RenderTooLarge,
    RenderUnsafe) when the template cannot be rendered within its limits and SendAtError when the rule's schedule field is unusable; both are permanent.
    """
    customer_id = str(event["customer_id"])
    variant = forced_variant(rule, event) or pick_variant(rule, customer_id, (learned or {}).get(rule.id))
    rendered = render(
        ruleset.templates[variant.template],
        event=event,
        customer=profile,
        rule=rule,
        default_locale=ruleset.settings.default_locale,
        limits=ruleset.settings.render,
    )
    request_id = idempotency_key(str(event["event_id"]), rule.id, customer_id)
    # Tracked short links replace the URLs before the sender measures segments.
    text, links = shorten(rendered.text, request_id, link_secret(), link_base())
    send_at_ms = scheduled_at_ms(rule, event)
    # A scheduled message gets its full time to live from when it is due, not from now.
    starts_ms = max(now_ms, send_at_ms) if send_at_ms is not None else now_ms
    return {
        "request_id": request_id,
        "event_id": str(event["event_id"]),
        "event_type": event_type,
        "event_occurred_at_ms": int(event["occurred_at_ms"]),
        "rule_id": rule.id,
        "template_id": rendered.template_id,
        "variant": variant.name,
        "locale": rendered.locale,
        "customer_id": customer_id,
        "phone": str(profile.get("phone") or ""),
        "country": str(profile.get("country") or "RU"),
        "time_zone": profile.get("time_zone") or None,
        "lane": rule.lane,
        "priority": rule.priority,
        "sender_id": rule.sender_id,
        "text": text,
        "created_at_ms": now_ms,
        "expires_at_ms": starts_ms + rule.ttl_s * 1000,
        "send_at_ms": send_at_ms,
        "dedup_window_s": rule.dedup_window_s,
        "dedup_by_content": rule.dedup_by_content,
        "allow_transliteration": rule.allow_transliteration,
        "campaign_id": (event.get("campaign_id") or None) if event_type == "promotion" else None,
        "links": links,
        "config_version": None,  # the router worker stamps the config release in force
    }


def scheduled_at_ms(rule: Rule, event: Mapping[str, Any]) -> int | None:
    """Epoch ms of the rule's `send_at` event field; None when the rule or the event has none.

    Raises SendAtError when the value is not an ISO datetime with an offset.
    """
    if rule.send_at is None:
        return None
    value = lookup(event, rule.send_at)
    if value is None or not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise SendAtError(
            f"rule {rule.id}: send_at field {rule.send_at}={value!r} is not ISO 8601"
        ) from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise SendAtError(
            f"rule {rule.id}: send_at field {rule.send_at}={value!r} has no time zone offset"
        )
    return int(moment.timestamp() * 1000)
