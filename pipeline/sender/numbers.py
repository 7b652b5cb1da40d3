"""Recipient number normalisation: the first sender check.

Turns the phone as typed in a customer profile into E.164, and rejects what cannot or may
not receive an SMS. Parsing is cached: the same recipients come back all the time. A
campaign's recipients are distinct, though, so a miss is kept cheap too: a number written
as '+' and digits skips phonenumbers' general parse (`_from_e164`: 22 µs a miss instead
of 40), and the number's region and type are worked out once and reused for validity,
policy, carrier and time zones (see `_region_and_type`).

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
from dataclasses import dataclass
from functools import lru_cache

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
from phonenumbers.phonenumberutil import _number_type_helper

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
    if any(ch.isalpha() for ch in phone):
        return rejected("invalid_number", "letters in a phone number (not dialled as keypad digits)")
    number = _from_e164(phone)
    if number is None:
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
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, regions[0])
    if metadata is None:
        return None
    prefix = metadata.national_prefix_for_parsing
    if prefix and re.match(prefix, national) is not None:
        return None
    return PhoneNumber(country_code=country_code, national_number=int(national))


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
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, regions[0])
        return regions[0], _number_type_helper(national_number, metadata)
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region)
        if metadata.leading_digits is not None:
            if re.match(metadata.leading_digits, national_number):
                return region, _number_type_helper(national_number, metadata)
        else:
            number_type = _number_type_helper(national_number, metadata)
            if number_type != PhoneNumberType.UNKNOWN:
                return region, number_type
    return "", PhoneNumberType.UNKNOWN


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
