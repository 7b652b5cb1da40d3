"""Tracked short links: shorten, verify, tamper rejection."""

from __future__ import annotations

import pytest

from pipeline.links import (
    ALPHABET,
    CODE_CHARS,
    DEV_SECRET,
    InvalidCode,
    link_base,
    link_secret,
    make_code,
    message_key,
    parse_code,
    shorten,
)
from pipeline.sms.encoding import segment_count

SECRET = "test-secret"
MID = "0123456789abcdef0123456789abcdef"


def code_of(short: str) -> str:
    return short.rsplit("/c/", 1)[1]


def test_round_trip_one_link():
    text, links = shorten("Track: https://track.example/A-1 now", MID, SECRET)
    assert links == ["https://track.example/A-1"]
    assert text.startswith("Track: https://s.rsl.ink/c/") and text.endswith(" now")
    code = code_of(text.split()[1])
    assert len(code) == CODE_CHARS
    ref = parse_code(code, SECRET)
    assert (ref.message_key, ref.index) == (message_key(MID), 0)


def test_multiple_links_get_their_own_index_and_trailing_punctuation_stays():
    text, links = shorten(
        "A https://a.example/x, B (http://b.example/y). C https://a.example/x!", MID, SECRET
    )
    assert links == ["https://a.example/x", "http://b.example/y", "https://a.example/x"]
    codes = [code_of(w.rstrip(",.!)")) for w in text.split() if "/c/" in w]
    assert [parse_code(c, SECRET).index for c in codes] == [0, 1, 2]
    assert "/c/" + codes[0] + "," in text and "/c/" + codes[1] + ")." in text
    assert text.endswith("!")


def test_no_url_leaves_text_alone():
    assert shorten("Заказ готов, ждём вас.", MID, SECRET) == ("Заказ готов, ждём вас.", [])


def test_existing_short_links_are_not_shortened_again():
    once, links = shorten("go https://shop.example/a", MID, SECRET)
    assert shorten(once, MID, SECRET) == (once, [])
    assert links == ["https://shop.example/a"]


def test_deterministic_per_message_and_distinct_across_messages():
    text = "https://shop.example/a"
    assert shorten(text, MID, SECRET) == shorten(text, MID, SECRET)
    assert shorten(text, MID, SECRET)[0] != shorten(text, "other-message", SECRET)[0]


def test_custom_base():
    text, _ = shorten("x https://shop.example/a", MID, SECRET, base="http://127.0.0.1:8080/")
    assert text.startswith("x http://127.0.0.1:8080/c/")


@pytest.mark.parametrize("position", [0, 5, 12, 13, 18])
def test_any_changed_character_is_rejected(position):
    code = make_code(MID, 1, SECRET)
    for other in ALPHABET[:5]:
        if other == code[position]:
            continue
        tampered = code[:position] + other + code[position + 1 :]
        with pytest.raises(InvalidCode):
            parse_code(tampered, SECRET)


@pytest.mark.parametrize("bad", ["", "short", "x" * 40, make_code(MID, 0, SECRET) + "A",
                                 make_code(MID, 0, SECRET)[:-1] + "-", "../../etc/passwd"])
def test_malformed_codes_are_rejected(bad):
    with pytest.raises(InvalidCode):
        parse_code(bad, SECRET)


def test_other_secret_is_rejected():
    with pytest.raises(InvalidCode):
        parse_code(make_code(MID, 0, SECRET), "another-secret")


def test_short_links_count_in_segments():
    long_url = "https://shop.example.ru/" + "p" * 200
    text, _ = shorten(f"Sale! {long_url}", MID, SECRET)
    assert segment_count(text).segments == 1
    assert segment_count(f"Sale! {long_url}").segments > 1


def test_secret_and_base_come_from_the_environment():
    assert link_secret({}) == DEV_SECRET
    assert link_secret({"RASSYLKA_LINK_SECRET": "s3"}) == "s3"
    assert link_base({"RASSYLKA_LINK_BASE": "https://go.example/"}) == "https://go.example"
