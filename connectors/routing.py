"""Which routes a message may take, in failover order, and what a route costs.

The ``routing:`` list of ``config/routes.yaml``: rules tried in order, the first whose
every given key matches the message picks its route list::

    routing:
      - match: {country: [RU], operator_prefix: ["+7916", "+7903"], lane: marketing}
        routes: [primary, backup]          # primary first; backup when primary is down
      - routes: [primary]                  # no `match`: the catch-all, always last

Match keys (each a value or a list; a message matches a key when it equals any entry):
``country`` (the number's own ISO region, as the sender's number check decides it),
``operator_prefix`` (E.164 prefixes with ``+``, compared with the destination),
``operator`` (the range holder's name as phonenumbers gives it, any case) and ``lane``
(``transactional`` / ``marketing``). A message that no rule matches (no catch-all
written) takes ``default_route``.

``tariff: {per_segment: 2.5, currency: RUB}`` on a route prices each segment sent over
it; the outcome's ``cost`` then comes from the route that accepted the message.

Everything here is pure: parsing returns problems (one line each, naming the file and the
key) instead of raising, so the caller reports them all at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

LANES = frozenset({"transactional", "marketing"})
MATCH_KEYS = ("country", "operator_prefix", "operator", "lane")
RULE_KEYS = ("match", "routes")
TARIFF_KEYS = ("per_segment", "currency")
FAILOVER_KEYS = ("throttled_for_s", "retry_after_s", "retry_max_s")
_REGION = re.compile(r"[A-Z]{2}")
_PREFIX = re.compile(r"\+[1-9]\d{0,14}")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Tariff:
    """The price of one segment sent over a route, in `currency` (ISO 4217)."""

    per_segment: float
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """When a route counts as down, and when it is tried again.

    A route is down while it has no bind up (connection lost, bind refused), after a send
    it refused before sending (``not_bound`` / ``not_sent``, or an HTTP 401/403), and
    when every answer for `throttled_for_s` was a slow-down. It is tried again after
    `retry_after_s`, doubling up to `retry_max_s` while it keeps failing.
    """

    throttled_for_s: float = 30.0
    retry_after_s: float = 5.0
    retry_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """One entry of ``routing:``; an empty criterion matches everything."""

    routes: tuple[str, ...]
    countries: frozenset[str] = frozenset()
    operator_prefixes: tuple[str, ...] = ()
    operators: frozenset[str] = frozenset()  # casefolded
    lanes: frozenset[str] = frozenset()

    def matches(self, destination: str, region: str | None, operator: str | None,
                lane: str | None) -> bool:
        if self.countries and region not in self.countries:
            return False
        if self.operator_prefixes and not destination.startswith(self.operator_prefixes):
            return False
        if self.operators and (operator or "").casefold() not in self.operators:
            return False
        return not (self.lanes and lane not in self.lanes)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The rules in order, and the route list of a message that matches none."""

    rules: tuple[RoutingRule, ...]
    default: tuple[str, ...]

    @classmethod
    def single(cls, route: str) -> RoutingTable:
        """Every message over `route` (``rassylka sender --route NAME``)."""
        return cls((), (route,))

    def routes_for(self, destination: str, region: str | None = None,
                   operator: str | None = None, lane: str | None = None) -> tuple[str, ...]:
        """The routes to try for a message, first choice first. Called per send."""
        for rule in self.rules:
            if rule.matches(destination, region, operator, lane):
                return rule.routes
        return self.default

    @property
    def route_names(self) -> tuple[str, ...]:
        """Every route some message may take, in order of first mention."""
        seen: dict[str, None] = {}
        for routes in (*(r.routes for r in self.rules), self.default):
            seen.update(dict.fromkeys(routes))
        return tuple(seen)


def _strings(value: Any) -> list[str] | None:
    """A value or a list of values as a list of strings; None when it is neither."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        return None
    return items


def parse_routing(value: Any, where: str, routes: Collection[str],
                  default: str) -> tuple[RoutingTable, list[str]]:
    """The ``routing:`` section (`value`, None when absent) as a table, and its problems.

    `where` names the file; `routes` are the route names defined; `default` is
    ``default_route``, taken by messages no rule matches. A rule without ``match`` must
    be the last one (the rules after it could never apply).
    """
    problems: list[str] = []
    rules: list[RoutingRule] = []
    fallback: tuple[str, ...] = (default,)
    if value is None:
        return RoutingTable((), fallback), problems
    if not isinstance(value, list):
        return RoutingTable((), fallback), [f"{where}: routing: must be a list of rules"]
    for i, entry in enumerate(value):
        at = f"{where}: routing[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{at}: must be a mapping with `routes` (and `match`)")
            continue
        problems += [f"{at}: unknown key {k!r} (known: {', '.join(RULE_KEYS)})"
                     for k in entry if k not in RULE_KEYS]
        names = _strings(entry.get("routes"))
        if names is None:
            problems.append(f"{at}.routes: must list one or more route names")
            names = []
        problems += [f"{at}.routes: unknown route {n!r} (defined: {', '.join(sorted(routes))})"
                     for n in names if n not in routes]
        if len(set(names)) != len(names):
            problems.append(f"{at}.routes: a route is listed twice")
        match = entry.get("match")
        if match is None or match == {}:
            if i != len(value) - 1:
                problems.append(f"{at}: a rule without `match` catches everything and must "
                                f"be the last one")
            fallback = tuple(names) or fallback
            continue
        rule = _parse_match(match, f"{at}.match", tuple(names), problems)
        if rule is not None:
            rules.append(rule)
    return RoutingTable(tuple(rules), fallback), problems


def _parse_match(match: Any, at: str, names: tuple[str, ...],
                 problems: list[str]) -> RoutingRule | None:
    if not isinstance(match, dict):
        problems.append(f"{at}: must be a mapping of {', '.join(MATCH_KEYS)}")
        return None
    problems += [f"{at}: unknown key {k!r} (known: {', '.join(MATCH_KEYS)})"
                 for k in match if k not in MATCH_KEYS]
    parsed: dict[str, list[str]] = {}
    for key in MATCH_KEYS:
        if key in match:
            items = _strings(match[key])
            if items is None:
                problems.append(f"{at}.{key}: must be a non-empty string or list of strings")
                items = []
            parsed[key] = items
    problems += [f"{at}.country: {c!r} is not an ISO 3166 region code (RU, KZ, ...)"
                 for c in parsed.get("country", []) if not _REGION.fullmatch(c)]
    problems += [f"{at}.operator_prefix: {p!r} is not an E.164 prefix like '+7916'"
                 for p in parsed.get("operator_prefix", []) if not _PREFIX.fullmatch(p)]
    problems += [f"{at}.lane: {lane!r} is not one of {', '.join(sorted(LANES))}"
                 for lane in parsed.get("lane", []) if lane not in LANES]
    return RoutingRule(
        routes=names,
        countries=frozenset(parsed.get("country", ())),
        operator_prefixes=tuple(parsed.get("operator_prefix", ())),
        operators=frozenset(o.casefold() for o in parsed.get("operator", ())),
        lanes=frozenset(parsed.get("lane", ())),
    )


def parse_tariff(value: Any, at: str, currency: Any = None) -> tuple[Tariff | None, list[str]]:
    """A route's ``tariff:`` (None when absent), and its problems. `currency` is the
    route's own ``currency:`` field: the tariff's must agree with it."""
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, [f"{at}: must be a mapping like {{per_segment: 2.5, currency: RUB}}"]
    problems = [f"{at}: unknown key {k!r} (known: {', '.join(TARIFF_KEYS)})"
                for k in value if k not in TARIFF_KEYS]
    price = value.get("per_segment")
    if isinstance(price, bool) or not isinstance(price, int | float) \
            or not math.isfinite(price) or price < 0:
        problems.append(f"{at}.per_segment: must be a non-negative number, got {price!r}")
        price = 0.0
    unit = value.get("currency", currency)
    if unit is not None and not (isinstance(unit, str) and _CURRENCY.fullmatch(unit)):
        problems.append(f"{at}.currency: {unit!r} is not an ISO 4217 code like RUB")
    elif currency is not None and unit != currency:
        problems.append(f"{at}.currency: {unit!r} differs from the route's currency {currency!r}")
    return Tariff(float(price), unit), problems


def parse_failover(value: Any, at: str) -> tuple[FailoverSettings, list[str]]:
    """The ``failover:`` section (defaults when absent), and its problems."""
    if value is None:
        return FailoverSettings(), []
    if not isinstance(value, dict):
        return FailoverSettings(), [f"{at}: must be a mapping of {', '.join(FAILOVER_KEYS)}"]
    problems = [f"{at}: unknown key {k!r} (known: {', '.join(FAILOVER_KEYS)})"
                for k in value if k not in FAILOVER_KEYS]
    numbers: dict[str, float] = {}
    for key in FAILOVER_KEYS:
        if key in value:
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 \
                    or not math.isfinite(v):
                problems.append(f"{at}.{key}: must be a positive number of seconds, got {v!r}")
            else:
                numbers[key] = float(v)
    settings = FailoverSettings(**numbers)
    if settings.retry_max_s < settings.retry_after_s:
        problems.append(f"{at}.retry_max_s: must be at least retry_after_s")
    return settings, problems


def tariffs_of(routes: Mapping[str, Mapping[str, Any]]) -> dict[str, Tariff]:
    """Route name -> tariff, for the routes that have a (valid) one."""
    out = {}
    for name, conf in routes.items():
        tariff, problems = parse_tariff(conf.get("tariff"), name, conf.get("currency"))
        if tariff is not None and not problems:
            out[name] = tariff
    return out
