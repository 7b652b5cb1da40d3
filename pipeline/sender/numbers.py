"""Recipient number normalisation: the first sender check.

Turns the phone as typed in a customer profile into E.164, and rejects what cannot or may
not receive an SMS. Parsing is cached: the same recipients come back all the time. A
campaign's recipients are distinct, though, so a miss is kept cheap too: a number written
as '+' and digits skips phonenumbers' general parse (`_from_e164`: 22 µs a miss instead
of 40), the number's region and type are worked out once and reused for validity,
policy, carrier and time zones (see `_region_and_type`), and each region's type patterns
are compiled once (`_TypePlan`: 12 µs a miss instead of 19, on the AMD bench machine).

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

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneMetadata,
    PhoneNumber,
    PhoneNumberType,
)
from phonenumbers import carrier as _carrier
from phonenumbers import timezone as _timezone

from pipeline.sender.decision import Reject, rejected

# Longer than any formatted phone number; also keeps garbage out of the cache.
MAX_PHONE_CHARS = 64
CACHE_SIZE = 65536

# '+' and digits only, as numbers are mostly stored: parsed without phonenumbers' general
# machinery (see `_from_e164`)
_E164 = re.compile(r"\+[1-9]\d{6,16}")
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
    number = _from_e164(phone)  # '+' and digits: no letters
    if number is None:
        if any(ch.isalpha() for ch in phone):
            return rejected("invalid_number",
                            "letters in a phone number (not dialled as keypad digits)")
        try:
            number = phonenumbers.parse(phone, region or None)
        except NumberParseException as exc:
            return rejected("invalid_number", f"not a phone number: {exc}")
    country_code = number.country_code
    national_number = phonenumbers.national_significant_number(number)
    number_region, number_type = _region_and_type(country_code, national_number)
    if number_type == PhoneNumberType.UNKNOWN:
        return rejected("invalid_number", f"no such number range (+{country_code})")
    if number_type not in _SMS_CAPABLE:
        kind = _TYPE_NAMES.get(number_type, "non-mobile")
        return rejected("not_mobile", f"a {kind} number in {number_region}")
    # What time_zones_for_number and carrier.name_for_number do after working the type out
    # again: the type is known here.
    if phonenumbers.is_number_type_geographical(number_type, country_code):
        zones = _timezone.time_zones_for_geographical_number(number)
    else:
        zones = _timezone._country_level_time_zones_for_number(number)
    if _UNKNOWN_ZONE in zones:  # else the library's shared tuple, not copied per number
        zones = tuple(z for z in zones if z != _UNKNOWN_ZONE)
    return NumberInfo(
        e164=f"+{country_code}{national_number}",  # all format_number(E164) does here
        region=number_region,
        operator=_carrier.name_for_valid_number(number, "en") or None,
        time_zone=zones[0] if len(zones) == 1 else None,
        time_zones=tuple(zones),
    )


def _from_e164(phone: str) -> PhoneNumber | None:
    """`phonenumbers.parse(phone)` for a number written as '+' and digits only, without the
    general machinery (extensions, punctuation, RFC 3966, default regions), which was half
    the cost of a number not seen before; None when the number needs it: no such calling
    code, or what follows the code starts with a zero or with the region's national
    prefix (the general parse may strip that). `tests/unit/sender/test_numbers_e164.py`
    checks it gives what `phonenumbers.parse` gives."""
    if _E164.fullmatch(phone) is None:
        return None
    digits = phone[1:]
    for size in (1, 2, 3):  # the first length that is a calling code, as phonenumbers reads it
        country_code = int(digits[:size])
        regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
        if regions:
            break
    else:
        return None
    national = digits[size:]
    if national[0] == "0" or len(national) < 2:
        return None
    prefix = _national_prefix(country_code, regions[0])
    if prefix is not None and prefix(national) is not None:
        return None
    return PhoneNumber(country_code=country_code, national_number=int(national))


_ANY = re.compile("").match  # matches every number: leaves it to the general parse


@cache
def _national_prefix(country_code: int, region: str) -> Callable[[str], object] | None:
    """The compiled `match` of the calling code's national prefix for parsing (its first
    region's), None when it has none; one that matches everything when phonenumbers has no
    metadata for the code."""
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None:
        return _ANY
    pattern = metadata.national_prefix_for_parsing
    return re.compile(pattern).match if pattern else None


def _region_and_type(country_code: int, national_number: str) -> tuple[str, int]:
    """The number's region and its type there, matched against the patterns once.

    The same answers as `region_code_for_number` and `number_type`, type UNKNOWN meaning
    not `is_valid_number` (region "" then). Those public calls, with the ones inside
    `is_valid_number` and the carrier and time-zone lookups, each work the region and the
    type out afresh: four or five times per number, once over half the cost of a miss.
    A calling code shared by several regions (+1, +7, +44, ...) goes to the first of its
    regions, in phonenumbers' order, whose leading digits match or, if it has none, whose
    patterns give the number a type.
    """
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    if len(regions) == 1:  # also the non-geographic codes (+800, +882, ...): region "001"
        return regions[0], _type_plan(country_code, regions[0]).type_of(national_number)
    for region in regions:
        plan = _type_plan(country_code, region)
        if plan.leading_digits is not None:
            if plan.leading_digits(national_number):
                return region, plan.type_of(national_number)
        else:
            number_type = plan.type_of(national_number)
            if number_type != PhoneNumberType.UNKNOWN:
                return region, number_type
    return "", PhoneNumberType.UNKNOWN


Matcher = tuple[frozenset[int], Callable[[str], "re.Match[str] | None"]]
"""A number description's possible lengths (empty: any) and its pattern's fullmatch."""


class _TypePlan:
    """One region's number types, as `_number_type_helper` in phonenumbers finds them, from
    patterns compiled once: the library looks each pattern up again per number, which was
    most of the cost of a number not seen before. Same descriptions, same order, same
    answers (`tests/unit/sender/test_numbers_fast.py` checks them against the public calls).
    """

    __slots__ = ("general", "special", "fixed_line", "mobile", "same_mobile_and_fixed",
                 "leading_digits")

    def __init__(self, metadata: PhoneMetadata) -> None:
        self.general = _matcher(metadata.general_desc)
        self.special = tuple((number_type, m) for number_type, m in (
            (PhoneNumberType.PREMIUM_RATE, _matcher(metadata.premium_rate)),
            (PhoneNumberType.TOLL_FREE, _matcher(metadata.toll_free)),
            (PhoneNumberType.SHARED_COST, _matcher(metadata.shared_cost)),
            (PhoneNumberType.VOIP, _matcher(metadata.voip)),
            (PhoneNumberType.PERSONAL_NUMBER, _matcher(metadata.personal_number)),
            (PhoneNumberType.PAGER, _matcher(metadata.pager)),
            (PhoneNumberType.UAN, _matcher(metadata.uan)),
            (PhoneNumberType.VOICEMAIL, _matcher(metadata.voicemail)),
        ) if m is not None)
        self.fixed_line = _matcher(metadata.fixed_line)
        self.mobile = _matcher(metadata.mobile)
        self.same_mobile_and_fixed = bool(metadata.same_mobile_and_fixed_line_pattern)
        digits = metadata.leading_digits
        self.leading_digits = None if digits is None else re.compile(digits).match

    def type_of(self, national_number: str) -> int:
        if not _matches(self.general, national_number):
            return PhoneNumberType.UNKNOWN
        for number_type, matcher in self.special:
            if _matches(matcher, national_number):
                return number_type
        if _matches(self.fixed_line, national_number):
            if self.same_mobile_and_fixed or _matches(self.mobile, national_number):
                return PhoneNumberType.FIXED_LINE_OR_MOBILE
            return PhoneNumberType.FIXED_LINE
        if not self.same_mobile_and_fixed and _matches(self.mobile, national_number):
            return PhoneNumberType.MOBILE
        return PhoneNumberType.UNKNOWN


def _matcher(desc: Any) -> Matcher | None:
    """None for a description nothing matches (absent, or without a pattern)."""
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length), re.compile(desc.national_number_pattern).fullmatch


def _matches(matcher: Matcher | None, national_number: str) -> bool:
    if matcher is None:
        return False
    lengths, fullmatch = matcher
    if lengths and len(national_number) not in lengths:
        return False
    return fullmatch(national_number) is not None


@cache
def _type_plan(country_code: int, region: str) -> _TypePlan:
    """The region's plan ("001": the calling code's non-geographic one), built once."""
    return _TypePlan(PhoneMetadata.metadata_for_region_or_calling_code(country_code, region))


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
