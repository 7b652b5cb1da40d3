"""Last-touch conversion attribution, as pure functions over one customer's state.

The rule: an order-paid event (order_status_changed with status 'paid') is credited to the
customer's most recent touch — a delivered SMS (DELIVRD receipt) or a click on one of its
short links, whichever happened last — at or before the payment and no older than the
window (default 7 days). At equal times a click beats a delivery. Orders with no touch in
the window produce no conversion.

Pipelines deliver late: a touch may reach attribution after the order it precedes (clicks
and receipts take more hops than orders). An order with no touch in its window is therefore
kept *pending* for a grace period (default 10 minutes of processing time); a touch that
arrives in that time and lies inside the order's window converts it then. An order is
credited at most once per customer state (the conversion id is derived from the order id,
so a replay downstream is also a no-op for an idempotent sink).

State per customer (`CustomerState`) is bounded: the newest `MAX_TOUCHES` touches within
the window, `MAX_PENDING` pending orders and the last `MAX_CONVERTED` credited order ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

CLICK = "click"
DELIVERED = "delivered"
PAID = "paid"
DAY_MS = 86_400_000
DEFAULT_WINDOW_MS = 7 * DAY_MS
DEFAULT_GRACE_MS = 10 * 60_000
MAX_TOUCHES = 50
MAX_PENDING = 10
MAX_CONVERTED = 50


@dataclass(frozen=True)
class MessageInfo:
    """What attribution needs of a submitted message (from its send outcome)."""

    message_id: str
    customer_id: str
    rule_id: str | None = None
    campaign_id: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class Touch:
    """A delivered SMS or a click on one, at `at_ms`, with the message's dimensions."""

    kind: str
    at_ms: int
    message_id: str
    rule_id: str | None = None
    campaign_id: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class PendingOrder:
    """A paid order that found no touch yet, kept until `received_at_ms` + grace."""

    order: dict[str, Any]
    received_at_ms: int


@dataclass(frozen=True)
class CustomerState:
    """Everything attribution keeps for one customer."""

    touches: tuple[Touch, ...] = ()
    pending: tuple[PendingOrder, ...] = ()
    converted: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "touches": [asdict(t) for t in self.touches],
                "pending": [asdict(p) for p in self.pending],
                "converted": list(self.converted),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> CustomerState:
        """Decode a stored state; None (no state yet) is the empty state."""
        if not data:
            return cls()
        raw = json.loads(data)
        return cls(
            touches=tuple(Touch(**t) for t in raw.get("touches", [])),
            pending=tuple(PendingOrder(**p) for p in raw.get("pending", [])),
            converted=tuple(raw.get("converted", [])),
        )


def message_from_outcome(outcome: Mapping[str, Any]) -> MessageInfo | None:
    """The message a `send_outcome` describes, or None unless it was submitted."""
    if outcome.get("status") != "submitted":
        return None
    return MessageInfo(
        message_id=str(outcome["message_id"] or outcome["request_id"]),
        customer_id=str(outcome["customer_id"]),
        rule_id=outcome.get("rule_id"),
        campaign_id=outcome.get("campaign_id"),
        variant=outcome.get("variant"),
    )


def touch_for(kind: str, at_ms: int, info: MessageInfo) -> Touch:
    """A touch of `kind` on the message `info` describes."""
    return Touch(kind, int(at_ms), info.message_id, info.rule_id, info.campaign_id, info.variant)


def conversion_id(order_id: str) -> str:
    """Deterministic id of the conversion of `order_id`: re-processing never double counts."""
    return hashlib.sha256(f"conversion|{order_id}".encode()).hexdigest()[:32]


def in_window(touch: Touch, paid_at_ms: int, window_ms: int) -> bool:
    """True when `touch` is at or before the payment and at most `window_ms` older."""
    return paid_at_ms - window_ms <= touch.at_ms <= paid_at_ms


def attribute(
    order: Mapping[str, Any], touches: tuple[Touch, ...] | list[Touch],
    window_ms: int = DEFAULT_WINDOW_MS,
) -> dict[str, Any] | None:
    """The `conversion` record crediting `order` to its last touch, or None.

    None when the order is not 'paid' or no touch lies inside the window.
    """
    if order.get("status") != PAID:
        return None
    paid_at = int(order["occurred_at_ms"])
    eligible = [t for t in touches if in_window(t, paid_at, window_ms)]
    if not eligible:
        return None
    best = max(eligible, key=lambda t: (t.at_ms, t.kind == CLICK))
    return {
        "conversion_id": conversion_id(str(order["order_id"])),
        "order_id": str(order["order_id"]),
        "customer_id": str(order["customer_id"]),
        "message_id": best.message_id,
        "touch": best.kind,
        "touch_at_ms": best.at_ms,
        "revenue_minor": int(order.get("amount_minor") or 0),
        "currency": str(order.get("currency") or "RUB"),
        "converted_at_ms": paid_at,
        "rule_id": best.rule_id,
        "campaign_id": best.campaign_id,
        "variant": best.variant,
    }


ORDER_FIELDS = ("order_id", "customer_id", "status", "occurred_at_ms", "amount_minor", "currency")


def _prune(state: CustomerState, event_ms: int, now_ms: int, window_ms: int,
           grace_ms: int) -> CustomerState:
    """Drop touches older than the window before the newest event time (event time, so a
    replay of old data prunes the same way) and pending orders past their grace (processing
    time), and bound every list."""
    newest = max([t.at_ms for t in state.touches] + [event_ms])
    touches = sorted((t for t in state.touches if t.at_ms >= newest - window_ms),
                     key=lambda t: (t.at_ms, t.kind == CLICK))
    pending = [p for p in state.pending if now_ms - p.received_at_ms <= grace_ms]
    return CustomerState(tuple(touches[-MAX_TOUCHES:]), tuple(pending[-MAX_PENDING:]),
                         state.converted[-MAX_CONVERTED:])


@dataclass
class Step:
    """The new state of a customer and the conversions one input produced."""

    state: CustomerState
    conversions: list[dict[str, Any]] = field(default_factory=list)


def on_touch(
    state: CustomerState, touch: Touch, now_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS, grace_ms: int = DEFAULT_GRACE_MS,
) -> Step:
    """Record `touch` (the same kind on the same message keeps only its latest time) and
    convert any pending order it now explains. `now_ms` is processing time."""
    same = [t for t in state.touches if (t.kind, t.message_id) == (touch.kind, touch.message_id)]
    if same and max(t.at_ms for t in same) >= touch.at_ms:
        touches = state.touches
    else:
        touches = tuple(t for t in state.touches if t not in same) + (touch,)
    state = _prune(replace(state, touches=touches), touch.at_ms, now_ms, window_ms, grace_ms)
    step = Step(state)
    still: list[PendingOrder] = []
    for pending in state.pending:
        conversion = None
        if in_window(touch, int(pending.order["occurred_at_ms"]), window_ms):
            conversion = attribute(pending.order, state.touches, window_ms)
        if conversion is None:
            still.append(pending)
        else:
            step.conversions.append(conversion)
    if step.conversions:
        done = tuple(c["order_id"] for c in step.conversions)
        step.state = replace(state, pending=tuple(still),
                             converted=(state.converted + done)[-MAX_CONVERTED:])
    return step


def on_order(
    state: CustomerState, order: Mapping[str, Any], now_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS, grace_ms: int = DEFAULT_GRACE_MS,
) -> Step:
    """Attribute a paid `order` now, or keep it pending for `grace_ms` when no touch
    explains it yet. Orders already credited, or not paid, change nothing."""
    order_id = str(order["order_id"])
    if order.get("status") != PAID or order_id in state.converted:
        return Step(state)
    state = _prune(state, int(order["occurred_at_ms"]), now_ms, window_ms, grace_ms)
    conversion = attribute(order, state.touches, window_ms)
    if conversion is not None:
        pending = tuple(p for p in state.pending if p.order["order_id"] != order_id)
        return Step(replace(state, pending=pending,
                            converted=(state.converted + (order_id,))[-MAX_CONVERTED:]),
                    [conversion])
    if any(p.order["order_id"] == order_id for p in state.pending):
        return Step(state)
    kept = {name: order.get(name) for name in ORDER_FIELDS}
    pending = state.pending + (PendingOrder(kept, now_ms),)
    return Step(replace(state, pending=pending[-MAX_PENDING:]))
