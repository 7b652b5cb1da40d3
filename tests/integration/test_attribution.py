"""Attribution through the real broker: touches and paid orders in, conversions out."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stages import read_raw, settle, wait_for

from pipeline import kafka_io, topics
from pipeline.attribution.agents import internal_topic
from pipeline.attribution.core import conversion_id
from pipeline.procs import settings_env, stop
from pipeline.settings import ROOT, Settings

NOW = int(time.time() * 1000)
DAY = 86_400_000


@contextmanager
def attribution_worker(settings: Settings, log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The attribution stage as a child process (`rassylka attribution` once mounted)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "attribution.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.attribution.agents", "warn"],
                                cwd=ROOT, env=settings_env(settings), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)
        if proc.returncode not in (0, -15):
            print(log.read_text(errors="replace")[-4000:])


def outcome(message_id: str, customer_id: str, status: str = "submitted") -> dict[str, Any]:
    return {
        "request_id": message_id, "message_id": message_id, "status": status, "reason": None,
        "detail": None, "lane": "marketing", "rule_id": "promo", "template_id": "promo_a",
        "variant": "a", "campaign_id": "bf", "customer_id": customer_id, "phone": None,
        "region": "RU", "operator": None, "gateway": "sim", "gateway_message_ids": ["g1"],
        "segments": 1, "encoding": "GSM7", "cost": 1.5, "event_occurred_at_ms": NOW,
        "decided_at_ms": NOW, "attempts": 1,
    }


def receipt(message_id: str, at_ms: int, state: str = "DELIVRD") -> dict[str, Any]:
    return {"message_id": message_id, "gateway_message_id": "g1", "state": state,
            "error_code": None, "segment": 1, "segments": 1, "received_at_ms": at_ms,
            "gateway": "sim"}


def click(message_id: str, at_ms: int) -> dict[str, Any]:
    return {"click_id": f"k-{message_id}", "code": "x", "message_id": message_id,
            "url": "https://shop.example.ru/bf", "clicked_at_ms": at_ms, "user_agent": None}


def order(customer_id: str, order_id: str, at_ms: int, status: str = "paid") -> dict[str, Any]:
    return {"event_id": f"e-{order_id}-{status}", "customer_id": customer_id, "occurred_at_ms": at_ms,
            "source": "shop-web", "attributes": {}, "order_id": order_id, "status": status,
            "previous_status": "created", "amount_minor": 250_000, "currency": "RUB",
            "tracking_url": None, "pickup_point": None}


def test_paid_order_inside_window_converts_once_and_outside_window_does_not(
    ns: Settings, tmp_path: Path
) -> None:
    inside, outside = "a" * 32, "b" * 32
    with attribution_worker(ns, tmp_path):
        kafka_io.publish(ns, topics.OUTCOMES, [(inside, outcome(inside, "c-in")),
                                               (outside, outcome(outside, "c-out")),
                                               ("s" * 32, outcome("s" * 32, "c-in", "suppressed"))],
                         "send_outcome")
        kafka_io.publish(ns, topics.RECEIPTS, [(inside, receipt(inside, NOW - 60_000)),
                                               (outside, receipt(outside, NOW - 10 * DAY)),
                                               (inside, receipt(inside, NOW, "UNDELIV")),
                                               (b"bad", b"not avro")], "delivery_receipt")
        kafka_io.publish(ns, topics.CLICKS, [(inside, click(inside, NOW - 30_000))], "click")
        # Wait until the three touches reached the per-customer topic, so the credited
        # touch is deterministic (the click, the latest one).
        touches = read_raw(ns, internal_topic(ns, "by-customer"), lambda m: len(m) >= 3, 90)
        assert len(touches) >= 3
        kafka_io.publish(ns, topics.ORDER_STATUS, [
            ("c-in", order("c-in", "o-in", NOW)),
            ("c-in", order("c-in", "o-in", NOW)),  # the same event again: still one conversion
            ("c-in", order("c-in", "o-in2", NOW, status="shipped")),
            ("c-out", order("c-out", "o-out", NOW)),
        ], "order_status_changed")
        got = wait_for(ns, topics.CONVERSIONS, 1, timeout=60)
        dead = wait_for(ns, topics.DEAD_LETTERS, 1, timeout=30)
        conversions = settle(ns, topics.CONVERSIONS, idle=4.0)

    assert len(conversions) == 1, [m.record for m in conversions]
    (conv,) = [m.record for m in got]
    assert got[0].key == b"c-in" and got[0].schema == "conversion"
    assert conv["conversion_id"] == conversion_id("o-in")
    assert (conv["order_id"], conv["customer_id"], conv["message_id"]) == ("o-in", "c-in", inside)
    assert (conv["touch"], conv["touch_at_ms"]) == ("click", NOW - 30_000)
    assert (conv["revenue_minor"], conv["currency"]) == (250_000, "RUB")
    assert (conv["rule_id"], conv["campaign_id"], conv["variant"]) == ("promo", "bf", "a")
    assert dead[0].record["stage"] == "attribution" and dead[0].record["value"] == b"not avro"


def test_touch_that_arrives_after_the_order_still_converts(ns: Settings, tmp_path: Path) -> None:
    mid = "c" * 32
    with attribution_worker(ns, tmp_path):
        kafka_io.publish(ns, topics.ORDER_STATUS, [("c-late", order("c-late", "o-late", NOW))],
                         "order_status_changed")
        read_raw(ns, internal_topic(ns, "by-customer"), lambda m: len(m) >= 1, 90)
        # the receipt before its outcome: parked until the outcome names the customer
        kafka_io.publish(ns, topics.RECEIPTS, [(mid, receipt(mid, NOW - 5_000))], "delivery_receipt")
        kafka_io.publish(ns, topics.OUTCOMES, [(mid, outcome(mid, "c-late"))], "send_outcome")
        got = wait_for(ns, topics.CONVERSIONS, 1, timeout=60)
    assert got[0].record["order_id"] == "o-late" and got[0].record["touch"] == "delivered"
