"""Quiet hours: no marketing SMS at night in the recipient's local time.

A `QuietHours` rule is a daily local window [start, end): quiet from `start` inclusive
until `end` exclusive; when start > end it crosses midnight (21:00–09:00). Times are local
wall-clock times in the recipient's zone, DST included: on a day whose clock jumps over a
boundary (a time that does not exist), the window turns at the jump; on a day that repeats
an hour, at the first occurrence.

Whose local time: the zone in the customer's profile when it is a valid IANA zone.
Without one (missing, or not a zone at all, e.g. 'Mars/Olympus') the number decides, and a
Russian mobile can be anywhere from Kaliningrad (UTC+2) to Kamchatka (UTC+12). So the
rule is conservative: the message goes only when the window is open in *every* zone the
number can be in (`recipient_zones`; a per-country list in `config/limits.yaml` overrides
phonenumbers' zones) and is held until the first instant when it is open in all of them at
once. When there is no such instant within `HORIZON_MS` (the windows of the westernmost and
easternmost zones never overlap), the request is suppressed `no_common_send_window`: there
is no hour at which it is certainly daytime for the recipient.

Per message this is a few int comparisons per zone: each (zone, rule) caches the epoch-ms
boundaries of the last few local days it saw and recomputes them once per local day.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.sender.decision import Reject, suppressed
from pipeline.sender.expiry import Hold

log = logging.getLogger(__name__)

REASON = "quiet_hours"
NO_COMMON_WINDOW = "no_common_send_window"
MINUTES_PER_DAY = 24 * 60
# How far ahead to look for an instant when the window is open in every candidate zone.
HORIZON_MS = 48 * 3600 * 1000
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_CACHE_LIMIT = 4096
_PLAN_DAYS = 3  # local days kept per (zone, rule): today, and the mornings holds end on
_WARNED_LIMIT = 10_000  # customers remembered as already warned about (oldest forgotten)
_MAX_ID_CHARS = 100


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


class _WarnOnce:
    """Remembers the last `limit` keys warned about, so each is logged once, in bounded memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True

    def clear(self) -> None:
        self._seen.clear()


_warned = _WarnOnce(_WARNED_LIMIT)


@lru_cache(maxsize=1024)
def _known_zones(keys: tuple[str, ...]) -> tuple[ZoneInfo, ...]:
    """The zones among `keys` that exist, without repeats, in order."""
    return tuple(dict.fromkeys(z for z in map(zone_or_none, keys) if z is not None))


def recipient_zones(
    profile_tz: str | None, number_zones: Iterable[str], customer_id: str | None = None
) -> tuple[ZoneInfo, ...]:
    """The zones the recipient can be in: the profile's if valid, else the number's.

    Called for requests of a lane with quiet hours. `number_zones` are the zones the number
    can be in (`NumberInfo.time_zones`, or the country's list from `config/limits.yaml`);
    unknown keys among them are skipped. () means nothing is known: the lane's default
    zone applies. Without a valid profile zone, logs a warning naming `customer_id` (once
    per customer, whatever the number of messages) when the zone is invalid or when the
    number does not pin down one zone; that log line is this function's only side effect.
    """
    zone = zone_or_none(profile_tz)
    if zone is not None:
        return (zone,)
    zones = _known_zones(tuple(number_zones))
    invalid = bool(profile_tz)
    if (invalid or len(zones) != 1) and _warned.first_time(str(customer_id)[:_MAX_ID_CHARS]):
        problem = (
            f"profile time zone {str(profile_tz)[:_MAX_ID_CHARS]!r} is not an IANA zone"
            if invalid
            else "no time zone in the profile"
        )
        log.warning(
            "customer %s: %s; quiet hours use every zone the number can be in (%d: %s)",
            str(customer_id)[:_MAX_ID_CHARS],
            problem,
            len(zones),
            ", ".join(z.key for z in zones) or "the lane's default zone",
        )
    return zones


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


# (zone, start, end) -> the last few local days seen, newest first, each
# (day_start_ms, next_day_ms, ((from_ms, to_ms, until_ms), ...))
_Plan = tuple[int, int, tuple[tuple[int, int, int], ...]]
_plans: dict[tuple[ZoneInfo, int, int], tuple[_Plan, ...]] = {}


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


def _zone_state(now_ms: int, zone: ZoneInfo, start: int, end: int) -> tuple[int | None, int]:
    """(when the quiet window ends if it is quiet at `now_ms`, else None; until when this
    answer holds at least). Needs start != end."""
    key = (zone, start, end)
    plans = _plans.get(key, ())
    for plan in plans:
        if plan[0] <= now_ms < plan[1]:
            break
    else:
        if len(_plans) >= _CACHE_LIMIT:
            _plans.clear()
        plan = _plan_day(zone, start, end, now_ms)
        _plans[key] = (plan, *plans[: _PLAN_DAYS - 1])
    stays_open_until = plan[1]
    for from_ms, to_ms, until_ms in plan[2]:
        if from_ms <= now_ms < to_ms:
            return until_ms, until_ms
        if now_ms < from_ms < stays_open_until:
            stays_open_until = from_ms
    return None, stays_open_until


def next_allowed_ms(now_ms: int, zone: ZoneInfo, window: QuietHours) -> int | None:
    """None when `now_ms` is outside the quiet window in `zone`; else when it ends (epoch ms).

    A window with start == end is empty (never quiet).
    """
    start, end = window.start_min, window.end_min
    if start == end:
        return None
    return _zone_state(now_ms, zone, start, end)[0]


# (zones, start, end) -> (from_ms, to_ms, open_at_ms): for any instant in [from_ms, to_ms)
# the first common open instant is open_at_ms, or that instant itself when it is None.
_common: dict[tuple[tuple[ZoneInfo, ...], int, int], tuple[int, int, int | None]] = {}


def next_common_open_ms(now_ms: int, zones: Sequence[ZoneInfo], window: QuietHours) -> int | None:
    """The first instant at or after `now_ms` when `window` is open in every one of `zones`.

    `now_ms` itself when it is open everywhere now; None when no such instant comes before
    `now_ms + HORIZON_MS`. Remembers the answer for the span of time it stays the same.
    """
    start, end = window.start_min, window.end_min
    if start == end:
        return now_ms
    key = (tuple(zones), start, end)
    known = _common.get(key)
    if known is not None and known[0] <= now_ms < known[1]:
        return now_ms if known[2] is None else known[2]
    at = now_ms
    while at < now_ms + HORIZON_MS:
        # Some zone is quiet until the latest of these ends: no earlier instant is open in all.
        quiet_until = open_until = None
        for zone in zones:
            until, holds_until = _zone_state(at, zone, start, end)
            if until is not None:
                quiet_until = until if quiet_until is None else max(quiet_until, until)
            elif open_until is None or holds_until < open_until:
                open_until = holds_until
        if quiet_until is None:
            break
        at = quiet_until
    else:
        return None
    if len(_common) >= _CACHE_LIMIT:
        _common.clear()
    if at == now_ms:
        _common[key] = (now_ms, open_until or now_ms, None)
    else:
        _common[key] = (now_ms, at, at)
    return at


def check_quiet_hours(
    lane: str, now_ms: int, zones: Sequence[ZoneInfo], cfg: Mapping[str, QuietHours]
) -> Hold | Reject | None:
    """Hold 'quiet_hours' while it is night in any of the recipient's `zones`.

    Called per request after the schedule check; `cfg` maps lane → rule (lanes without a
    rule, transactional by default, are never held). `zones` come from `recipient_zones`;
    () means the lane's `default_time_zone`. The hold lasts until the window is open in all
    of `zones` at once; when that never happens within `HORIZON_MS`, the request is
    suppressed `no_common_send_window`.
    """
    rule = cfg.get(lane)
    if rule is None:
        return None
    zones = zones or (rule.default_zone,)
    until_ms = next_common_open_ms(now_ms, zones, rule)
    if until_ms is None:
        return suppressed(
            NO_COMMON_WINDOW,
            f"no hour within {HORIZON_MS // 3_600_000} h is outside quiet hours in all "
            f"{len(zones)} zones the recipient can be in: {', '.join(z.key for z in zones)}",
        )
    if until_ms == now_ms:
        return None
    return Hold(until_ms, REASON)
