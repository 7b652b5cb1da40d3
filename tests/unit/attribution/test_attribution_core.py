"""Last-touch attribution: window, last touch wins, pending orders, deterministic ids."""

from __future__ import annotations

from pipeline.attribution.core import (
    CLICK,
    DAY_MS,
    DEFAULT_GRACE_MS,
    DELIVERED,
    CustomerState,
    MessageInfo,
    Touch,
    attribute,
    conversion_id,
    message_from_outcome,
    on_order,
    on_touch,
    touch_for,
)
from pipeline.avro import decode, encode

T0 = 1_790_000_000_000
A = MessageInfo("m-a", "c-1", "promo", "bf", "a")
B = MessageInfo("m-b", "c-1", "order_shipped", None, "default")


def paid(at_ms: int, order_id: str = "o-1", amount: int = 150_000) -> dict:
    return {"order_id": order_id, "customer_id": "c-1", "status": "paid",
            "occurred_at_ms": at_ms, "amount_minor": amount, "currency": "RUB"}


def test_touch_inside_window_converts_with_revenue_and_dimensions():
    conversion = attribute(paid(T0 + DAY_MS), [touch_for(DELIVERED, T0, A)])
    assert conversion is not None
    assert conversion["message_id"] == "m-a" and conversion["touch"] == DELIVERED
    assert (conversion["rule_id"], conversion["campaign_id"], conversion["variant"]) == ("promo", "bf", "a")
    assert conversion["revenue_minor"] == 150_000 and conversion["currency"] == "RUB"
    assert conversion["touch_at_ms"] == T0 and conversion["converted_at_ms"] == T0 + DAY_MS
    assert decode("conversion", encode("conversion", conversion)) == conversion


def test_touch_outside_window_or_after_payment_gives_nothing():
    touches = [touch_for(CLICK, T0, A)]
    assert attribute(paid(T0 + 7 * DAY_MS + 1), touches) is None
    assert attribute(paid(T0 - 1), touches) is None
    assert attribute(paid(T0 + 7 * DAY_MS), touches) is not None  # the edge is inside
    assert attribute(paid(T0 + 2 * DAY_MS), touches, window_ms=DAY_MS) is None


def test_no_touches_and_unpaid_orders_give_nothing():
    assert attribute(paid(T0), []) is None
    assert attribute(paid(T0 + 1) | {"status": "shipped"}, [touch_for(CLICK, T0, A)]) is None


def test_last_touch_of_either_kind_wins():
    click_a = touch_for(CLICK, T0, A)
    delivered_b = touch_for(DELIVERED, T0 + 1000, B)
    got = attribute(paid(T0 + 5000), [click_a, delivered_b])
    assert (got["message_id"], got["touch"]) == ("m-b", DELIVERED)
    got = attribute(paid(T0 + 5000), [delivered_b, touch_for(CLICK, T0 + 2000, A)])
    assert (got["message_id"], got["touch"]) == ("m-a", CLICK)


def test_click_beats_delivery_at_the_same_time():
    got = attribute(paid(T0 + 1), [touch_for(CLICK, T0, A), touch_for(DELIVERED, T0, B)])
    assert got["touch"] == CLICK


def test_conversion_id_is_deterministic_from_the_order():
    one = attribute(paid(T0 + 1), [touch_for(CLICK, T0, A)])
    two = attribute(paid(T0 + 1), [touch_for(DELIVERED, T0, B)])
    assert one["conversion_id"] == two["conversion_id"] == conversion_id("o-1")
    assert conversion_id("o-2") != conversion_id("o-1")


def test_outcome_maps_to_message_only_when_submitted():
    outcome = {"request_id": "m-a", "message_id": "m-a", "status": "submitted", "customer_id": "c-1",
               "rule_id": "promo", "campaign_id": "bf", "variant": "a"}
    assert message_from_outcome(outcome) == A
    assert message_from_outcome(outcome | {"status": "suppressed"}) is None


def test_state_flow_and_order_credited_once():
    state = on_touch(CustomerState(), touch_for(DELIVERED, T0, A), now_ms=T0).state
    step = on_order(state, paid(T0 + 60_000), now_ms=T0 + 60_000)
    assert [c["message_id"] for c in step.conversions] == ["m-a"]
    again = on_order(step.state, paid(T0 + 60_000), now_ms=T0 + 61_000)
    assert again.conversions == []
    restored = CustomerState.from_bytes(step.state.to_bytes())
    assert restored == step.state


def test_order_before_its_late_touch_is_converted_when_the_touch_arrives():
    step = on_order(CustomerState(), paid(T0 + 60_000), now_ms=T0 + 60_000)
    assert step.conversions == [] and len(step.state.pending) == 1
    late = on_touch(step.state, touch_for(CLICK, T0, A), now_ms=T0 + 61_000)
    assert [c["touch"] for c in late.conversions] == [CLICK]
    assert late.state.pending == () and late.state.converted == ("o-1",)


def test_pending_order_expires_after_grace_and_touch_outside_window_does_not_convert():
    step = on_order(CustomerState(), paid(T0 + 10 * DAY_MS), now_ms=T0)
    late_old = on_touch(step.state, touch_for(CLICK, T0, A), now_ms=T0 + 1000)
    assert late_old.conversions == []  # 10 days before the payment: outside the window
    expired = on_touch(step.state, touch_for(CLICK, T0 + 10 * DAY_MS - 1, A),
                       now_ms=T0 + DEFAULT_GRACE_MS + 1)
    assert expired.conversions == [] and expired.state.pending == ()


def test_touches_are_bounded_and_repeated_touches_collapse():
    state = CustomerState()
    for i in range(3):
        state = on_touch(state, touch_for(CLICK, T0 + i, A), now_ms=T0).state
    assert state.touches == (Touch(CLICK, T0 + 2, "m-a", "promo", "bf", "a"),)
    for i in range(200):
        info = MessageInfo(f"m-{i}", "c-1")
        state = on_touch(state, touch_for(DELIVERED, T0 + 10 + i, info), now_ms=T0).state
    assert len(state.touches) == 50 and state.touches[-1].message_id == "m-199"
    # an old touch falls out of the window once a newer one is seen
    state = on_touch(state, touch_for(CLICK, T0 + 8 * DAY_MS, B), now_ms=T0).state
    assert [t.message_id for t in state.touches] == ["m-b"]
