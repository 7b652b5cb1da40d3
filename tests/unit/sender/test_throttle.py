import pytest

from pipeline.errors import RetryableError
from pipeline.sender.throttle import PriorityGate, TokenBucket, TryAfter


def test_bucket_starts_full_and_drains():
    bucket = TokenBucket(rate_per_s=10, burst=3)
    assert [bucket.try_take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(0.0) == pytest.approx(0.1)


def test_refill_math():
    bucket = TokenBucket(rate_per_s=4, burst=2)
    bucket.try_take(10.0, 2)
    assert bucket.try_take(10.0) == pytest.approx(0.25)
    assert bucket.try_take(10.1) == pytest.approx(0.15)  # 0.4 tokens there, 0.6 missing
    assert bucket.try_take(10.25) == 0.0
    assert bucket.available(10.25) == pytest.approx(0.0)


def test_refill_caps_at_burst():
    bucket = TokenBucket(rate_per_s=100, burst=5)
    bucket.try_take(0.0, 5)
    assert bucket.available(1_000.0) == 5.0


def test_refused_take_takes_nothing():
    bucket = TokenBucket(rate_per_s=1, burst=2)
    bucket.try_take(0.0, 2)
    assert bucket.try_take(0.5, 2) == pytest.approx(1.5)
    assert bucket.available(0.5) == pytest.approx(0.5)


def test_many_small_refills_do_not_drift():
    bucket = TokenBucket(rate_per_s=3, burst=1)
    bucket.try_take(0.0)
    now, granted = 0.0, 0
    for _ in range(3_000):
        now += 1 / 300
        if bucket.try_take(now) == 0.0:
            granted += 1
    assert granted == 30


def test_clock_going_backwards_adds_nothing():
    bucket = TokenBucket(rate_per_s=1, burst=1)
    bucket.try_take(10.0)
    assert bucket.try_take(5.0) == pytest.approx(1.0)
    assert bucket.try_take(11.0) == 0.0


def test_take_raises_try_after_in_whole_ms():
    bucket = TokenBucket(rate_per_s=3, burst=1)
    bucket.take(0.0)
    with pytest.raises(TryAfter) as info:
        bucket.take(0.0)
    assert info.value.delay_ms == 334
    assert isinstance(info.value, RetryableError)


def test_bad_bucket_parameters():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.5)


def drain(gate):
    out = []
    while (item := gate.pop()) is not None:
        out.append(item)
    return out


def test_gate_transactional_strictly_first():
    gate = PriorityGate()
    gate.push("m1", "marketing", priority=100)
    gate.push("t1", "transactional")
    gate.push("m2", "marketing")
    gate.push("t2", "transactional")
    assert gate.pending("marketing") == 2 and len(gate) == 4
    assert drain(gate) == ["t1", "t2", "m1", "m2"]
    assert not gate and gate.pop() is None and gate.peek() is None


def test_gate_priority_then_fifo_within_lane():
    gate = PriorityGate()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        gate.push(name, "marketing", priority)
    assert drain(gate) == ["b", "d", "a", "c", "e"]


def test_gate_peek_keeps_place_and_late_transactional_jumps_ahead():
    gate = PriorityGate()
    gate.push("m1", "marketing")
    assert gate.peek() == "m1"
    gate.push("t1", "transactional")
    assert gate.peek() == "t1"
    assert drain(gate) == ["t1", "m1"]


def test_gate_unknown_lane():
    with pytest.raises(ValueError):
        PriorityGate().push("x", "bulk")


def test_take_larger_than_burst_goes_into_debt():
    bucket = TokenBucket(rate_per_s=10, burst=4)
    assert bucket.try_take(0.0, 2) == 0.0
    assert bucket.try_take(0.0, 6) == pytest.approx(0.2)  # waits for a full bucket
    assert bucket.try_take(0.2, 6) == 0.0  # granted, 2 tokens in debt
    assert bucket.available(0.2) == pytest.approx(-2.0)
    assert bucket.try_take(0.2) == pytest.approx(0.3)  # repays the debt first
    assert bucket.try_take(0.5) == 0.0
