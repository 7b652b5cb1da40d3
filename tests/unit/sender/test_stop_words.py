import pytest

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
