"""The sender's decision chain: one pure function from a request and its state to a decision.

Order of the checks (first failure wins):
dedup → TTL → schedule → number → consent → content rules → same-text dedup →
quiet hours → frequency caps. A request that passes them all is a `Send`; the worker
then throttles it per route and hands it to the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.sender.caps import CapState, FrequencyCaps, check_caps
from pipeline.sender.consent import ConsentState, check_consent
from pipeline.sender.content import ContentRules, ContentVerdict, check_content
from pipeline.sender.decision import Reject, rejected
from pipeline.sender.dedup import LedgerEntry, check_content_duplicate, check_duplicate, content_key
from pipeline.sender.expiry import Hold, check_expiry, check_hold, check_schedule
from pipeline.sender.numbers import NumberInfo, normalise
from pipeline.sender.quiet_hours import QuietHours, check_quiet_hours, recipient_zones
from pipeline.sender.stop_words import DEFAULT_STOP_WORDS, StopWords


@dataclass(frozen=True)
class SenderPolicy:
    """Everything from `config/` the decisions need, loaded once per worker."""

    allowed_regions: frozenset[str]
    content: ContentRules
    quiet_hours: Mapping[str, QuietHours]
    caps: Mapping[str, FrequencyCaps]
    # Region -> zones its numbers can be in, overriding phonenumbers' (quiet hours).
    zones_by_country: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    stop_words: StopWords = DEFAULT_STOP_WORDS  # replies that opt out (the inbound path)


@dataclass(frozen=True)
class Send:
    """Go ahead: send `verdict.text_to_send` to `number`."""

    number: NumberInfo
    verdict: ContentVerdict
    content_key: str | None


class StateView(Protocol):
    """Read access to the state the decisions depend on (the worker's stores)."""

    def consent(self, e164: str) -> ConsentState | None: ...

    def ledger(self, request_id: str) -> LedgerEntry | None: ...

    def content_entry(self, key: str) -> LedgerEntry | None: ...

    def cap_state(self, e164: str, lane: str) -> CapState | None: ...


Decision = Send | Reject | Hold


def decide(request: Mapping[str, Any], policy: SenderPolicy, state: StateView, now_ms: int) -> Decision:
    """Decide what happens to `request` now. Pure: reads `state`, changes nothing.

    Called for every request taken from a lane and again for every held request when
    its hold ends. A `Reject` is terminal (it becomes the request's outcome), a `Hold`
    asks to be called again at `until_ms`, a `Send` goes to the gateway.
    """
    request_id = request["request_id"]
    window_s = request["dedup_window_s"]
    lane = request["lane"]
    duplicate = check_duplicate(request_id, now_ms, window_s, state.ledger(request_id))
    if duplicate is not None:
        return duplicate
    gone = check_expiry(request, now_ms)
    if gone is not None:
        return gone
    scheduled = check_schedule(request, now_ms)
    if scheduled is not None:
        return check_hold(request, scheduled) or scheduled
    number = normalise(request["phone"], request["country"] or "RU", policy.allowed_regions)
    if isinstance(number, Reject):
        return number
    no_consent = check_consent(lane, state.consent(number.e164))
    if no_consent is not None:
        return no_consent
    verdict = check_content(request["text"], lane, request["sender_id"], policy.content,
                            request["allow_transliteration"])
    if isinstance(verdict, Reject):
        return verdict
    for url in request.get("links") or ():  # originals behind tracked short links
        host = (urlsplit(url).hostname or "").rstrip(".")
        if not policy.content.link_allowed(host):
            return rejected("link_domain_not_allowed", f"tracked link to {host!r} is not allowed")
    key = None
    if request["dedup_by_content"]:
        key = content_key(number.e164, verdict.text_to_send)
        same_text = check_content_duplicate(key, now_ms, window_s, state.content_entry(key))
        if same_text is not None:
            return same_text
    if lane in policy.quiet_hours:
        zones = recipient_zones(
            request.get("time_zone"),
            policy.zones_by_country.get(number.region, number.time_zones),
            request.get("customer_id"),
        )
        night = check_quiet_hours(lane, now_ms, zones, policy.quiet_hours)
        if isinstance(night, Hold):
            return check_hold(request, night) or night
        if night is not None:
            return night
    capped = check_caps(lane, state.cap_state(number.e164, lane), now_ms, policy.caps)
    if capped is not None:
        return capped
    return Send(number, verdict, key)
