import pytest

from pipeline.analytics.privacy import mask, phone_hash, scrub, scrub_segment


def test_hash_is_keyed_stable_hex_16_bytes() -> None:
    h = phone_hash("+79161234567", "k1")
    assert h == phone_hash("+79161234567", "k1")
    assert len(h) == 32 and int(h, 16) >= 0
    assert h != phone_hash("+79161234567", "k2")
    assert h != phone_hash("+79161234568", "k1")
    assert "79161234567" not in h


def test_hash_ignores_formatting_and_accepts_long_keys() -> None:
    assert phone_hash(" +7 916 123-45-67 ", "k") == phone_hash("+79161234567", "k")
    assert len(phone_hash("+79161234567", "x" * 200)) == 32
    assert phone_hash("+79161234567", b"k") == phone_hash("+79161234567", "k")


def test_hash_needs_a_key() -> None:
    with pytest.raises(ValueError):
        phone_hash("+79161234567", "")


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+79161234567", "+7916*****67"),
        ("+447911123456", "+4479******56"),
        ("+12345", "+***45"),
        ("+1", "+*"),
        ("", ""),
    ],
)
def test_mask(number: str, masked: str) -> None:
    assert mask(number) == masked


def test_scrub_masks_the_number_in_free_text() -> None:
    text = "STOP +79161234567 / 79161234567"
    assert scrub(text, "+79161234567") == "STOP +7916*****67 / 7916*****67"
    assert scrub(None, "+79161234567") is None
    assert scrub("СТОП", "+79161234567") == "СТОП"


@pytest.mark.parametrize("written", [
    "8 (916) 123-45-67", "+7 916 123 45 67", "8-916-123-45-67", "7(916)1234567", "89161234567",
    "9161234567", "+7 (916) 123.45.67",
])
def test_scrub_masks_the_number_however_the_customer_wrote_it(written: str) -> None:
    """Regression: only "+79161234567" and "79161234567" were masked; a customer who wrote
    their number the way people do ("8 (916) 123-45-67") had it stored in clear."""
    got = scrub(f"Перезвоните мне на {written}, пожалуйста", "+79161234567")
    assert got is not None and "1234567" not in got.replace("-", "").replace(" ", "")
    assert got.startswith("Перезвоните мне на ") and got.endswith(", пожалуйста")
    assert "+7916*****67" in got


def test_scrub_masks_other_numbers_in_the_text_too() -> None:
    """Regression: only the customer's own number was masked; a reply naming someone
    else's ("звонил с 8 (916) 765-43-21") reached ClickHouse with that number in clear."""
    text = "Заказ 12345, звонил с 8 (916) 765-43-21, а друг с +44 7911 123456"
    assert scrub(text, "+79161234567") == \
        "Заказ 12345, звонил с +7916*****21, а друг с +4479******56"
    # written without a country code: read in the customer's own region
    assert scrub("тел 9031112233", "+79161234567") == "тел +7903*****33"


@pytest.mark.parametrize("text", [
    "Заказ 12345 готов", "Заказ 1234567890 готов", "ИНН 7707083893", "карта 4276 1234 5678 9012",
    "код 123456", "на сумму 1 250 000 руб", "+7916*****67 ok",
])
def test_scrub_leaves_digits_that_are_no_phone_number(text: str) -> None:
    assert scrub(text, "+79161234567") == text
    assert scrub(text, "") == text


@pytest.mark.parametrize("first, second", [
    ("Перезвоните на 8 (916) 12", "3-45-67, спасибо"),
    ("Мой номер +7916", "1234567"),
    ("Мой номер 89161", "234567 жду"),
])
def test_a_number_split_between_two_segments_is_masked_in_both(first: str, second: str) -> None:
    """Each segment of a long reply is stored alone and the `replies` view joins them: a
    number cut in two by the segment boundary passed `scrub` in both halves and showed whole
    in the view."""
    joined = scrub_segment(first, "+79161234567") + scrub_segment(second, "+79161234567")
    assert "4567" not in joined and "+7916*****67" in joined


def test_a_segment_keeps_numbers_that_cannot_be_part_of_the_customers() -> None:
    for text in ("Заказ 12", "34 шт", "Заказ 12345 готов", "12345 руб"):
        assert scrub_segment(text, "+79161234567") == text
