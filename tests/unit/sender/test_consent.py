import pytest

from pipeline.sender.consent import (
    ConsentState,
    InvalidConsentChange,
    ScopeConsent,
    apply_change,
    check_consent,
)


def change(scope, status, at, source="web_form"):
    return {
        "phone": "+79161234567",
        "scope": scope,
        "status": status,
        "source": source,
        "changed_at_ms": at,
        "customer_id": None,
        "evidence": None,
    }


def fold(*changes):
    state = None
    for c in changes:
        state = apply_change(state, c)
    return state


def test_no_state_blocks_marketing_allows_transactional():
    reject = check_consent("marketing", None)
    assert (reject.status, reject.reason) == ("suppressed", "no_marketing_consent")
    assert check_consent("transactional", None) is None


def test_marketing_needs_explicit_opt_in():
    assert check_consent("marketing", fold(change("marketing", "opt_in", 100))) is None
    only_transactional = fold(change("transactional", "opt_in", 100))
    assert check_consent("marketing", only_transactional).reason == "no_marketing_consent"


def test_later_opt_out_wins_and_is_reported():
    state = fold(
        change("marketing", "opt_in", 100), change("marketing", "opt_out", 200, "sms_reply")
    )
    reject = check_consent("marketing", state)
    assert (reject.status, reject.reason) == ("suppressed", "opted_out")
    assert "sms_reply" in reject.detail


def test_order_of_arrival_does_not_matter():
    a = change("marketing", "opt_out", 100)
    b = change("marketing", "opt_in", 200)
    assert fold(a, b) == fold(b, a)
    assert check_consent("marketing", fold(b, a)) is None


def test_tie_opt_out_wins_in_either_order():
    opt_in, opt_out = change("marketing", "opt_in", 100), change("marketing", "opt_out", 100)
    for state in (fold(opt_in, opt_out), fold(opt_out, opt_in)):
        assert state.marketing.status == "opt_out"
        assert check_consent("marketing", state).reason == "opted_out"


def test_stale_or_repeated_change_returns_same_object():
    state = fold(change("marketing", "opt_in", 200))
    assert apply_change(state, change("marketing", "opt_out", 100)) is state
    assert apply_change(state, change("marketing", "opt_in", 200)) is state


def test_marketing_opt_out_does_not_block_transactional():
    state = fold(change("marketing", "opt_out", 100))
    assert check_consent("transactional", state) is None


def test_transactional_opt_out_blocks_transactional():
    state = fold(change("transactional", "opt_out", 100, "support"))
    assert check_consent("transactional", state).reason == "opted_out"


def test_transactional_opt_out_after_marketing_opt_in_blocks_marketing():
    later = fold(change("marketing", "opt_in", 100), change("transactional", "opt_out", 100))
    assert check_consent("marketing", later).reason == "opted_out"
    earlier = fold(change("transactional", "opt_out", 50), change("marketing", "opt_in", 100))
    assert check_consent("marketing", earlier) is None
    assert check_consent("transactional", earlier).reason == "opted_out"


def test_unknown_lane_is_rejected():
    assert check_consent("promo", None).status == "rejected"


@pytest.mark.parametrize(
    "bad",
    [
        {"scope": "ads", "status": "opt_in", "changed_at_ms": 1},
        {"scope": "marketing", "status": "maybe", "changed_at_ms": 1},
        {"scope": "marketing", "status": "opt_in", "changed_at_ms": None},
        {"scope": "marketing", "status": "opt_in", "changed_at_ms": True},
    ],
)
def test_invalid_changes_raise_permanent_error(bad):
    with pytest.raises(InvalidConsentChange) as info:
        apply_change(None, bad)
    assert info.value.retryable is False


def test_unknown_source_is_kept_as_other():
    state = fold(change("marketing", "opt_in", 1, source="partner_api"))
    assert state.marketing == ScopeConsent("opt_in", "other", 1)


def test_bytes_round_trip_and_size():
    state = fold(
        change("marketing", "opt_in", 1_700_000_000_000, "web_form"),
        change("transactional", "opt_out", 1_700_000_000_123, "support"),
    )
    data = state.to_bytes()
    assert len(data) == 19
    back = ConsentState.from_bytes(data)
    assert back == state
    assert back.transactional == ScopeConsent("opt_out", "support", 1_700_000_000_123)
    assert ConsentState.from_bytes(ConsentState().to_bytes()) == ConsentState()
    assert ConsentState().marketing is None


def test_negative_timestamps_survive_encoding():
    state = fold(change("marketing", "opt_in", -5))
    assert ConsentState.from_bytes(state.to_bytes()).marketing.changed_at_ms == -5


def test_from_bytes_rejects_garbage():
    with pytest.raises(InvalidConsentChange):
        ConsentState.from_bytes(b"xx")
    with pytest.raises(InvalidConsentChange):
        ConsentState.from_bytes(b"\x09" + bytes(18))
