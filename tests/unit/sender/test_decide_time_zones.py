"""Quiet hours through the decision chain, for recipients whose profile has no usable zone.

A Far-East mobile (+7 924) without a zone in the profile used to be judged by Moscow time.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from pipeline.sender.consent import apply_change
from pipeline.sender.core import Send, decide
from pipeline.sender.decision import Reject
from pipeline.sender.expiry import Hold
from pipeline.sender.numbers import normalise
from pipeline.sender.setup import load_policy

CONFIG = Path(__file__).resolve().parents[3] / "config"
VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")
FAR_EAST_MOBILE = "+79241234567"
DAY_MS = 86_400_000


def ms(*args, zone=UTC):
    return int(datetime(*args, tzinfo=zone).timestamp() * 1000)


AT_2330_VLADIVOSTOK = ms(2026, 1, 15, 23, 30, zone=VLADIVOSTOK)  # 16:30 in Moscow
# 09:00 in Kaliningrad (UTC+2) = 07:00 UTC, when every Russian zone is in daytime.
ALL_RUSSIA_AWAKE = ms(2026, 1, 16, 7)


class OptedIn:
    """State of a recipient who opted in to marketing and got nothing yet."""

    def consent(self, e164):
        return apply_change(
            None,
            {"scope": "marketing", "status": "opt_in", "source": "web_form", "changed_at_ms": 1},
        )

    def ledger(self, request_id):
        return None

    def content_entry(self, key):
        return None

    def cap_state(self, e164, lane):
        return None


def promo(now_ms, **overrides):
    base = {
        "request_id": "r1",
        "event_id": "e1",
        "event_type": "promotion",
        "event_occurred_at_ms": now_ms,
        "rule_id": "promotion_discount",
        "template_id": "promo_discount_a",
        "variant": "a",
        "locale": "ru",
        "customer_id": "cust-far-east",
        "phone": FAR_EAST_MOBILE,
        "country": "RU",
        "time_zone": None,
        "lane": "marketing",
        "priority": 0,
        "sender_id": "SHOPRU",
        "text": "Скидка 20% на всё до воскресенья: https://shop.example.ru/sale Отписка: STOP",
        "created_at_ms": now_ms,
        "expires_at_ms": now_ms + 2 * DAY_MS,
        "send_at_ms": None,
        "dedup_window_s": 3600,
        "dedup_by_content": False,
        "allow_transliteration": False,
        "campaign_id": "bf",
        "links": [],
    }
    base.update(overrides)
    return base


def config_with_quiet_hours(tmp_path: Path, quiet: dict) -> Path:
    """A copy of the repo's config/ whose limits.yaml has `quiet` as its quiet_hours."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    limits = yaml.safe_load((config / "limits.yaml").read_text(encoding="utf-8"))
    limits["quiet_hours"] = quiet
    (config / "limits.yaml").write_text(
        yaml.safe_dump(limits, allow_unicode=True), encoding="utf-8"
    )
    return config


NIGHT = {"start": "21:00", "end": "09:00", "default_time_zone": "Europe/Moscow"}


@pytest.fixture(scope="module")
def policy():
    return load_policy(CONFIG)[0]


def test_the_number_can_be_anywhere_in_russia():
    number = normalise(FAR_EAST_MOBILE, "RU", frozenset({"RU"}))
    assert number.time_zone is None
    assert {"Europe/Moscow", "Asia/Vladivostok", "Asia/Kamchatka"} <= set(number.time_zones)


def test_far_east_mobile_without_a_zone_is_held_at_2330_local(policy):
    decision = decide(promo(AT_2330_VLADIVOSTOK), policy, OptedIn(), AT_2330_VLADIVOSTOK)
    assert decision == Hold(ALL_RUSSIA_AWAKE, "quiet_hours")
    # Released when the window is open everywhere (17:00 in Vladivostok, 10:00 in Moscow).
    assert isinstance(decide(promo(AT_2330_VLADIVOSTOK), policy, OptedIn(), ALL_RUSSIA_AWAKE), Send)


def test_phonenumbers_zones_are_the_default_without_a_country_list(tmp_path):
    policy = load_policy(config_with_quiet_hours(tmp_path, {"marketing": NIGHT}))[0]
    assert dict(policy.zones_by_country) == {}
    decision = decide(promo(AT_2330_VLADIVOSTOK), policy, OptedIn(), AT_2330_VLADIVOSTOK)
    assert decision == Hold(ALL_RUSSIA_AWAKE, "quiet_hours")


def test_a_valid_profile_zone_is_used(policy):
    in_vladivostok = promo(AT_2330_VLADIVOSTOK, time_zone="Asia/Vladivostok")
    assert decide(in_vladivostok, policy, OptedIn(), AT_2330_VLADIVOSTOK) == Hold(
        ms(2026, 1, 16, 9, zone=VLADIVOSTOK), "quiet_hours"
    )
    # The profile says Moscow, where it is 16:30: the profile wins over the number.
    in_moscow = promo(AT_2330_VLADIVOSTOK, time_zone="Europe/Moscow")
    assert isinstance(decide(in_moscow, policy, OptedIn(), AT_2330_VLADIVOSTOK), Send)


def test_an_invalid_zone_is_no_zone_and_the_profile_is_named_once(policy, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.sender.quiet_hours")
    # Warnings are once per customer per process: an id no other test uses.
    martian = promo(AT_2330_VLADIVOSTOK, time_zone="Mars/Olympus", customer_id="cust-4242")
    for attempt in range(3):
        request = dict(martian, request_id=f"r{attempt}")
        assert decide(request, policy, OptedIn(), AT_2330_VLADIVOSTOK) == Hold(
            ALL_RUSSIA_AWAKE, "quiet_hours"
        )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cust-4242" in warnings[0].getMessage()
    assert "'Mars/Olympus'" in warnings[0].getMessage()
    assert FAR_EAST_MOBILE not in warnings[0].getMessage()  # numbers stay out of logs


def test_transactional_requests_neither_wait_nor_warn(policy, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.sender.quiet_hours")
    payment = promo(
        AT_2330_VLADIVOSTOK,
        lane="transactional",
        time_zone="Mars/Olympus",
        text="Оплатите счёт до пятницы",
        rule_id="payment_due_reminder",
    )
    assert isinstance(decide(payment, policy, OptedIn(), AT_2330_VLADIVOSTOK), Send)
    assert caplog.records == []


@pytest.mark.parametrize(
    ("zones", "expected"),
    [
        (["Asia/Vladivostok"], Hold(ms(2026, 1, 16, 9, zone=VLADIVOSTOK), "quiet_hours")),
        (["Europe/Moscow", "Europe/Samara"], None),  # 16:30 and 17:30 there: sent now
    ],
)
def test_a_per_country_list_overrides_the_numbers_zones(tmp_path, zones, expected):
    quiet = {"marketing": NIGHT, "zones_by_country": {"RU": zones}}
    policy = load_policy(config_with_quiet_hours(tmp_path, quiet))[0]
    decision = decide(promo(AT_2330_VLADIVOSTOK), policy, OptedIn(), AT_2330_VLADIVOSTOK)
    if expected is None:
        assert isinstance(decision, Send)
    else:
        assert decision == expected


def test_no_common_window_is_a_suppression_with_its_own_reason(tmp_path):
    # Open 10:00-20:00 local: Kaliningrad 08:00-18:00 UTC, Kamchatka 22:00-08:00 UTC.
    quiet = {"marketing": dict(NIGHT, start="20:00", end="10:00")}
    policy = load_policy(config_with_quiet_hours(tmp_path, quiet))[0]
    decision = decide(promo(AT_2330_VLADIVOSTOK), policy, OptedIn(), AT_2330_VLADIVOSTOK)
    assert isinstance(decision, Reject)
    assert (decision.status, decision.reason) == ("suppressed", "no_common_send_window")
    # With a zone in the profile the same window is fine.
    with_zone = promo(AT_2330_VLADIVOSTOK, time_zone="Europe/Moscow")
    assert isinstance(decide(with_zone, policy, OptedIn(), AT_2330_VLADIVOSTOK), Send)
