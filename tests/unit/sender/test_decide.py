"""The decision chain as a pure function: order of checks and the tracked-link allowlist."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.sender.core import Send, decide
from pipeline.sender.decision import Reject
from pipeline.sender.expiry import Hold
from pipeline.sender.setup import load_policy

CONFIG = Path(__file__).resolve().parents[2] / "fixtures" / "config"  # the tests' copy


class EmptyState:
    def consent(self, e164):
        return None

    def ledger(self, request_id):
        return None

    def content_entry(self, key):
        return None

    def cap_state(self, e164, lane):
        return None


def request(**overrides):
    now = int(time.time() * 1000)
    base = {
        "request_id": "r1", "event_id": "e1", "event_type": "payment_due", "event_occurred_at_ms": now,
        "rule_id": "payment_due_reminder", "template_id": "t", "variant": "default", "locale": "ru",
        "customer_id": "c1", "phone": "+79161234567", "country": "RU", "time_zone": "Europe/Moscow",
        "lane": "transactional", "priority": 50, "sender_id": "SHOPRU",
        "text": "Оплатите счёт: https://s.rsl.ink/c/abc", "created_at_ms": now,
        "expires_at_ms": now + 60_000, "send_at_ms": None, "dedup_window_s": 3600,
        "dedup_by_content": False, "allow_transliteration": False, "campaign_id": None,
        "links": ["https://pay.example.ru/i/1"],
    }
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def policy():
    return load_policy(CONFIG)[0]


def test_a_valid_request_is_sent(policy) -> None:
    decision = decide(request(), policy, EmptyState(), int(time.time() * 1000))
    assert isinstance(decision, Send)
    assert decision.number.e164 == "+79161234567"


def test_the_original_behind_a_short_link_must_be_allowed(policy) -> None:
    decision = decide(request(links=["https://phishing.example.com/login"]), policy, EmptyState(),
                      int(time.time() * 1000))
    assert isinstance(decision, Reject)
    assert decision.reason == "link_domain_not_allowed"
    assert "phishing.example.com" in decision.detail


def test_expiry_comes_before_number_checks(policy) -> None:
    now = int(time.time() * 1000)
    decision = decide(request(phone="garbage", expires_at_ms=now - 1), policy, EmptyState(), now)
    assert isinstance(decision, Reject) and decision.reason == "ttl_expired"


def test_a_future_send_at_is_held(policy) -> None:
    now = int(time.time() * 1000)
    decision = decide(request(send_at_ms=now + 10_000, expires_at_ms=now + 60_000), policy,
                      EmptyState(), now)
    assert isinstance(decision, Hold) and decision.until_ms == now + 10_000
