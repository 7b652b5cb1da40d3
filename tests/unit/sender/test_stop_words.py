import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.sender.setup import load_policy
from pipeline.sender.stop_words import StopWords, consent_changes_for_stop, is_stop, stop_scopes


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        "  stop!!",
        "«Стоп»",
        "Stop.",
        "СТОП",
        "отписка",
        "Отписаться!",
        "UNSUBSCRIBE",
        '"stop"',
        "🛑 STOP 🛑",
        "stop stop",
        "Стоп, стоп!",
        "ＳＴＯＰ",
        "CTOП",
        "\tотписка\n",
        "СТОП)",
    ],
)
def test_stop_variants(text):
    assert is_stop(text)


@pytest.mark.parametrize(
    "text",
    [
        "stopwatch",
        "не стоп-кран",
        "стоп-кран",
        "stop 2",
        "please stop calling me",
        "",
        "   ",
        "!!!",
        "🛑",
        "Отпишитесь",
        "end",
        "STOPS",
    ],
)
def test_not_stop(text):
    assert not is_stop(text)


def test_non_string_is_not_stop():
    assert not is_stop(None)  # type: ignore[arg-type]


def test_stopall_opts_out_of_both_scopes():
    assert stop_scopes("STOPALL") == ("marketing", "transactional")
    assert stop_scopes("stop") == ("marketing",)


def test_configurable_words():
    words = StopWords.of(["END", "Хватит"], ["ВСЁ"])
    assert is_stop("end.", words)
    assert is_stop("хватит", words)
    assert not is_stop("stop", words)
    assert stop_scopes("Все!", words) == ("marketing", "transactional")


def inbound(text, received_at_ms=1_000):
    return {
        "inbound_id": "in-1",
        "from_number": "+79161234567",
        "to": "RASSYLKA",
        "text": text,
        "received_at_ms": received_at_ms,
        "gateway": None,
    }


def test_stop_reply_opts_out_of_marketing_only():
    changes = consent_changes_for_stop(inbound("  Стоп! "), now_ms=5_000)
    assert changes == [
        {
            "phone": "+79161234567",
            "scope": "marketing",
            "status": "opt_out",
            "source": "sms_reply",
            "changed_at_ms": 1_000,
            "customer_id": None,
            "evidence": "  Стоп! ",
        }
    ]


def test_stopall_reply_opts_out_of_both():
    scopes = [c["scope"] for c in consent_changes_for_stop(inbound("STOPALL"), 5_000)]
    assert scopes == ["marketing", "transactional"]


def test_not_a_stop_makes_no_change():
    assert consent_changes_for_stop(inbound("Спасибо"), 5_000) == []
    assert consent_changes_for_stop({"text": None, "from_number": "+7"}, 5_000) == []


def test_change_time_is_received_at_but_never_in_the_future():
    assert consent_changes_for_stop(inbound("stop", 9_000), 5_000)[0]["changed_at_ms"] == 5_000
    assert consent_changes_for_stop(inbound("stop", None), 5_000)[0]["changed_at_ms"] == 5_000


def test_stop_change_applies_to_consent():
    from pipeline.sender.consent import apply_change, check_consent

    state = apply_change(
        None, {"scope": "marketing", "status": "opt_in", "source": "web_form", "changed_at_ms": 500}
    )
    for c in consent_changes_for_stop(inbound("STOP"), 5_000):
        state = apply_change(state, c)
    assert check_consent("marketing", state).reason == "opted_out"
    assert check_consent("transactional", state) is None


@pytest.mark.parametrize(
    "text",
    [
        "STOP ALL",
        "stop all",
        "Stop, all!",
        "СТОП ВСЕ",
        "стоп всё",
        "«Стоп, всё!»",
        "stop stop all",
        "STOPALL",
    ],
)
def test_stop_all_with_a_space_opts_out_of_both_scopes(text):
    assert stop_scopes(text) == ("marketing", "transactional")


@pytest.mark.parametrize("text", ["all", "всё", "all stop", "stop all please", "stop allowed"])
def test_all_words_alone_or_out_of_order_are_not_stop_all(text):
    assert stop_scopes(text) != ("marketing", "transactional")


def test_configured_phrases_are_normalised_like_replies():
    words = StopWords.of(["Хватит!", "не пишите"], ["Хватит всего"])
    assert words.marketing == frozenset({"хватит", "не пишите"})
    assert stop_scopes("НЕ ПИШИТЕ.", words) == ("marketing",)
    assert stop_scopes("не", words) == ()
    assert stop_scopes("хватит, хватит всего", words) == ("marketing", "transactional")


def test_configured_word_opts_out_where_the_default_does_not():
    words = StopWords.of(["СТОП", "ХВАТИТ"], ["STOPALL"])
    assert consent_changes_for_stop(inbound("Хватит!"), 5_000) == []
    changes = consent_changes_for_stop(inbound("Хватит!"), 5_000, words)
    assert [(c["scope"], c["status"]) for c in changes] == [("marketing", "opt_out")]


def test_the_senders_policy_carries_the_configured_words(tmp_path):
    # The worker's inbound path calls consent_changes_for_stop(inbound, now,
    # policy.stop_words) with the policy load_policy builds from config/.
    config = tmp_path / "config"
    shutil.copytree(Path(__file__).resolve().parents[3] / "config", config)
    limits = yaml.safe_load((config / "limits.yaml").read_text(encoding="utf-8"))
    limits["stop_words"] = {"marketing": ["STOP", "СТОП", "ХВАТИТ"], "all_scopes": ["СТОП ВСЕ"]}
    (config / "limits.yaml").write_text(yaml.safe_dump(limits, allow_unicode=True), "utf-8")
    policy, _ = load_policy(config)

    changes = consent_changes_for_stop(inbound("  хватит. "), 5_000, policy.stop_words)
    assert [(c["phone"], c["scope"], c["status"]) for c in changes] == [
        ("+79161234567", "marketing", "opt_out")
    ]
    both = consent_changes_for_stop(inbound("Стоп, всё"), 5_000, policy.stop_words)
    assert [c["scope"] for c in both] == ["marketing", "transactional"]
    assert consent_changes_for_stop(inbound("unsubscribe"), 5_000, policy.stop_words) == []
