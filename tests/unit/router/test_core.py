"""The pure router: events in, schema-valid notification requests (or failures) out."""

from __future__ import annotations

import hashlib
import time

import pytest
import yaml

from pipeline.avro import decode, encode
from pipeline.links import link_base, link_secret, make_code
from pipeline.router.core import RouteFailure, RouteResult, idempotency_key, route
from pipeline.rules.loader import load_bundle, load_ruleset
from pipeline.settings import ROOT

NOW = 1_790_000_000_000  # 2026-09-21T...Z

PROFILE = {
    "customer_id": "c-42",
    "phone": "+79161234567",
    "country": "RU",
    "locale": "ru",
    "time_zone": "Europe/Moscow",
    "first_name": "Анна",
    "last_name": "Иванова",
    "segments": ["vip"],
    "attributes": {"tier": "gold"},
    "updated_at_ms": 0,
}


def base(event_id: str = "e-1") -> dict:
    return {
        "event_id": event_id,
        "customer_id": "c-42",
        "occurred_at_ms": NOW - 5_000,
        "source": "shop-web",
        "attributes": {},
    }


def order(status: str, **extra) -> dict:
    return (
        base()
        | {
            "order_id": "A-1001",
            "status": status,
            "previous_status": "paid",
            "amount_minor": 123_450,
            "currency": "RUB",
            "tracking_url": "https://track.example/A-1001",
            "pickup_point": "Москва, Тверская ул., 1",
        }
        | extra
    )


@pytest.fixture(scope="module")
def ruleset():
    return load_ruleset(ROOT / "tests" / "fixtures" / "config")  # not the live config/


def assert_schema_valid(request: dict) -> None:
    data = encode("notification_request", request)
    assert decode("notification_request", data) == request


def test_idempotency_key_is_stable_and_specific():
    key = idempotency_key("e-1", "order_shipped", "c-42")
    assert key == hashlib.sha256(b"e-1|order_shipped|c-42").hexdigest()[:32]
    assert len(key) == 32
    assert key == idempotency_key("e-1", "order_shipped", "c-42")
    assert key != idempotency_key("e-2", "order_shipped", "c-42")
    assert key != idempotency_key("e-1", "order_created", "c-42")
    assert key != idempotency_key("e-1", "order_shipped", "c-43")


def test_order_shipped_produces_one_valid_request(ruleset):
    result = route(ruleset, "order_status_changed", order("shipped"), PROFILE, NOW)
    assert result.failures == []
    (req,) = result.requests
    assert_schema_valid(req)
    rule = ruleset.rule("order_shipped")
    assert req["request_id"] == idempotency_key("e-1", "order_shipped", "c-42")
    assert req["event_type"] == "order_status_changed"
    assert req["event_occurred_at_ms"] == NOW - 5_000
    assert (req["rule_id"], req["template_id"], req["variant"], req["locale"]) == (
        "order_shipped",
        "order_shipped",
        "default",
        "ru",
    )
    short = f'{link_base()}/c/{make_code(req["request_id"], 0, link_secret())}'
    assert (
        req["text"]
        == f"Анна, заказ №A-1001 передан в доставку. Отследить: {short}"
    )
    assert (req["phone"], req["country"], req["time_zone"]) == (
        "+79161234567",
        "RU",
        "Europe/Moscow",
    )
    assert req["lane"] == "transactional" and req["priority"] == rule.priority
    assert req["created_at_ms"] == NOW
    assert req["expires_at_ms"] == NOW + rule.ttl_s * 1000
    assert req["send_at_ms"] is None and req["campaign_id"] is None
    assert req["links"] == ["https://track.example/A-1001"]
    assert req["sender_id"] == "SHOPRU"


def test_same_event_twice_gives_identical_requests(ruleset):
    first = route(ruleset, "order_status_changed", order("shipped"), PROFILE, NOW)
    again = route(ruleset, "order_status_changed", order("shipped"), PROFILE, NOW + 60_000)
    assert first.requests[0]["request_id"] == again.requests[0]["request_id"]
    assert first.requests[0]["text"] == again.requests[0]["text"]


@pytest.mark.parametrize(
    "status", ["created", "paid", "shipped", "ready_for_pickup", "delivered", "cancelled"]
)
@pytest.mark.parametrize("locale", ["ru", "en", "de"])
def test_every_order_status_renders_in_every_locale(ruleset, status, locale):
    result = route(
        ruleset, "order_status_changed", order(status), PROFILE | {"locale": locale}, NOW
    )
    assert result.failures == []
    (req,) = result.requests
    assert_schema_valid(req)
    assert req["locale"] == ("ru" if locale == "de" else locale)
    assert "A-1001" in req["text"]


def test_payment_due_is_urgent_and_transactional(ruleset):
    event = base() | {
        "invoice_id": "INV-7",
        "order_id": None,
        "amount_minor": 990_000,
        "currency": "RUB",
        "due_date": "2026-11-25",
        "payment_url": "https://pay.example/7",
    }
    (req,) = route(ruleset, "payment_due", event, PROFILE, NOW).requests
    assert_schema_valid(req)
    assert req["lane"] == "transactional"
    assert req["priority"] > max(r.priority for r in ruleset.rules if r.event != "payment_due")
    assert req["links"] == ["https://pay.example/7"] and "9 900 ₽" in req["text"]
    assert f"{link_base()}/c/" in req["text"]


def test_promotion_goes_to_marketing_with_campaign_and_variant(ruleset):
    event = base() | {
        "campaign_id": "black_friday",
        "promo_code": "BF20",
        "discount_percent": 20,
        "valid_until": "2026-11-30",
        "landing_url": "https://shop.example/bf",
    }
    (req,) = route(ruleset, "promotion", event, PROFILE, NOW).requests
    assert_schema_valid(req)
    assert req["lane"] == "marketing"
    assert req["campaign_id"] == "black_friday"
    assert req["variant"] in ("a", "b")
    assert req["template_id"] == f"promo_discount_{req['variant']}"
    assert req["expires_at_ms"] == NOW + 2 * 86400 * 1000
    assert req["text"].endswith("Отписка: STOP")
    # opted-out segment: no rule matches
    assert (
        route(ruleset, "promotion", event, PROFILE | {"segments": ["no_marketing"]}, NOW)
        == RouteResult()
    )


def test_service_notice_scheduled_by_event_attribute(ruleset):
    event = base() | {
        "notice_id": "n-1",
        "service": "личный кабинет",
        "starts_at": "2026-11-25T02:00:00+03:00",
        "ends_at": "2026-11-25T04:00:00+03:00",
        "details": None,
        "attributes": {"notify_at": "2026-11-24T12:00:00+03:00"},
    }
    (req,) = route(ruleset, "service_notice", event, PROFILE, NOW).requests
    assert_schema_valid(req)
    send_at = 1_795_510_800_000  # 2026-11-24T09:00:00Z
    assert req["send_at_ms"] == send_at
    assert req["expires_at_ms"] == send_at + ruleset.rule("service_maintenance").ttl_s * 1000
    del event["attributes"]["notify_at"]
    (now_req,) = route(ruleset, "service_notice", event, PROFILE, NOW).requests
    assert now_req["send_at_ms"] is None


def test_naive_send_at_is_a_failure(ruleset):
    event = base() | {
        "notice_id": "n-1",
        "service": "app",
        "starts_at": "2026-11-25T02:00:00+03:00",
        "ends_at": None,
        "details": None,
        "attributes": {"notify_at": "2026-11-24T12:00:00"},
    }
    result = route(ruleset, "service_notice", event, PROFILE, NOW)
    assert result.requests == []
    (failure,) = result.failures
    assert failure.rule_id == "service_maintenance" and failure.reason == "bad_send_at"
    assert "no time zone offset" in failure.error


def test_no_matching_rule_is_an_empty_result(ruleset):
    assert route(ruleset, "order_status_changed", order("returned"), PROFILE, NOW) == RouteResult()
    assert route(ruleset, "unknown_event", order("shipped"), PROFILE, NOW) == RouteResult()


def test_missing_profile_is_a_failure_only_when_a_rule_matches(ruleset):
    result = route(ruleset, "order_status_changed", order("shipped"), None, NOW)
    assert result.requests == []
    assert result.failures == [
        RouteFailure(None, "no_profile", "no profile for customer 'c-42' (rules: order_shipped)")
    ]
    assert route(ruleset, "order_status_changed", order("returned"), None, NOW) == RouteResult()


def _two_rule_bundle() -> dict[str, str]:
    settings = {
        "required_locales": ["ru", "en"],
        "default_locale": "ru",
        "default_sender_id": "SHOPRU",
        "default_ttl": "6h",
        "default_dedup_window": "24h",
    }
    rules = [
        {
            "id": "shipped_ok",
            "event": "order_status_changed",
            "when": {"status": "shipped"},
            "template": "ok",
            "lane": "transactional",
            "priority": 5,
        },
        {
            "id": "shipped_broken",
            "event": "order_status_changed",
            "when": {"status": "shipped"},
            "template": "broken",
            "lane": "transactional",
            "priority": 10,
        },
    ]
    templates = {
        "ok": {
            "ru": "Заказ {{ event.order_id }} отправлен",
            "en": "Order {{ event.order_id }} shipped",
        },
        # valid at load time, fails on data: the attribute is absent from this event
        "broken": {
            "ru": "Код: {{ event.attributes.code }}",
            "en": "Code: {{ event.attributes.code }}",
        },
    }
    files = {
        "rules.yaml": yaml.safe_dump({"settings": settings, "rules": rules}, allow_unicode=True)
    }
    for tid, locales in templates.items():
        files[f"templates/{tid}.yaml"] = yaml.safe_dump(
            {"id": tid, "locales": locales}, allow_unicode=True
        )
    return files


def test_render_failure_in_one_rule_does_not_stop_the_others():
    ruleset = load_bundle(_two_rule_bundle())
    result = route(ruleset, "order_status_changed", order("shipped"), PROFILE, NOW)
    (req,) = result.requests
    assert_schema_valid(req)
    assert req["rule_id"] == "shipped_ok" and req["text"] == "Заказ A-1001 отправлен"
    assert req["expires_at_ms"] == NOW + 6 * 3600 * 1000
    (failure,) = result.failures
    assert failure.rule_id == "shipped_broken"
    assert failure.reason == "render_error"
    assert "template broken (ru), line 1: undefined" in failure.error and "'code'" in failure.error

    fixed = order("shipped") | {"attributes": {"code": "1234"}}
    result = route(ruleset, "order_status_changed", fixed, PROFILE, NOW)
    assert [r["rule_id"] for r in result.requests] == ["shipped_broken", "shipped_ok"]
    assert result.failures == []


def test_sparse_profile_still_gives_a_valid_request(ruleset):
    sparse = {"customer_id": "c-42", "phone": "89161234567"}
    (req,) = route(ruleset, "order_status_changed", order("shipped"), sparse, NOW).requests
    assert_schema_valid(req)
    assert req["country"] == "RU" and req["time_zone"] is None and req["locale"] == "ru"
    assert req["text"].startswith("Здравствуйте, заказ")


def _bundle_with(templates: dict[str, str], settings: dict | None = None) -> dict[str, str]:
    """One rule per template, all on shipped orders; each template the same in ru and en."""
    files = _two_rule_bundle()
    data = yaml.safe_load(files["rules.yaml"])
    data["settings"] |= settings or {}
    data["rules"] = [
        {"id": f"r_{tid}", "event": "order_status_changed", "when": {"status": "shipped"},
         "template": tid, "lane": "transactional", "priority": 100 - i}
        for i, tid in enumerate(templates)
    ]
    files = {"rules.yaml": yaml.safe_dump(data, allow_unicode=True)}
    for tid, source in templates.items():
        files[f"templates/{tid}.yaml"] = yaml.safe_dump(
            {"id": tid, "locales": {"ru": source, "en": source}}, allow_unicode=True
        )
    return files


def test_hostile_templates_fail_alone_with_their_reason_and_quickly():
    """Templates that pass validation but blow up on the data: each rule fails with the
    limit it hit, the good rule still produces its request, and nothing runs long."""
    ruleset = load_bundle(_bundle_with({
        "good": "Заказ {{ event.order_id }} отправлен",
        "slow": "{% set s = event.attributes.get('blob', '') %}"
                "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}.",
        "big": "{{ event.attributes.get('blob', '') ~ event.attributes.get('blob', '') }}",
        "leak": "{{ event.get('attributes') }}",
    }))
    event = order("shipped", attributes={"blob": "x" * 20_000})
    started = time.monotonic()
    result = route(ruleset, "order_status_changed", event, PROFILE, NOW)
    assert time.monotonic() - started < 3.0
    (req,) = result.requests
    assert req["rule_id"] == "r_good" and req["text"] == "Заказ A-1001 отправлен"
    reasons = {f.rule_id: f.reason for f in result.failures}
    assert reasons == {"r_slow": "render_timeout", "r_big": "render_too_large",
                       "r_leak": "render_unsafe"}


def test_render_limits_come_from_the_rule_set():
    files = _bundle_with({"good": "Заказ {{ event.order_id }} отправлен"},
                         {"render": {"max_chars": 20}})
    result = route(load_bundle(files), "order_status_changed", order("shipped"), PROFILE, NOW)
    assert result.requests == []
    (failure,) = result.failures
    assert failure.reason == "render_too_large" and "limit 20" in failure.error
