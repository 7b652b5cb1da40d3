"""Number normalisation gives what plain public phonenumbers calls give.

`pipeline.sender.numbers` finds a number's region and type once, from phonenumbers'
metadata, instead of through the public calls that each work them out again. The
reference below is the straightforward version, made of those public calls; the two must
agree on every field of every `NumberInfo` and on the reason and detail of every `Reject`,
over numbers of every region and type, in several formats and default regions, mutated
into neighbours (often of another region sharing the calling code, or invalid) and garbage.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, carrier, timezone

from pipeline.sender.decision import Reject, rejected
from pipeline.sender.numbers import MAX_PHONE_CHARS, NumberInfo, normalise

ALLOWED = frozenset({"RU", "KZ", "BY", "GB", "GG", "IM", "US", "CA", "JM", "DE", "001"})
DEFAULT_REGIONS = ["RU", "ru", "KZ", "BY", "US", "CA", "GB", "GG", "JE", "IM", "DE", "IT", ""]
SMS_CAPABLE = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
TYPE_NAMES = {
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


def reference_normalise(
    phone: object, default_region: object, allowed_regions: frozenset[str]
) -> NumberInfo | Reject:
    """The policy of `normalise`, written with the public phonenumbers calls only."""
    if not isinstance(phone, str):
        return rejected("invalid_number", f"phone is {type(phone).__name__}, not text")
    if not phone:
        return rejected("invalid_number", "phone is empty")
    if len(phone) > MAX_PHONE_CHARS:
        return rejected(
            "invalid_number", f"phone is {len(phone)} characters long, more than {MAX_PHONE_CHARS}"
        )
    region = default_region.upper() if isinstance(default_region, str) else ""
    if any(ch.isalpha() for ch in phone):
        return rejected(
            "invalid_number", "letters in a phone number (not dialled as keypad digits)"
        )
    try:
        number = phonenumbers.parse(phone, region or None)
    except NumberParseException as exc:
        return rejected("invalid_number", f"not a phone number: {exc}")
    if not phonenumbers.is_valid_number(number):
        return rejected("invalid_number", f"no such number range (+{number.country_code})")
    number_type = phonenumbers.number_type(number)
    if number_type not in SMS_CAPABLE:
        kind = TYPE_NAMES.get(number_type, "non-mobile")
        where = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        return rejected("not_mobile", f"a {kind} number in {where}")
    zones = tuple(
        z for z in timezone.time_zones_for_number(number) if z != timezone.UNKNOWN_TIMEZONE
    )
    info = NumberInfo(
        e164=phonenumbers.format_number(number, PhoneNumberFormat.E164),
        region=phonenumbers.region_code_for_number(number) or "",
        operator=carrier.name_for_number(number, "en") or None,
        time_zone=zones[0] if len(zones) == 1 else None,
        time_zones=zones,
    )
    if info.region not in allowed_regions:
        return rejected("country_not_allowed", f"{info.region} is not among the allowed regions")
    return info


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _example_numbers() -> Iterator[tuple[str, phonenumbers.PhoneNumber]]:
    """An example number of every type of every region, and of every non-geographic code."""
    types = [t for t in PhoneNumberType.values() if t != PhoneNumberType.UNKNOWN]
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in types:
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is not None:
                yield region, example
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            yield "001", example


def _variants(
    rng: random.Random, region: str, example: phonenumbers.PhoneNumber
) -> Iterator[tuple[str, str]]:
    """The example as typed in several ways, read in its region or another, and neighbours."""
    e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
    national = phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)
    yield e164, rng.choice(DEFAULT_REGIONS)
    yield national, region
    yield (
        rng.choice(
            [
                national,
                phonenumbers.format_number(example, PhoneNumberFormat.INTERNATIONAL),
                phonenumbers.format_number(example, PhoneNumberFormat.RFC3966),
                e164[:-1],
                e164 + rng.choice("0123456789"),
                e164[1:],
            ]
        ),
        rng.choice([region, *DEFAULT_REGIONS]),
    )
    tail = rng.randint(1, 5)
    yield e164[:-tail] + _digits(rng, tail), region  # a neighbour: often valid, sometimes not
    yield e164[:-5] + _digits(rng, 5), rng.choice(DEFAULT_REGIONS)


def _shared_calling_codes(rng: random.Random) -> Iterator[str]:
    """Random numbers under calling codes several regions share, in every region's ranges."""
    for _ in range(300):
        yield f"+7{rng.choice('3456789')}{_digits(rng, 9)}"  # RU ranges, and KZ's from +7 7
        yield f"+79{_digits(rng, 9)}"
        yield f"+770{_digits(rng, 8)}"
        yield f"+447{rng.choice(['781', '797', '624', '911', '839', '457'])}{_digits(rng, 6)}"
        yield f"+44{rng.choice('123789')}{_digits(rng, 9)}"
    nanpa = [
        "201", "212", "416", "604", "268", "264", "684", "246", "441", "242", "767", "809",
        "829", "849", "473", "671", "876", "658", "869", "345", "758", "670", "664", "787",
        "939", "721", "649", "868", "784", "284", "340", "800", "900", "555",
    ]  # fmt: skip
    for _ in range(400):
        yield f"+1{rng.choice(nanpa)}{rng.randint(100, 999)}{_digits(rng, 4)}"
    for code in ("47", "61", "262", "590", "599", "212", "358", "39", "290"):
        for _ in range(20):
            yield f"+{code}{_digits(rng, rng.randint(6, 11))}"


GARBAGE: list[object] = [
    "",
    " ",
    "+",
    "++7",
    "0",
    "abc",
    "null",
    "+7 916",
    "8 (000) 000-00-00",
    "+7 916 123 45 67 89 01 23",
    "+7 916 123 45 67 доб. 12",
    "+7 916 123 45 67 ext. 12",
    "+7 916 123 45 67 #12",
    "+7 916 123 45 67;12",
    "tel:+7-916-123-45-67",
    "+٧٩١٦١٢٣٤٥٦٧",  # Arabic-Indic digits: a valid Russian mobile to phonenumbers
    "+７９１６１２３４５６７",  # full-width digits
    "+7 916 123²45 67",
    "1-800-FLOWERS",
    "00 7 916 123 45 67",
    "810 7 916 123 45 67",
    "011 1 212 555 0100",
    "8 10 44 7911 123456",
    "+800 1234 5678",
    "+882 1234 5678",
    "+999 123 456 789",
    "+0 123 456 789",
    "9" * MAX_PHONE_CHARS,
    "9" * (MAX_PHONE_CHARS + 1),
    "😀" * 11,
    "\x00\x01",
    "\ud800",
    None,
    79161234567,
    b"+79161234567",
]


def _cases() -> list[tuple[object, object]]:
    rng = random.Random(20240611)
    cases: list[tuple[object, object]] = []
    for region, example in _example_numbers():
        cases.extend(_variants(rng, region, example))
    for phone in _shared_calling_codes(rng):
        cases.append((phone, rng.choice(DEFAULT_REGIONS)))
        cases.append((phone.replace("+", "", 1), rng.choice(DEFAULT_REGIONS)))  # as national
    for _ in range(500):
        phone = rng.choice(["+", ""]) + _digits(rng, rng.randint(1, 18))
        cases.append((phone, rng.choice(DEFAULT_REGIONS)))
    for phone in GARBAGE:
        for region in ["RU", "US", "", "ZZ", None, 7]:
            cases.append((phone, region))
    return cases


CASES = _cases()


def test_same_results_as_plain_phonenumbers_calls() -> None:
    mismatches = []
    outcomes: Counter[str] = Counter()
    for phone, region in CASES:
        expected = reference_normalise(phone, region, ALLOWED)
        actual = normalise(phone, region, ALLOWED)  # type: ignore[arg-type]
        if actual != expected:  # dataclass equality: same class, every field equal
            mismatches.append((phone, region, expected, actual))
        outcomes[expected.region if isinstance(expected, NumberInfo) else expected.reason] += 1
    assert mismatches[:10] == []
    # The cases reach what the fast path decides differently from the public calls: every
    # outcome, regions that share a calling code, and a non-geographic number.
    assert {"invalid_number", "not_mobile", "country_not_allowed"} <= set(outcomes)
    assert {"RU", "KZ", "GB", "GG", "IM", "US", "CA", "JM", "001"} <= set(outcomes)
    assert len(CASES) > 5000


def test_every_region_of_a_calling_code_has_its_metadata() -> None:
    # The fast path reads each listed region's metadata without the None and calling-code
    # checks `is_valid_number` makes: they hold for every region phonenumbers lists.
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            assert metadata is not None and metadata.country_code == code, (code, region)
