"""The pending follow-ups table: its indexes stay in step with its rows."""

from __future__ import annotations

from pipeline.campaigns.followups import Pending


def record(customer: str, due_ms: int, request: str, clicked: bool = True) -> dict:
    return {"rule_id": "r", "follow_up_rule": "f", "customer_id": customer, "schema": "promotion",
            "due_ms": due_ms, "match": {}, "request_id": request, "message_id": None,
            "unless_clicked": clicked, "event": {}}


def test_due_in_order_and_never_after_a_drop() -> None:
    pending = Pending({"x": record("c1", 300, "q1"), "y": record("c1", 100, "q2"),
                       "z": record("c2", 200, "q3")})
    assert pending.next_due_ms() == 100
    pending.drop("z")
    assert pending.pop_due(250) == ["y"]
    assert pending.pop_due(1000) == ["x"]
    assert len(pending) == 2, "due follow-ups stay pending until dropped"


def test_lookups_by_customer_request_and_message() -> None:
    pending = Pending()
    pending.add("x", record("c1", 100, "q1"))
    pending.add("y", record("c1", 100, "q2", clicked=False))
    assert pending.by_customer["c1"] == {"x", "y"}
    assert pending.by_request == {"q1": "x"}  # only follow-ups a click can cancel
    before = pending.snapshot()
    pending.sent_as("x", "m1")
    assert pending.by_message == {"m1": "x"} and before["x"]["message_id"] is None
    pending.drop("x")
    assert pending.by_message == {} and pending.by_request == {}
    pending.drop("y")
    assert "c1" not in pending.by_customer and pending.next_due_ms() is None
    restored = Pending(before)
    assert restored.by_customer["c1"] == {"x", "y"} and restored.next_due_ms() == 100
