"""The API's pure parts: bodies to records, keys, limits and the OpenAPI document."""

from __future__ import annotations

import pytest

from pipeline import avro, topics
from pipeline.api import bodies
from pipeline.api.bodies import EventIds, Invalid
from pipeline.api.keys import new_key, split_key
from pipeline.api.openapi import EXAMPLES, document
from pipeline.api.settings import ApiSettings
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.validation import check

S = Settings(topic_prefix="p.")
IDS = EventIds("shop", None)


def _paths(exc: pytest.ExceptionInfo[Invalid]) -> list[str]:
    return [p.path for p in exc.value.problems]


@pytest.mark.parametrize("kind", sorted(bodies.EVENT_TYPES))
def test_every_event_example_is_accepted_as_a_direct_publish_would_write_it(kind: str) -> None:
    got = bodies.event(S, kind, EXAMPLES[kind], EventIds("shop", "k1"))
    [record] = got.records
    event = {**EXAMPLES[kind], "event_id": got.event_ids[0]}
    assert record.topic == "p." + bodies.EVENT_TYPES[kind]
    assert record.key == b"cust-42"
    assert record.value == avro.encode(kind, event)


def test_profile_and_consent_examples_are_accepted_with_the_catalog_keys() -> None:
    [profile] = bodies.profiles(S, EXAMPLES["customer_profile"], 10).records
    assert (profile.topic, profile.key) == ("p." + topics.PROFILES, b"cust-42")
    [consent] = bodies.consents(S, [EXAMPLES["consent_change"]], 10).records
    assert (consent.topic, consent.key) == ("p." + topics.CONSENT, b"+79161234567|marketing")


def test_ids_from_an_idempotency_key_repeat_and_random_ones_do_not() -> None:
    assert EventIds("shop", "k")(3) == EventIds("shop", "k")(3) != EventIds("crm", "k")(3)
    assert EventIds("shop", "k")(0) != EventIds("shop", "k")(1)
    assert IDS(0) != IDS(0)


def test_every_bad_item_of_a_batch_is_named_by_its_path() -> None:
    good = {"type": "promotion", "event": EXAMPLES["promotion"]}
    body = {"events": [good,
                       {"type": "promotion", "event": {**EXAMPLES["promotion"], "discount_percent": "5"}},
                       {"type": "nope", "event": {}},
                       {"type": "promotion", "event": EXAMPLES["promotion"], "extra": 1},
                       "junk"]}
    with pytest.raises(Invalid) as exc:
        bodies.batch(S, body, IDS, 10)
    assert exc.value.status == 422
    assert _paths(exc) == ["events[1].event.discount_percent", "events[2].type",
                           "events[3].extra", "events[4]"]


@pytest.mark.parametrize(("body", "status", "path"), [
    ({"events": [{"type": "promotion", "event": EXAMPLES["promotion"]}] * 11}, 413, "events"),
    ({"events": []}, 422, "events"),
    ([], 400, "events"),
    ({"events": [], "more": 1}, 422, "more"),
])
def test_batch_shapes(body: object, status: int, path: str) -> None:
    with pytest.raises(Invalid) as exc:
        bodies.batch(S, body, IDS, 10)
    assert exc.value.status == status and path in _paths(exc)


def test_an_item_that_is_not_an_object_is_named_whole() -> None:
    with pytest.raises(Invalid) as exc:
        bodies.profiles(S, [EXAMPLES["customer_profile"], 7], 10)
    assert _paths(exc) == ["[1]"]


@pytest.mark.parametrize(("change", "path"), [
    ({"phone": "89161234567"}, "phone"),
    ({"phone": "+7916"}, "phone"),
    ({"scope": "promo"}, "scope"),
    ({"status": "maybe"}, "status"),
])
def test_consents_beyond_the_contract(change: dict[str, str], path: str) -> None:
    with pytest.raises(Invalid) as exc:
        bodies.consents(S, {**EXAMPLES["consent_change"], **change}, 10)
    assert _paths(exc) == [path]
    assert "+7916" not in str(exc.value.answer())  # problems never repeat the number


def test_not_json_says_where() -> None:
    with pytest.raises(Invalid) as exc:
        bodies.parse_json(b'{"a": 1,\n "b": }')
    assert exc.value.status == 400 and "line 2" in exc.value.problems[0].message


def test_an_unknown_event_type_is_404_listing_the_known_ones() -> None:
    with pytest.raises(Invalid) as exc:
        bodies.event(S, "order", EXAMPLES["promotion"], IDS)
    assert exc.value.status == 404 and "order_status_changed" in exc.value.problems[0].message


def test_a_key_is_checked_by_its_hash_only() -> None:
    entry, text = new_key("shop", ["events", "consents"], now_ms=1)
    key_id, secret = split_key(text) or ("", "")
    assert key_id == entry.key_id and entry.matches(secret)
    assert not entry.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert secret not in entry.to_json().decode()
    assert split_key("rsk_nothex_x") is None


@pytest.mark.parametrize(("client", "scopes"), [("Shop!", ["events"]), ("shop", ["admin"]),
                                                ("shop", [])])
def test_bad_clients_and_scopes_are_config_errors(client: str, scopes: list[str]) -> None:
    with pytest.raises(ConfigError):
        new_key(client, scopes)


def test_limits_come_from_the_environment() -> None:
    got = ApiSettings.from_env({"RASSYLKA_API_MAX_BATCH": "100",
                                "RASSYLKA_API_DELIVERY_TIMEOUT_S": "2.5"})
    assert (got.max_batch, got.delivery_timeout_s) == (100, 2.5)
    with pytest.raises(ConfigError, match="RASSYLKA_API_MAX_BATCH"):
        ApiSettings.from_env({"RASSYLKA_API_MAX_BATCH": "many"})


def test_the_openapi_document_follows_the_contracts() -> None:
    doc = document(max_batch=100)
    schemas = doc["components"]["schemas"]
    order = schemas["OrderStatusChanged"]
    assert "event_id" not in order["required"] and "order_id" in order["required"]
    assert order["additionalProperties"] is False
    assert order["properties"]["tracking_url"] == {
        "anyOf": [{"type": "null"}, {"type": "string"}], "default": None,
        "description": "Parcel tracking link."}
    assert schemas["ConsentChange"]["required"] == ["phone", "scope", "status", "source",
                                                    "changed_at_ms"]
    assert set(doc["paths"]) == {*(f"/v1/events/{k}" for k in bodies.EVENT_TYPES),
                                 "/v1/events:batch", "/v1/profiles", "/v1/consents"}
    assert schemas["Batch"]["properties"]["events"]["maxItems"] == 100


def test_check_keeps_the_produce_command_lines() -> None:
    contract = avro.registry().contract("payment_due")
    lines = check(contract.schema, {**EXAMPLES["payment_due"], "event_id": "e", "x": 1},
                  contract.schema["name"], {})
    assert lines == ["x: unknown field of PaymentDue"]
