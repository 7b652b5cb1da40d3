from dataclasses import dataclass

from pipeline.sender.expiry import Hold, check_expiry, check_hold, check_schedule


def request(expires_at_ms=10_000, send_at_ms=None):
    return {"request_id": "r", "expires_at_ms": expires_at_ms, "send_at_ms": send_at_ms}


def test_not_expired_until_after_expires_at():
    assert check_expiry(request(), 9_999) is None
    assert check_expiry(request(), 10_000) is None
    reject = check_expiry(request(), 10_001)
    assert (reject.status, reject.reason) == ("expired", "ttl_expired")


def test_schedule_holds_until_send_at():
    assert check_schedule(request(send_at_ms=None), 5_000) is None
    assert check_schedule(request(send_at_ms=5_000), 5_000) is None
    assert check_schedule(request(send_at_ms=4_000), 5_000) is None
    assert check_schedule(request(send_at_ms=5_001), 5_000) == Hold(5_001, "scheduled")


def test_hold_past_expiry_ends_now():
    assert check_hold(request(), Hold(10_000, "quiet_hours")) is None
    reject = check_hold(request(), Hold(10_001, "quiet_hours"))
    assert (reject.status, reject.reason) == ("expired", "expires_during_hold")


def test_works_with_record_objects():
    @dataclass
    class Request:
        expires_at_ms: int
        send_at_ms: int | None = None

    assert check_expiry(Request(10), 11).reason == "ttl_expired"
    assert check_schedule(Request(100, 50), 10) == Hold(50, "scheduled")
