"""Recipient number normalisation."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import timezone

from pipeline.sender.decision import Reject
from pipeline.sender.numbers import NumberInfo, normalise

ALLOWED = frozenset({"RU", "KZ", "BY"})


@pytest.mark.parametrize(
    "phone", ["8 (916) 123-45-67", "+7 916 123 45 67", "89161234567", "9161234567", "+79161234567"]
)
def test_russian_mobile_in_any_format(phone: str) -> None:
    info = normalise(phone, "RU", ALLOWED)
    assert isinstance(info, NumberInfo)
    assert info.e164 == "+79161234567"
    assert info.region == "RU"
    assert info.time_zone is None  # Russian mobiles map to every Russian zone


def test_lowercase_default_region() -> None:
    assert isinstance(normalise("89161234567", "ru", ALLOWED), NumberInfo)


def test_moscow_landline_is_not_mobile() -> None:
    result = normalise("+7 495 123 45 67", "RU", ALLOWED)
    assert isinstance(result, Reject)
    assert (result.status, result.reason) == ("rejected", "not_mobile")
    assert "4951234567" not in result.detail  # numbers never appear in clear


def test_kazakh_mobile_has_region_and_operator() -> None:
    info = normalise("+7 701 123 45 67", "RU", ALLOWED)
    assert isinstance(info, NumberInfo)
    assert info.region == "KZ"
    assert info.operator


def test_single_zone_number_gets_its_zone() -> None:
    info = normalise("+375 29 123 45 67", "RU", ALLOWED)
    assert isinstance(info, NumberInfo)
    zones = timezone.time_zones_for_number(phonenumbers.parse("+375291234567"))
    assert len(zones) == 1
    assert info.time_zone == zones[0]


def test_country_not_allowed() -> None:
    result = normalise("+44 7911 123456", "RU", ALLOWED)
    assert isinstance(result, Reject)
    assert result.reason == "country_not_allowed"
    # The allowlist is applied after the cache: another caller may allow it.
    assert isinstance(normalise("+44 7911 123456", "RU", frozenset({"GG"})), NumberInfo)


@pytest.mark.parametrize(
    "phone",
    [
        "",
        "+",
        "abc",
        "++7",
        "0",
        "+7 916",
        "8 (000) 000-00-00",
        "9" * 10_000,
        "😀" * 11,
        "\x00\x01",
        "+7 916 123 45 67 89 01 23",
        "null",
        "None",
        " ",
        "+٧٩١٦",
    ],
)
def test_garbage_is_invalid_number(phone: str) -> None:
    result = normalise(phone, "RU", ALLOWED)
    assert isinstance(result, Reject)
    assert result.reason == "invalid_number"


@pytest.mark.parametrize("phone", [None, 79161234567, b"+79161234567", ["+79161234567"], {}])
def test_non_text_is_invalid_number(phone: object) -> None:
    result = normalise(phone, "RU", ALLOWED)  # type: ignore[arg-type]
    assert isinstance(result, Reject)
    assert result.reason == "invalid_number"


@pytest.mark.parametrize("region", ["", None, "ZZ", "XX", 7])
def test_bad_default_region_still_reads_international_numbers(region: object) -> None:
    info = normalise("+79161234567", region, ALLOWED)  # type: ignore[arg-type]
    assert isinstance(info, NumberInfo)
    result = normalise("89161234567", region, ALLOWED)  # type: ignore[arg-type]
    assert isinstance(result, Reject) and result.reason == "invalid_number"


def test_random_garbage_never_raises() -> None:
    rng = random.Random(7)
    alphabet = "0123456789+()-. x#*;,доб😀\x00\ud800٠９"
    for _ in range(5000):
        phone = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert isinstance(
            normalise(phone, rng.choice(["RU", "KZ", ""]), ALLOWED), NumberInfo | Reject
        )
