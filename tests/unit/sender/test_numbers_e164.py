"""The E.164 shortcut of number parsing gives exactly what `phonenumbers.parse` gives.

`numbers._from_e164` parses '+' and digits without phonenumbers' general machinery; where
it answers, its number must equal the library's, field by field, or a check downstream
(type, region, allowed regions, carrier, time zones) could judge another number.
"""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from pipeline.sender import numbers

TYPES = [value for name, value in vars(PhoneNumberType).items() if name.isupper()]


def _example_numbers() -> list[str]:
    found = set()
    regions = set(phonenumbers.SUPPORTED_REGIONS)
    for region in regions:
        for kind in TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                found.add(phonenumbers.format_number(example, PhoneNumberFormat.E164))
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            found.add(phonenumbers.format_number(example, PhoneNumberFormat.E164))
    return sorted(found)


def _same_as_the_library(phone: str) -> bool:
    """True when the shortcut answers; then its number must be the library's."""
    fast = numbers._from_e164(phone)
    if fast is None:
        return False
    assert fast == phonenumbers.parse(phone, None), phone
    return True


def test_every_example_number_of_every_region_and_type_parses_as_the_library_does() -> None:
    examples = _example_numbers()
    taken = sum(_same_as_the_library(phone) for phone in examples)
    assert len(examples) > 900
    assert taken > len(examples) * 0.8  # the shortcut is the usual way, not the exception


def test_random_digits_after_a_plus_parse_as_the_library_does() -> None:
    rng = random.Random(20261202)
    taken = 0
    for _ in range(60_000):
        phone = "+" + str(rng.randint(1, 9)) + "".join(
            rng.choice("0123456789") for _ in range(rng.randint(6, 16)))
        taken += _same_as_the_library(phone)
    assert taken > 30_000


def test_prefixes_zeros_and_unknown_codes_are_left_to_the_library() -> None:
    assert numbers._from_e164("+4407911123456") is None  # UK national prefix after the code
    assert numbers._from_e164("+390612345678") is None  # Italian leading zero
    assert numbers._from_e164("+999123456789") is None  # no such calling code
    assert numbers._from_e164("+7 926 000 00 05") is None  # punctuation: the general parse


@pytest.mark.parametrize("phone", ["+79260000005", "+447911123456", "+12015550123"])
def test_the_shortcut_and_the_general_parse_judge_alike(phone: str) -> None:
    assert numbers._from_e164(phone) is not None
    fast = numbers._parse.__wrapped__(phone, "RU")
    slow = numbers._parse.__wrapped__(phone.replace("+", "+ "), "RU")  # forced the general way
    assert fast == slow
