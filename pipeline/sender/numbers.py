"""Recipient number normalisation: the first sender check.

Turns the phone as typed in a customer profile into E.164, and rejects what cannot or may
not receive an SMS. Parsing is cached: the same recipients come back all the time.

The policy, as phonenumbers' metadata sees a number:

* Accepted types are MOBILE and FIXED_LINE_OR_MOBILE. The second is a range the numbering
  plan does not split (the US and Canada, some others): such numbers usually take SMS, and
  refusing them would refuse most North American mobiles. Every other type (fixed line,
  toll-free, premium, VoIP, pager, ...) is `not_mobile`.
* The region checked against `allowed_regions` is the number's own region, not the
  customer's country nor the calling code: +44 7911 ... numbers are Guernsey (GG),
  +44 7797 ... Jersey (JE), +44 7624 ... the Isle of Man (IM). Allowing GB does not allow
  GG, JE or IM; list them as well to send there. Likewise +7 70x numbers are Kazakhstan
  (KZ), not RU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType
from phonenumbers import carrier as _carrier
from phonenumbers import timezone as _timezone

from pipeline.sender.decision import Reject, rejected

# Longer than any formatted phone number; also keeps garbage out of the cache.
MAX_PHONE_CHARS = 64
CACHE_SIZE = 65536

_SMS_CAPABLE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_UNKNOWN_ZONE = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class NumberInfo:
    """A recipient number fit for SMS.

    `operator` is the range holder by prefix (numbers ported between operators keep the
    old name), None when phonenumbers has no carrier data. `time_zones` are all the zones
    the number can be in by its prefix (() when phonenumbers does not know); `time_zone` is
    set only when that is exactly one zone: Russian mobiles map to all Russian zones and get
    None, so local time must come from the customer profile (see `quiet_hours`).
    """

    e164: str
    region: str
    operator: str | None
    time_zone: str | None
    time_zones: tuple[str, ...] = ()


def normalise(
    phone: str, default_region: str, allowed_regions: frozenset[str]
) -> NumberInfo | Reject:
    """Parse `phone` (national numbers read in `default_region`) into a `NumberInfo`.

    Called first for every request. Returns a 'rejected' `Reject` with reason
    `invalid_number` (not a number, or not a valid one), `not_mobile` (a landline or
    service number) or `country_not_allowed` (its region is outside `allowed_regions`).
    Never raises, whatever `phone` holds; details never repeat the number (they reach
    analytics, where numbers must not appear in clear).
    """
    info = parse_number(phone, default_region)
    if isinstance(info, Reject):
        return info
    if info.region not in allowed_regions:
        return rejected("country_not_allowed", f"{info.region} is not among the allowed regions")
    return info


def parse_number(phone: str, default_region: str) -> NumberInfo | Reject:
    """`normalise` without the allowed regions: `invalid_number` or `not_mobile`, else the
    number (its `region` is what `allowed_regions` is checked against)."""
    if not isinstance(phone, str) or not phone or len(phone) > MAX_PHONE_CHARS:
        return rejected("invalid_number", _describe_garbage(phone))
    region = default_region.upper() if isinstance(default_region, str) else ""
    return _parse(phone, region)


@lru_cache(maxsize=CACHE_SIZE)
def _parse(phone: str, region: str) -> NumberInfo | Reject:
    # phonenumbers reads letters as keypad digits (vanity numbers: 'ABC' -> 222), which
    # would turn a typo or garbage into a stranger's number. An SMS recipient is digits.
    if any(ch.isalpha() for ch in phone):
        return rejected("invalid_number", "letters in a phone number (not dialled as keypad digits)")
    try:
        number = phonenumbers.parse(phone, region or None)
    except NumberParseException as exc:
        return rejected("invalid_number", f"not a phone number: {exc}")
    if not phonenumbers.is_valid_number(number):
        return rejected("invalid_number", f"no such number range (+{number.country_code})")
    number_type = phonenumbers.number_type(number)
    if number_type not in _SMS_CAPABLE:
        kind = _TYPE_NAMES.get(number_type, "non-mobile")
        where = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        return rejected("not_mobile", f"a {kind} number in {where}")
    zones = _timezone.time_zones_for_number(number)  # shared tuples: not copied per number
    if _UNKNOWN_ZONE in zones:
        zones = tuple(z for z in zones if z != _UNKNOWN_ZONE)
    return NumberInfo(
        e164=phonenumbers.format_number(number, PhoneNumberFormat.E164),
        region=phonenumbers.region_code_for_number(number) or "",
        operator=_carrier.name_for_number(number, "en") or None,
        time_zone=zones[0] if len(zones) == 1 else None,
        time_zones=tuple(zones),
    )


def _describe_garbage(phone: object) -> str:
    if not isinstance(phone, str):
        return f"phone is {type(phone).__name__}, not text"
    if not phone:
        return "phone is empty"
    return f"phone is {len(phone)} characters long, more than {MAX_PHONE_CHARS}"


_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "fixed-line",
    PhoneNumberType.TOLL_FREE: "toll-free",
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.VOIP: "VoIP",
    PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "UAN",
    PhoneNumberType.VOICEMAIL: "voicemail",
}


def cache_info() -> tuple[int, int, int, int | None]:
    """Hits, misses, current size and max size of the parse cache (for metrics)."""
    hits, misses, maxsize, currsize = _parse.cache_info()
    return hits, misses, currsize, maxsize
