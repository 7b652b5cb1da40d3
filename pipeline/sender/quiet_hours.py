"""Quiet hours: no marketing SMS at night in the recipient's local time.

A `QuietHours` rule is a daily local window [start, end): quiet from `start` inclusive
until `end` exclusive; when start > end it crosses midnight (21:00–09:00). Times are local
wall-clock times in the recipient's zone, DST included: on a day whose clock jumps over a
boundary (a time that does not exist), the window turns at the jump; on a day that repeats
an hour, at the first occurrence.

Per message this is a few int comparisons: each (zone, rule) caches the epoch-ms
boundaries of the local day it last saw and recomputes them once per local day.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.sender.expiry import Hold

REASON = "quiet_hours"
MINUTES_PER_DAY = 24 * 60
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_CACHE_LIMIT = 4096


def parse_time(text: str) -> int:
    """Minutes after local midnight of 'HH:MM' (00:00–23:59); ValueError otherwise."""
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a time of day HH:MM (00:00-23:59)")
    return int(match[1]) * 60 + int(match[2])


@lru_cache(maxsize=1024)
def _zone(key: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def zone_or_none(key: str | None) -> ZoneInfo | None:
    """The IANA zone `key`, or None when it is empty or unknown. Cached."""
    if not key or not isinstance(key, str):
        return None
    return _zone(key)


@dataclass(frozen=True)
class QuietHours:
    """One lane's quiet window: minutes after local midnight, and the fallback zone."""

    start_min: int
    end_min: int
    default_time_zone: str = "Europe/Moscow"
    default_zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("start_min", "end_min"):
            value = getattr(self, name)
            if not 0 <= value < MINUTES_PER_DAY:
                raise ValueError(f"{name} must be within 0..1439 minutes, got {value}")
        zone = zone_or_none(self.default_time_zone)
        if zone is None:
            raise ValueError(f"unknown time zone {self.default_time_zone!r}")
        object.__setattr__(self, "default_zone", zone)

    @classmethod
    def of(cls, start: str, end: str, default_time_zone: str = "Europe/Moscow") -> QuietHours:
        """From config text: `QuietHours.of('21:00', '09:00', 'Europe/Moscow')`."""
        return cls(parse_time(start), parse_time(end), default_time_zone)


DEFAULT_QUIET_HOURS: Mapping[str, QuietHours] = MappingProxyType(
    {"marketing": QuietHours.of("21:00", "09:00")}
)


def resolve_zone(
    profile_tz: str | None, number_tz: str | None, default: str | ZoneInfo
) -> ZoneInfo:
    """The recipient's zone: the profile's if valid, else the number's, else `default`.

    `number_tz` must be the number's zone only when it is unique (`NumberInfo.time_zone`
    is); Russian mobiles map to every Russian zone and must fall back to the default.
    """
    zone = zone_or_none(profile_tz) or zone_or_none(number_tz)
    if zone is not None:
        return zone
    if isinstance(default, ZoneInfo):
        return default
    fallback = zone_or_none(default)
    if fallback is None:
        raise ValueError(f"unknown default time zone {default!r}")
    return fallback


def _local_to_ms(zone: ZoneInfo, day: date, minute: int) -> int:
    """Epoch ms of the first instant whose local wall clock in `zone` reads `day` `minute`."""
    naive = datetime(day.year, day.month, day.day, minute // 60, minute % 60)
    seconds = int(naive.replace(tzinfo=zone, fold=0).timestamp())
    if datetime.fromtimestamp(seconds, zone).replace(tzinfo=None) == naive:
        return seconds * 1000  # exists; fold=0 is the first of a repeated time
    # Skipped by a forward jump: the window turns at the jump, found by bisection between
    # the readings with the offsets after (earlier instant) and before (later instant).
    low = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    high = seconds
    if low > high:
        low, high = high, low
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high * 1000


# (zone, start, end) -> (day_start_ms, next_day_ms, ((from_ms, to_ms, until_ms), ...))
_Plan = tuple[int, int, tuple[tuple[int, int, int], ...]]
_plans: dict[tuple[ZoneInfo, int, int], _Plan] = {}


def _plan_day(zone: ZoneInfo, start: int, end: int, now_ms: int) -> _Plan:
    today = datetime.fromtimestamp(now_ms / 1000, zone).date()
    tomorrow = today + timedelta(days=1)
    day_start = _local_to_ms(zone, today, 0)
    next_day = _local_to_ms(zone, tomorrow, 0)
    start_ms = _local_to_ms(zone, today, start)
    end_ms = _local_to_ms(zone, today, end)
    if start < end:
        quiet = ((start_ms, end_ms, end_ms),)
    else:  # crosses midnight: the tail of last night, then the start of tonight
        quiet = (
            (day_start, end_ms, end_ms),
            (start_ms, next_day, _local_to_ms(zone, tomorrow, end)),
        )
    return day_start, next_day, quiet


def next_allowed_ms(now_ms: int, zone: ZoneInfo, window: QuietHours) -> int | None:
    """None when `now_ms` is outside the quiet window in `zone`; else when it ends (epoch ms).

    A window with start == end is empty (never quiet).
    """
    start, end = window.start_min, window.end_min
    if start == end:
        return None
    key = (zone, start, end)
    plan = _plans.get(key)
    if plan is None or not plan[0] <= now_ms < plan[1]:
        if len(_plans) >= _CACHE_LIMIT:
            _plans.clear()
        plan = _plans[key] = _plan_day(zone, start, end, now_ms)
    for from_ms, to_ms, until_ms in plan[2]:
        if from_ms <= now_ms < to_ms:
            return until_ms
    return None


def check_quiet_hours(
    lane: str, now_ms: int, zone: ZoneInfo | None, cfg: Mapping[str, QuietHours]
) -> Hold | None:
    """Hold 'quiet_hours' until the window ends when `lane` has quiet hours and it is night.

    Called per request after the schedule check; `cfg` maps lane → rule (lanes without a
    rule, transactional by default, are never held). `zone` is the recipient's zone from
    `resolve_zone`; None means the lane's `default_time_zone`.
    """
    rule = cfg.get(lane)
    if rule is None:
        return None
    until_ms = next_allowed_ms(now_ms, zone or rule.default_zone, rule)
    if until_ms is None:
        return None
    return Hold(until_ms, REASON)
