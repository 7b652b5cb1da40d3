"""Limits: the sender's policy knobs from `config/limits.yaml`, validated into `Limits`.

Built once at start-up (and again on a config publish) with `load_limits`; every problem
in the file is reported at once, each with its path, in one `ConfigError`. A section left
out of the file takes its default; a section written empty means "none" (e.g.
`quiet_hours: {}` turns quiet hours off).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import phonenumbers
import yaml

from pipeline.errors import ConfigError
from pipeline.sender.caps import DEFAULT_CAPS, Cap, FrequencyCaps
from pipeline.sender.consent import MARKETING, TRANSACTIONAL
from pipeline.sender.quiet_hours import DEFAULT_QUIET_HOURS, QuietHours, parse_time, zone_or_none
from pipeline.sender.stop_words import DEFAULT_STOP_WORDS, StopWords, normalise_phrase
from pipeline.sender.throttle import TokenBucket

LANES = (TRANSACTIONAL, MARKETING)
DEFAULT_ALLOWED_REGIONS = frozenset({"RU", "KZ", "BY", "AM", "UZ", "KG"})
_DURATION = re.compile(r"([1-9]\d*)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# Records one problem: (where in the file, what is wrong).
Problem = Callable[[str, str], None]
_TOP_KEYS = ("quiet_hours", "frequency_caps", "allowed_regions", "routes", "stop_words")
ZONES_BY_COUNTRY = "zones_by_country"  # in `quiet_hours:`, next to the lanes


@dataclass(frozen=True)
class RouteRate:
    """A gateway route's submit rate: `binds` SMPP binds × `rate_per_bind` submits/s each.

    `burst` is how many submits may go at once after a pause (default: a tenth of a
    second's worth, at least 1), kept small so the SMSC does not answer ESME_RTHROTTLED.
    """

    binds: int
    rate_per_bind: float
    burst: int = 0

    def __post_init__(self) -> None:
        if self.burst <= 0:
            object.__setattr__(self, "burst", max(1, math.ceil(self.rate_per_s / 10)))

    @property
    def rate_per_s(self) -> float:
        return self.binds * self.rate_per_bind

    def bucket(self) -> TokenBucket:
        """A fresh token bucket for this route."""
        return TokenBucket(self.rate_per_s, self.burst)


@dataclass(frozen=True)
class Limits:
    """Everything the sender's policy checks are configured with. Immutable."""

    quiet_hours: Mapping[str, QuietHours] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_QUIET_HOURS))
    )
    frequency_caps: Mapping[str, FrequencyCaps] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_CAPS))
    )
    allowed_regions: frozenset[str] = DEFAULT_ALLOWED_REGIONS
    routes: Mapping[str, RouteRate] = field(default_factory=lambda: MappingProxyType({}))
    stop_words: StopWords = DEFAULT_STOP_WORDS
    # Region -> the zones its numbers can be in, for recipients whose profile has no valid
    # zone (`quiet_hours.zones_by_country`); a region not listed uses phonenumbers' zones.
    zones_by_country: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


def load_limits(path: Path | str) -> Limits:
    """Read and validate a limits YAML file; `ConfigError` lists every problem in it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_limits({} if data is None else data, source=str(path))


def parse_limits(data: Any, source: str = "limits.yaml") -> Limits:
    """Validate already-parsed YAML (`data`) into `Limits`; `ConfigError` on any problem."""
    problems: list[str] = []

    def problem(where: str, message: str) -> None:
        problems.append(f"{source}: {where}: {message}" if where else f"{source}: {message}")

    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}: must be a mapping of sections, got {_kind(data)}"])
    _unknown_keys(data, _TOP_KEYS, "", problem)
    limits = Limits()
    values: dict[str, Any] = {}
    if "quiet_hours" in data:
        section = data["quiet_hours"]
        if isinstance(section, Mapping) and ZONES_BY_COUNTRY in section:
            values["zones_by_country"] = _zones_by_country(section[ZONES_BY_COUNTRY], problem)
            section = {k: v for k, v in section.items() if k != ZONES_BY_COUNTRY}
        values["quiet_hours"] = _quiet_hours(section, problem)
    if "frequency_caps" in data:
        values["frequency_caps"] = _frequency_caps(data["frequency_caps"], problem)
    if "allowed_regions" in data:
        values["allowed_regions"] = _regions(data["allowed_regions"], problem)
    if "routes" in data:
        values["routes"] = _routes(data["routes"], problem)
    if "stop_words" in data:
        values["stop_words"] = _stop_words(data["stop_words"], problem)
    if problems:
        raise ConfigError(problems)
    return Limits(
        quiet_hours=values.get("quiet_hours", limits.quiet_hours),
        frequency_caps=values.get("frequency_caps", limits.frequency_caps),
        allowed_regions=values.get("allowed_regions", limits.allowed_regions),
        routes=values.get("routes", limits.routes),
        stop_words=values.get("stop_words", limits.stop_words),
        zones_by_country=values.get("zones_by_country", limits.zones_by_country),
    )


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _unknown_keys(
    data: Mapping[Any, Any], known: tuple[str, ...], where: str, problem: Problem
) -> None:
    for key in data:
        if key not in known:
            problem(where, f"unknown key {key!r} (expected: {', '.join(sorted(known))})")


def _lanes(section: Any, name: str, problem: Problem) -> dict[str, Any]:
    """The per-lane mapping of `section`, with unknown lanes reported."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        problem(name, f"must be a mapping of lane to settings, got {_kind(section)}")
        return {}
    lanes = {}
    for lane, value in section.items():
        if lane not in LANES:
            problem(name, f"unknown lane {lane!r} (expected: {', '.join(LANES)})")
        else:
            lanes[lane] = value
    return lanes


def _quiet_hours(section: Any, problem: Problem) -> Mapping[str, QuietHours]:
    rules = {}
    for lane, spec in _lanes(section, "quiet_hours", problem).items():
        where = f"quiet_hours.{lane}"
        if not isinstance(spec, Mapping):
            problem(
                where, f"must be a mapping with start, end, default_time_zone, got {_kind(spec)}"
            )
            continue
        _unknown_keys(spec, ("start", "end", "default_time_zone"), where, problem)
        minutes = {}
        for key in ("start", "end"):
            value = spec.get(key)
            if value is None:
                problem(where, f"missing {key!r} (a time of day 'HH:MM')")
            elif isinstance(value, int) and not isinstance(value, bool):
                problem(
                    f"{where}.{key}",
                    f"{value} is a number: quote the time, e.g. '21:00' "
                    "(YAML reads an unquoted 21:00 as 1260)",
                )
            else:
                try:
                    minutes[key] = parse_time(value)
                except ValueError as exc:
                    problem(f"{where}.{key}", str(exc))
        zone = spec.get("default_time_zone", "Europe/Moscow")
        if zone_or_none(zone) is None:
            problem(f"{where}.default_time_zone", f"unknown IANA time zone {zone!r}")
            continue
        if len(minutes) < 2:
            continue
        if minutes["start"] == minutes["end"]:
            problem(where, f"start and end are both {spec['start']!r}: an empty window")
            continue
        rules[lane] = QuietHours(minutes["start"], minutes["end"], zone)
    return MappingProxyType(rules)


def _zones_by_country(section: Any, problem: Problem) -> Mapping[str, tuple[str, ...]]:
    where = f"quiet_hours.{ZONES_BY_COUNTRY}"
    if section is None:
        return MappingProxyType({})
    if not isinstance(section, Mapping):
        problem(where, f"must be a mapping of region code to zones, got {_kind(section)}")
        return MappingProxyType({})
    result = {}
    for code, zones in section.items():
        at = f"{where}.{code}"
        if isinstance(code, bool):
            problem(at, f"{code} is not a region code (quote it: 'NO' reads as false in YAML)")
            continue
        if not isinstance(code, str) or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
            problem(at, f"{code!r} is not a known ISO 3166 region code (e.g. 'RU')")
            continue
        if not isinstance(zones, list) or not zones:
            problem(at, f"must be a non-empty list of IANA time zones, got {_kind(zones)}")
            continue
        bad = [z for z in zones if zone_or_none(z) is None]
        for zone in bad:
            problem(at, f"unknown IANA time zone {zone!r}")
        if not bad:
            result[code.upper()] = tuple(dict.fromkeys(zones))
    return MappingProxyType(result)


def _duration_s(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"must be a positive duration, got {value}")
        return value
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration: seconds, or a number with s, m, h or d ('24h', '7d')"
        )
    return int(match[1]) * _UNIT_S[match[2]]


def _frequency_caps(section: Any, problem: Problem) -> Mapping[str, FrequencyCaps]:
    result = {}
    for lane, caps in _lanes(section, "frequency_caps", problem).items():
        where = f"frequency_caps.{lane}"
        if not isinstance(caps, list):
            problem(where, f"must be a list of {{window, max}}, got {_kind(caps)}")
            continue
        parsed = []
        for index, spec in enumerate(caps):
            at = f"{where}[{index}]"
            if not isinstance(spec, Mapping):
                problem(at, f"must be a mapping with window and max, got {_kind(spec)}")
                continue
            _unknown_keys(spec, ("window", "max"), at, problem)
            window_s = max_count = None
            if "window" not in spec:
                problem(at, "missing 'window' (e.g. '24h')")
            else:
                try:
                    window_s = _duration_s(spec["window"])
                except ValueError as exc:
                    problem(f"{at}.window", str(exc))
            value = spec.get("max")
            if value is None:
                problem(at, "missing 'max' (sends allowed per window)")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problem(f"{at}.max", f"must be a whole number >= 0, got {_kind(value)}")
            else:
                max_count = value
            if window_s is not None and max_count is not None:
                parsed.append(Cap(window_s, max_count))
        result[lane] = FrequencyCaps(tuple(parsed))
    return MappingProxyType(result)


def _regions(section: Any, problem: Problem) -> frozenset[str]:
    if not isinstance(section, list) or not section:
        problem(
            "allowed_regions", f"must be a non-empty list of region codes, got {_kind(section)}"
        )
        return frozenset()
    regions = set()
    for index, code in enumerate(section):
        where = f"allowed_regions[{index}]"
        if isinstance(code, bool):
            problem(where, f"{code} is not a region code (quote it: 'NO' reads as false in YAML)")
        elif not isinstance(code, str) or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
            problem(where, f"{code!r} is not a known ISO 3166 region code (e.g. 'RU')")
        else:
            regions.add(code.upper())
    return frozenset(regions)


def _positive_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return math.isfinite(value) and value > 0


def _routes(section: Any, problem: Problem) -> Mapping[str, RouteRate]:
    if section is None:
        return MappingProxyType({})
    if not isinstance(section, Mapping):
        problem("routes", f"must be a mapping of route name to rates, got {_kind(section)}")
        return MappingProxyType({})
    routes = {}
    for name, spec in section.items():
        where = f"routes.{name}"
        if not isinstance(spec, Mapping):
            problem(where, f"must be a mapping with binds and rate_per_bind, got {_kind(spec)}")
            continue
        _unknown_keys(spec, ("binds", "rate_per_bind", "burst"), where, problem)
        ok = True
        for key, integer in (("binds", True), ("rate_per_bind", False)):
            if key not in spec:
                problem(where, f"missing {key!r}")
                ok = False
            elif not _positive_number(spec[key], integer):
                kind = "a whole number" if integer else "a number"
                problem(f"{where}.{key}", f"must be {kind} > 0, got {_kind(spec[key])}")
                ok = False
        burst = spec.get("burst", 0)
        if "burst" in spec and not _positive_number(burst, True):
            problem(f"{where}.burst", f"must be a whole number > 0, got {_kind(burst)}")
            ok = False
        if ok:
            routes[str(name)] = RouteRate(spec["binds"], float(spec["rate_per_bind"]), burst)
    return MappingProxyType(routes)


def _stop_words(section: Any, problem: Problem) -> StopWords:
    if not isinstance(section, Mapping):
        problem(
            "stop_words", f"must be a mapping with marketing and all_scopes, got {_kind(section)}"
        )
        return DEFAULT_STOP_WORDS
    _unknown_keys(section, ("marketing", "all_scopes"), "stop_words", problem)
    lists = {}
    for key in ("marketing", "all_scopes"):
        words = section.get(key, [])
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            problem(f"stop_words.{key}", f"must be a list of words or phrases, got {_kind(words)}")
            words = []
        for index, phrase in enumerate(words):
            if not normalise_phrase(phrase):
                problem(f"stop_words.{key}[{index}]", f"{phrase!r} has no letters or digits")
        lists[key] = words
    if not lists["marketing"] and not lists["all_scopes"]:
        problem("stop_words", "no stop words at all: customers could not opt out by SMS")
    return StopWords.of(lists["marketing"], lists["all_scopes"])
