"""Notification rules and templates: load and validate `config/`, match events, render SMS.

The router loads a `RuleSet` once (`load_ruleset`), swaps in a new one on hot reload
(`load_bundle`), and per event calls `matching_rules`, `pick_variant` and `pipeline.rules.render.render`
(`pipeline.router.core.route` does all three).
"""

from pipeline.rules.loader import load_bundle, load_ruleset, parse_duration, read_bundle, validate
from pipeline.rules.matching import matching_rules, pick_variant
from pipeline.rules.model import (
    EVENT_TYPES,
    LANES,
    Condition,
    CustomerFilter,
    RenderLimits,
    Rule,
    RuleSet,
    RuleSettings,
    Template,
    Variant,
)
from pipeline.rules.render import (
    NoLocaleError,
    Rendered,
    RenderError,
    RenderTimeout,
    RenderTooLarge,
    RenderUnsafe,
    choose_locale,
)

__all__ = [
    "EVENT_TYPES",
    "LANES",
    "Condition",
    "CustomerFilter",
    "NoLocaleError",
    "RenderError",
    "RenderLimits",
    "RenderTimeout",
    "RenderTooLarge",
    "RenderUnsafe",
    "Rendered",
    "Rule",
    "RuleSet",
    "RuleSettings",
    "Template",
    "Variant",
    "choose_locale",
    "load_bundle",
    "load_ruleset",
    "matching_rules",
    "parse_duration",
    "pick_variant",
    "read_bundle",
    "validate",
]
