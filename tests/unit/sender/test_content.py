"""Operator content rules: loading and every rejection reason."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.sender import content
from pipeline.sender.content import ContentRules, ContentVerdict, check_content
from pipeline.sender.decision import Reject

CONFIG = Path(__file__).resolve().parents[2] / "fixtures" / "config" / "content.yaml"  # the tests' copy
FOOTER = " Otpiska: STOP"


@pytest.fixture(scope="module")
def rules() -> ContentRules:
    return ContentRules.from_mapping(
        {
            "max_segments": 3,
            "cost_per_segment": 2.5,
            "registered_sender_ids": ["SHOP", "INFO"],
            "forbidden_words": ["казино", "casino", "кредит без проверки", "лёгкие деньги"],
            "link_domains": ["example.ru", "*.cdn.example.com", "s.rsl.ink"],
            "marketing_footer_patterns": [r"(?i)\b(stop|стоп|отписка)\b"],
        }
    )


def _reason(result: ContentVerdict | Reject) -> str:
    assert isinstance(result, Reject), result
    assert result.status == "rejected"
    return result.reason


def _ok(result: ContentVerdict | Reject) -> ContentVerdict:
    assert isinstance(result, ContentVerdict), result
    return result


def test_fixture_config_loads() -> None:
    loaded = ContentRules.load(CONFIG)
    assert loaded.max_segments == 6
    assert {"SHOPRU", "SHOP", "RASSYLKA", "INFO"} <= loaded.registered_sender_ids
    assert loaded.link_allowed("s.rsl.ink")
    assert loaded.has_opt_out_footer("Скидки! Отписка: СТОП")


def test_plain_transactional_text_passes(rules: ContentRules) -> None:
    verdict = _ok(check_content("Order 123 shipped", "transactional", "SHOP", rules, False))
    assert verdict.text_to_send == "Order 123 shipped"
    assert verdict.encoded == ("GSM7", 1)
    assert not verdict.transliterated
    assert verdict.cost == 2.5


@pytest.mark.parametrize(
    "text",
    ["Hi {{ name }}", "Hi {% if x %}", "Total ${amount}", "Dear {first_name}", "x }} y"],
)
def test_unrendered_placeholder(rules: ContentRules, text: str) -> None:
    assert _reason(check_content(text, "transactional", "SHOP", rules, False)) == (
        "unrendered_placeholder"
    )


def test_braces_that_are_not_placeholders_pass(rules: ContentRules) -> None:
    _ok(check_content("Code {1234} and set {a, b}", "transactional", "SHOP", rules, False))


def test_placeholder_is_checked_before_sender_id(rules: ContentRules) -> None:
    assert _reason(check_content("{{x}}", "transactional", "NOPE", rules, False)) == (
        "unrendered_placeholder"
    )


@pytest.mark.parametrize("sender_id", ["NOPE", "shop", "", "SHOP "])
def test_unregistered_sender_id(rules: ContentRules, sender_id: str) -> None:
    result = check_content("Order shipped", "transactional", sender_id, rules, False)
    assert _reason(result) == "unregistered_sender_id"


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("Лучшее КАЗИНО онлайн", "казино"),
        ("Play Casino!", "casino"),
        ("Кредит   без\nпроверки за 5 минут", "кредит без проверки"),
        ("Легкие деньги каждый день", "лёгкие деньги"),
        ("«Казино»", "казино"),
    ],
)
def test_forbidden_word(rules: ContentRules, text: str, word: str) -> None:
    result = check_content(text, "transactional", "SHOP", rules, False)
    assert _reason(result) == "forbidden_word"
    assert isinstance(result, Reject) and word in result.detail


@pytest.mark.parametrize(
    "text", ["Казиноград ждёт", "casinos nearby", "pseudocasino", "кредит одобрен"]
)
def test_forbidden_words_match_whole_words_only(rules: ContentRules, text: str) -> None:
    _ok(check_content(text, "transactional", "SHOP", rules, False))


@pytest.mark.parametrize(
    "text",
    [
        "Track: https://example.ru/t/1",
        "Track: http://shop.example.ru/t/1.",
        "Track: HTTPS://Pay.Example.RU:8443/x",
        "Track: www.example.ru/t",
        "Short: https://s.rsl.ink/aB3",
        "Img: https://img.cdn.example.com/a.png",
        "Mail us: support@www.example.org",  # an e-mail, not a link
    ],
)
def test_allowed_links(rules: ContentRules, text: str) -> None:
    _ok(check_content(text, "transactional", "SHOP", rules, False))


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("Go https://evil.com/x", "evil.com"),
        ("Go https://example.ru.evil.com/x", "example.ru.evil.com"),
        ("Go https://notexample.ru", "notexample.ru"),
        ("Go https://example.ru@evil.com/", "evil.com"),
        ("Go https://evil.com\\@example.ru/", "evil.com"),
        ("Go www.evil.ru now", "www.evil.ru"),
        ("Go https://cdn.example.com/", "cdn.example.com"),  # '*.' means subdomains only
        ("ok https://example.ru then http://bad.example.net", "bad.example.net"),
    ],
)
def test_link_domain_not_allowed(rules: ContentRules, text: str, host: str) -> None:
    result = check_content(text, "transactional", "SHOP", rules, False)
    assert _reason(result) == "link_domain_not_allowed"
    assert isinstance(result, Reject) and repr(host) in result.detail


def test_missing_opt_out_footer(rules: ContentRules) -> None:
    assert _reason(check_content("Sale -20%!", "marketing", "SHOP", rules, False)) == (
        "missing_opt_out_footer"
    )
    _ok(check_content("Sale -20%!" + FOOTER, "marketing", "SHOP", rules, False))
    _ok(check_content("Скидка 20%! Отписка: СТОП", "marketing", "SHOP", rules, False))
    _ok(check_content("Sale -20%!", "transactional", "SHOP", rules, False))


def test_unknown_lane(rules: ContentRules) -> None:
    assert _reason(check_content("Hi" + FOOTER, "Marketing", "SHOP", rules, False)) == (
        "unknown_lane"
    )


def test_too_many_segments(rules: ContentRules) -> None:
    _ok(check_content("a" * 153 * 3, "transactional", "SHOP", rules, False))
    result = check_content("a" * (153 * 3 + 1), "transactional", "SHOP", rules, False)
    assert _reason(result) == "too_many_segments"
    assert _reason(check_content("ж" * 202, "transactional", "SHOP", rules, False)) == (
        "too_many_segments"
    )


def test_transliteration_rescues_a_long_russian_text(rules: ContentRules) -> None:
    text = "Ваш заказ доставлен в пункт выдачи. " * 6  # 216 chars: 4 UCS-2 segments
    assert _reason(check_content(text, "transactional", "SHOP", rules, False)) == (
        "too_many_segments"
    )
    verdict = _ok(check_content(text, "transactional", "SHOP", rules, True))
    assert verdict.transliterated
    assert verdict.text_to_send.startswith("Vash zakaz dostavlen")
    assert verdict.encoded == ("GSM7", 2)
    assert verdict.cost == 5.0


def test_transliteration_kept_only_when_not_longer(rules: ContentRules) -> None:
    text = "щщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщщ"  # 70
    verdict = _ok(check_content(text, "transactional", "SHOP", rules, True))
    assert verdict.transliterated is False  # 'sch' × 70 = 210 septets, 2 segments
    assert verdict.encoded == ("UCS2", 1)


def test_no_transliteration_when_it_cannot_reach_gsm7(rules: ContentRules) -> None:
    verdict = _ok(check_content("Спасибо 😀", "transactional", "SHOP", rules, True))
    assert verdict.transliterated is False
    assert verdict.text_to_send == "Спасибо 😀"


def test_load_reports_unknown_and_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "content.yaml"
    path.write_text("max_segment: 6\ncost_per_segment: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        ContentRules.load(path)
    text = str(err.value)
    assert "unknown key 'max_segment'" in text
    assert "missing key 'max_segments'" in text
    assert "missing key 'link_domains'" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_segments": "6"}, "max_segments must be an integer"),
        ({"max_segments": True}, "max_segments must be an integer"),
        ({"max_segments": 0}, "max_segments must be an integer"),
        ({"cost_per_segment": -1}, "cost_per_segment must be a non-negative number"),
        ({"registered_sender_ids": "SHOP"}, "registered_sender_ids must be a list"),
        ({"registered_sender_ids": ["TOOLONGSENDERID"]}, "'TOOLONGSENDERID' is neither"),
        ({"forbidden_words": [1]}, "forbidden_words[0] must be a non-empty string"),
        ({"link_domains": ["https://x.ru"]}, "'https://x.ru' is not a domain"),
        ({"marketing_footer_patterns": ["(stop"]}, "is not a valid regular expression"),
        ({"marketing_footer_patterns": []}, "must hold at least one pattern"),
    ],
)
def test_load_reports_bad_values(tmp_path: Path, change: dict[str, object], message: str) -> None:
    import yaml

    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    data.update(change)
    path = tmp_path / "content.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        ContentRules.load(path)
    assert message in str(err.value)


@pytest.mark.parametrize("body", ["", "- a list\n", "key: [unclosed\n"])
def test_load_rejects_non_mapping_and_bad_yaml(tmp_path: Path, body: str) -> None:
    path = tmp_path / "content.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError):
        ContentRules.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ContentRules.load(tmp_path / "nope.yaml")


def test_the_link_search_skipped_for_texts_without_links_finds_what_the_full_search_finds() -> None:
    """`_links` skips the URL regex unless "://" or "www." (any case) is in the text: over
    texts built from link-like pieces, it finds exactly the matches of the full search."""
    rng = random.Random(7)
    pieces = ["www.", "WWW.", "wWw.", "Www", "ww.", "http://", "HTTPS://", "hTTp:/", "://", "shop.ru",
              "ex.com/a?b", "user@", " ", ".", "-", "/", "Привет", "ẘ", "W", "w", ":", "a", "1"]
    skipped = found = 0
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 8)))
        links = [m.span() for m in content._links(text)]
        assert links == [m.span() for m in content._URL.finditer(text)], text
        skipped += content._links(text) == ()
        found += bool(links)
    assert skipped > 1_000 and found > 1_000  # both ways were taken, often
