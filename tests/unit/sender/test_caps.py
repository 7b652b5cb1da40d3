import pytest

from pipeline.sender.caps import (
    DEFAULT_CAPS,
    Cap,
    CapState,
    FrequencyCaps,
    InvalidCapState,
    check_caps,
    record_send,
)

DAY = 86_400_000
CAPS = {"marketing": FrequencyCaps((Cap(86_400, 2), Cap(7 * 86_400, 3)))}


def sends(*times):
    state = None
    for at in times:
        state = record_send(state, at, CAPS["marketing"])
    return state


def test_under_the_cap_is_allowed():
    assert check_caps("marketing", None, 0, CAPS) is None
    assert check_caps("marketing", sends(0), 1, CAPS) is None


def test_exactly_n_in_the_window_blocks_the_next():
    reject = check_caps("marketing", sends(0, 1_000), 2_000, CAPS)
    assert (reject.status, reject.reason) == ("suppressed", "frequency_cap")
    assert "at most 2" in reject.detail


def test_send_exactly_one_window_ago_has_left_it():
    state = sends(0, 1_000)
    assert check_caps("marketing", state, DAY, CAPS) is None  # the send at 0 has left
    assert check_caps("marketing", state, DAY - 1, CAPS) is not None
    assert check_caps("marketing", state, DAY + 1_000 - 1, CAPS) is None  # first left at DAY


def test_weekly_cap():
    state = sends(0, 2 * DAY, 4 * DAY)
    reject = check_caps("marketing", state, 6 * DAY, CAPS)
    assert reject is not None and "604800" in reject.detail
    assert check_caps("marketing", state, 7 * DAY, CAPS) is None


def test_transactional_is_not_capped():
    assert check_caps("transactional", sends(0, 1, 2, 3), 4, CAPS) is None
    assert check_caps("transactional", None, 4, DEFAULT_CAPS) is None


def test_zero_cap_blocks_everything():
    never = {"marketing": FrequencyCaps((Cap(60, 0),))}
    assert check_caps("marketing", None, 0, never) is not None


def test_state_is_bounded_by_the_caps():
    state = sends(*range(0, 10 * DAY, DAY // 2))
    assert len(state.sends) == 3  # the largest max
    old = sends(0, 1)
    assert record_send(old, 8 * DAY, CAPS["marketing"]).sends == (8 * DAY,)


def test_out_of_order_send_keeps_order():
    state = record_send(sends(1_000, 3_000), 2_000, CAPS["marketing"])
    assert state.sends == (1_000, 2_000, 3_000)


def test_record_send_without_caps_uses_default_bounds():
    state = None
    for i in range(40):
        state = record_send(state, i)
    assert len(state.sends) == 16 and state.sends[-1] == 39


def test_bytes_round_trip():
    state = sends(1_700_000_000_000, 1_700_000_100_000)
    data = state.to_bytes()
    assert len(data) == 2 + 8 * 2
    assert CapState.from_bytes(data) == state
    assert CapState.from_bytes(CapState().to_bytes()) == CapState()
    with pytest.raises(InvalidCapState):
        CapState.from_bytes(data[:-1])
    with pytest.raises(InvalidCapState):
        CapState.from_bytes(b"\x05\x00")


def test_cap_validation():
    with pytest.raises(ValueError):
        Cap(0, 1)
    with pytest.raises(ValueError):
        Cap(60, -1)
