"""Realistic sample customers and business events (seeded), for the demo, tests and bench."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipeline import avro, topics

FIRST_NAMES_RU = ["Анна", "Иван", "Мария", "Дмитрий", "Ольга", "Сергей", "Елена", "Алексей"]
LAST_NAMES_RU = ["Иванова", "Петров", "Смирнова", "Кузнецов", "Попова", "Соколов"]
FIRST_NAMES_EN = ["Emma", "John", "Olivia", "James"]
ZONES = ["Europe/Moscow", "Asia/Yekaterinburg", "Asia/Novosibirsk", "Europe/Kaliningrad",
         "Asia/Vladivostok", None]
SEGMENTS = ["vip", "new", "loyal", "dormant"]
CITIES = ["Москва", "Казань", "Екатеринбург", "Новосибирск", "Санкт-Петербург"]
RU_MOBILE_PREFIXES = ["916", "903", "926", "985", "999", "912", "913", "921", "950", "977"]


@dataclass
class SampleSet:
    """Profiles and events to publish, plus the bad inputs and what each should become."""

    profiles: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (topic, record)
    bad: list[tuple[str, bytes | None, bytes, str]] = field(default_factory=list)  # topic,key,value,reason


def phone_for(rng: random.Random, style: int) -> str:
    """A Russian mobile number written the many ways customers type them."""
    prefix = rng.choice(RU_MOBILE_PREFIXES)
    rest = f"{rng.randrange(10_000_000):07d}"
    forms = [
        f"+7{prefix}{rest}",
        f"8 ({prefix}) {rest[:3]}-{rest[3:5]}-{rest[5:]}",
        f"+7 {prefix} {rest[:3]} {rest[3:5]} {rest[5:]}",
        f"8{prefix}{rest}",
    ]
    return forms[style % len(forms)]


def make_profile(rng: random.Random, index: int, locale: str | None = None) -> dict[str, Any]:
    """One customer profile record."""
    locale = locale or ("en" if index % 7 == 3 else "ru")
    names = FIRST_NAMES_EN if locale == "en" else FIRST_NAMES_RU
    return {
        "customer_id": f"cust-{index:06d}",
        "phone": phone_for(rng, index),
        "country": "RU",
        "locale": locale,
        "time_zone": rng.choice(ZONES),
        "first_name": rng.choice(names),
        "last_name": rng.choice(LAST_NAMES_RU) if locale == "ru" else "Smith",
        "segments": rng.sample(SEGMENTS, k=rng.randint(0, 2)),
        "attributes": {"city": rng.choice(CITIES), "tier": rng.choice(["gold", "silver", "basic"])},
        "updated_at_ms": int(time.time() * 1000),
    }


def order_event(rng: random.Random, customer_id: str, status: str, now_ms: int) -> dict[str, Any]:
    """An order status change for `customer_id`."""
    order_id = f"{rng.randrange(100000, 999999)}"
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer_id": customer_id,
        "occurred_at_ms": now_ms,
        "source": "shop-web",
        "attributes": {},
        "order_id": order_id,
        "status": status,
        "previous_status": None,
        "amount_minor": rng.randrange(50_000, 2_500_000),
        "currency": "RUB",
        "tracking_url": f"https://shop.example.ru/track/{order_id}" if status == "shipped" else None,
        "pickup_point": "ул. Ленина, 10" if status == "ready_for_pickup" else None,
    }


def payment_event(rng: random.Random, customer_id: str, now_ms: int) -> dict[str, Any]:
    """A payment due reminder for `customer_id`."""
    invoice = f"INV-{rng.randrange(10000, 99999)}"
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer_id": customer_id,
        "occurred_at_ms": now_ms,
        "source": "erp",
        "attributes": {},
        "invoice_id": invoice,
        "order_id": None,
        "amount_minor": rng.randrange(100_000, 5_000_000),
        "currency": "RUB",
        "due_date": time.strftime("%Y-%m-%d", time.gmtime(now_ms / 1000 + 3 * 86400)),
        "payment_url": f"https://pay.example.ru/i/{invoice}",
    }


def promotion_event(rng: random.Random, customer_id: str, now_ms: int, campaign: str) -> dict[str, Any]:
    """A promotion for `customer_id` in `campaign`."""
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer_id": customer_id,
        "occurred_at_ms": now_ms,
        "source": "crm",
        "attributes": {},
        "campaign_id": campaign,
        "promo_code": "SALE" + str(rng.randrange(100, 999)),
        "discount_percent": rng.choice([10, 15, 20, 30]),
        "valid_until": time.strftime("%Y-%m-%d", time.gmtime(now_ms / 1000 + 7 * 86400)),
        "landing_url": "https://shop.example.ru/sale",
    }


def demo_samples(seed: int = 7, customers: int = 12) -> SampleSet:
    """The demo's data: customers, a mix of events, and a few bad inputs with their reasons."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    out = SampleSet()
    out.profiles = [make_profile(rng, i) for i in range(customers)]
    statuses = ["created", "paid", "shipped", "ready_for_pickup", "delivered", "cancelled"]
    for i, profile in enumerate(out.profiles):
        cid = profile["customer_id"]
        out.events.append((topics.ORDER_STATUS, order_event(rng, cid, statuses[i % len(statuses)], now_ms)))
        if i % 2 == 0:
            out.events.append((topics.PAYMENT_DUE, payment_event(rng, cid, now_ms)))
        if i % 3 == 0:
            out.events.append((topics.PROMOTION, promotion_event(rng, cid, now_ms, "black-friday")))
    ghost = order_event(rng, "cust-unknown", "shipped", now_ms)
    out.bad = [
        (topics.ORDER_STATUS, b"cust-000001", b"this is not avro", "undecodable"),
        (topics.PAYMENT_DUE, b"cust-000002",
         avro.encode("click", {"click_id": "k", "code": "c", "message_id": "m", "url": "u",
                               "clicked_at_ms": now_ms}), "undecodable"),
        (topics.ORDER_STATUS, b"cust-unknown", avro.encode("order_status_changed", ghost),
         "unknown_customer"),
        (topics.ORDER_STATUS, b"cust-000003",
         avro.encode("order_status_changed", dict(order_event(rng, "cust-000003", "paid", now_ms),
                                                  event_id="")), "invalid_event"),
    ]
    return out
