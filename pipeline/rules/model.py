"""Typed, immutable view of `config/rules.yaml` and `config/templates/*.yaml`.

Built only by `pipeline.rules.loader`, which validates everything first; the rest of the
pipeline reads these records and never the YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jinja2

EVENT_TYPES: tuple[str, ...] = (
    "order_status_changed",
    "payment_due",
    "promotion",
    "service_notice",
)
LANES: tuple[str, ...] = ("transactional", "marketing")
OPERATORS: tuple[str, ...] = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "regex",
)
DEFAULT_VARIANT = "default"
"""Variant name of a rule that names a single `template:`."""


@dataclass(frozen=True)
class Condition:
    """One test on a field: `path` is a top-level field or `attributes.<key>`."""

    path: str
    op: str
    value: Any


@dataclass(frozen=True)
class CustomerFilter:
    """Which customers a rule addresses; every non-empty part must hold."""

    segments_any: tuple[str, ...] = ()
    segments_none: tuple[str, ...] = ()
    attributes: tuple[Condition, ...] = ()
    locale_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One template a rule may render, with its share of customers."""

    name: str
    template: str
    weight: float = 1


@dataclass(frozen=True)
class FollowUp:
    """`follow_up:` of a rule: `after_s` seconds after a matching event, rule `rule` (one
    with `trigger: follow_up`) renders a second message for the same event, unless first
    an event of type `unless_event` for the same customer satisfies `unless_when` and
    carries the same values of the `match` fields, or (`unless_clicked`) the customer
    clicks a link of the first message."""

    after_s: int
    rule: str
    unless_event: str | None = None
    unless_when: tuple[Condition, ...] = ()
    match: tuple[str, ...] = ()
    unless_clicked: bool = False


@dataclass(frozen=True)
class Bandit:
    """`strategy: bandit`: the variants' weights are learned from `metric` (Thompson
    sampling, every `every_s` seconds), each keeping at least `min_share`."""

    metric: str = "click"
    min_share: float = 0.05
    every_s: int = 3600


@dataclass(frozen=True)
class Rule:
    """A validated notification rule: when an event matches, render and send one SMS."""

    id: str
    event: str
    when: tuple[Condition, ...]
    customer: CustomerFilter
    variants: tuple[Variant, ...]
    lane: str
    priority: int
    ttl_s: int
    dedup_window_s: int
    dedup_by_content: bool
    sender_id: str
    allow_transliteration: bool
    send_at: str | None = None
    bandit: Bandit | None = None  # None: fixed weights, stable per customer
    follow_up: FollowUp | None = None
    trigger: str = "event"  # "follow_up": only renders follow-ups another rule scheduled

    @property
    def templates(self) -> tuple[str, ...]:
        """Ids of every template the rule can render."""
        return tuple(v.template for v in self.variants)


@dataclass(frozen=True)
class Template:
    """A template's per-locale sources and their compiled (sandboxed) forms."""

    id: str
    description: str
    locales: Mapping[str, str]
    compiled: Mapping[str, jinja2.Template] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )


@dataclass(frozen=True)
class RenderLimits:
    """How long one template render may run and how long a text it may produce.

    `timeout_ms` is CPU time of the rendering thread (time spent waiting for the CPU on a
    busy host does not count); `max_chars` bounds the text after whitespace is tidied, a
    few SMS segments' worth. A render over either limit fails with reason
    `render_timeout` / `render_too_large` and its event is dead-lettered.
    """

    timeout_ms: int = 50
    max_chars: int = 1000


@dataclass(frozen=True)
class RuleSettings:
    """The `settings:` block of rules.yaml, defaults for every rule."""

    required_locales: tuple[str, ...]
    default_locale: str
    default_sender_id: str
    default_ttl_s: int
    default_dedup_window_s: int
    render: RenderLimits = RenderLimits()


@dataclass(frozen=True)
class RuleSet:
    """Everything the router needs: settings, rules (by event, priority first), templates.

    `version` is a digest of the config files it was built from, for logs and outcomes.
    """

    settings: RuleSettings
    rules: tuple[Rule, ...]
    templates: Mapping[str, Template]
    version: str = ""
    by_event: Mapping[str, tuple[Rule, ...]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def rules_for(self, event_type: str) -> tuple[Rule, ...]:
        """Rules listening to `event_type`, highest priority first (file order on ties)."""
        return self.by_event.get(event_type, ())

    def rule(self, rule_id: str) -> Rule:
        """The rule with id `rule_id`; KeyError when there is none."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)
