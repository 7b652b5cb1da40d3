"""Simulated customers for the demo and the ground-truth test: they click and they pay.

After the SMS went out, each customer whose message was delivered opens its tracked link
with a probability that depends on the template variant (through the real redirect
service), and some of those who clicked then pay an order (a real `order_status_changed`
event with status `paid`). The simulation keeps its own ground truth, which the funnel
report in ClickHouse must reproduce exactly.
"""

from __future__ import annotations

import random
import re
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipeline import kafka_io, topics
from pipeline.kafka_io import Received
from pipeline.settings import Settings

CLICK_P = {"a": 0.45, "b": 0.7, "default": 0.35}
PAY_P = {"a": 0.4, "b": 0.6, "default": 0.5}
_CODE = re.compile(r"/c/([0-9A-Za-z]+)")


@dataclass
class GroundTruth:
    """What the simulation did, to compare with the funnel report."""

    sent: int = 0
    delivered: int = 0
    clicked: set[str] = field(default_factory=set)  # message ids
    paid_orders: dict[str, int] = field(default_factory=dict)  # order id -> revenue (minor)
    clicks_by_variant: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0

    @property
    def revenue_minor(self) -> int:
        return sum(self.paid_orders.values())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # keep the 302 as the answer
        return None


def open_link(port: int, code: str) -> int:
    """GET the short link like a phone would; returns the HTTP status (302 expected)."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(f"http://127.0.0.1:{port}/c/{code}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def click_link(port: int, code: str, wait_s: float = 20.0) -> int:
    """Open a short link as `open_link`, waiting (bounded) while the redirect answers 404:
    it indexes links as it reads the requests the router made, so a message delivered a
    moment ago may not be known to it yet. Returns the last status (302 expected)."""
    deadline = time.monotonic() + wait_s
    status = open_link(port, code)
    while status == 404 and time.monotonic() < deadline:
        time.sleep(0.25)
        status = open_link(port, code)
    return status


def simulate(settings: Settings, redirect_port: int, requests: list[Received],
             outcomes: list[Received], receipts: list[Received], seed: int = 7) -> GroundTruth:
    """Customers react to the SMS they got; returns the ground truth of what they did."""
    rng = random.Random(seed)
    by_id = {r.record["request_id"]: r.record for r in requests}
    delivered = {r.record["message_id"] for r in receipts if r.record["state"] == "DELIVRD"}
    truth = GroundTruth()
    submitted = [o.record for o in outcomes if o.record["status"] == "submitted"]
    truth.sent = len(submitted)
    truth.delivered = len(delivered)
    truth.cost = sum(o["cost"] for o in submitted)
    payers: list[dict[str, Any]] = []
    for outcome in sorted(submitted, key=lambda o: o["request_id"]):
        request = by_id.get(outcome["request_id"])
        if request is None or outcome["request_id"] not in delivered:
            continue
        codes = _CODE.findall(request["text"])
        variant = request["variant"] if request["variant"] in CLICK_P else "default"
        if not codes or rng.random() >= CLICK_P[variant]:
            continue
        status = click_link(redirect_port, codes[0])
        if status != 302:
            raise RuntimeError(f"redirect service answered {status} for a valid link")
        truth.clicked.add(outcome["message_id"])
        truth.clicks_by_variant[request["variant"]] = truth.clicks_by_variant.get(request["variant"], 0) + 1
        if rng.random() < PAY_P[variant] and request["customer_id"] not in {p["customer_id"] for p in payers}:
            payers.append(request)
    time.sleep(1.0)  # clicks reach attribution before the orders do (real customers are slower)
    now = int(time.time() * 1000)
    orders = []
    for request in payers:
        order_id = f"PAID-{uuid.UUID(int=rng.getrandbits(128)).hex[:10]}"
        amount = rng.randrange(100_000, 900_000)
        truth.paid_orders[order_id] = amount
        orders.append((request["customer_id"], {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))), "customer_id": request["customer_id"],
            "occurred_at_ms": now, "source": "shop-web", "attributes": {}, "order_id": order_id,
            "status": "paid", "previous_status": "created", "amount_minor": amount, "currency": "RUB",
            "tracking_url": None, "pickup_point": None}))
    if orders:
        kafka_io.publish(settings, topics.ORDER_STATUS, orders, "order_status_changed")
    return truth
