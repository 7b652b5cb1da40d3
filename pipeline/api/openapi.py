"""The OpenAPI 3.1 document of the API, generated from the Avro contracts (`schemas/`).

Each contract becomes a JSON Schema: a record is an object with its fields' docs, types
and defaults, required where Avro has no default, and no other properties; a union with
null is nullable; a map is an object of strings. Events differ in one place: `event_id`
is optional (the API makes one when it is missing). Every contract has an example, and
`tests/unit/test_api_bodies.py` checks that each example is accepted.
"""

from __future__ import annotations

from typing import Any

from pipeline import avro, topics
from pipeline.api.bodies import EVENT_TYPES, MAX_PROBLEMS
from pipeline.api.keys import SCOPES

EXAMPLES: dict[str, dict[str, Any]] = {
    "order_status_changed": {
        "event_id": "ord-A-1001-shipped", "customer_id": "cust-42",
        "occurred_at_ms": 1795600000000, "source": "shop-web", "order_id": "A-1001",
        "status": "shipped", "tracking_url": "https://shop.example.ru/track/A-1001"},
    "payment_due": {
        "customer_id": "cust-42", "occurred_at_ms": 1795600000000, "source": "billing",
        "invoice_id": "INV-7", "amount_minor": 150000, "currency": "RUB",
        "due_date": "2026-12-31", "payment_url": "https://shop.example.ru/pay/INV-7"},
    "promotion": {
        "customer_id": "cust-42", "occurred_at_ms": 1795600000000, "source": "crm",
        "campaign_id": "winter-sale", "promo_code": "WINTER10", "discount_percent": 10,
        "valid_until": "2027-01-15"},
    "service_notice": {
        "customer_id": "cust-42", "occurred_at_ms": 1795600000000, "source": "ops",
        "notice_id": "maint-12", "service": "app", "starts_at": "2026-12-20T02:00:00+03:00",
        "ends_at": "2026-12-20T04:00:00+03:00"},
    "customer_profile": {
        "customer_id": "cust-42", "phone": "+79161234567", "country": "RU", "locale": "ru",
        "time_zone": "Europe/Moscow", "first_name": "Анна", "segments": ["vip"],
        "attributes": {"city": "Moscow"}, "updated_at_ms": 1795600000000},
    "consent_change": {
        "phone": "+79161234567", "scope": "marketing", "status": "opt_in",
        "source": "web_form", "changed_at_ms": 1795600000000, "customer_id": "cust-42",
        "evidence": "form-2291"},
}

_PRIMITIVES: dict[str, dict[str, Any]] = {
    "null": {"type": "null"}, "boolean": {"type": "boolean"}, "string": {"type": "string"},
    "bytes": {"type": "string"}, "int": {"type": "integer", "format": "int32"},
    "long": {"type": "integer", "format": "int64"}, "float": {"type": "number"},
    "double": {"type": "number"},
}


def json_schema(schema: Any, optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON Schema of Avro `schema` (raw JSON form); `optional` names record fields
    that are not required although Avro gives them no default."""
    if isinstance(schema, str):
        return dict(_PRIMITIVES.get(schema, {"$ref": f"#/components/schemas/{schema}"}))
    if isinstance(schema, list):
        branches = [json_schema(b) for b in schema]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}
    kind = schema["type"]
    if kind == "record":
        props, required = {}, []
        for field in schema["fields"]:
            prop = json_schema(field["type"])
            if field.get("doc"):
                prop["description"] = field["doc"]
            if "default" in field:
                prop["default"] = field["default"]
            elif field["name"] not in optional:
                required.append(field["name"])
            props[field["name"]] = prop
        out: dict[str, Any] = {"type": "object", "properties": props, "required": required,
                               "additionalProperties": False}
        if schema.get("doc"):
            out["description"] = schema["doc"]
        return out
    if kind == "array":
        return {"type": "array", "items": json_schema(schema["items"])}
    if kind == "map":
        return {"type": "object", "additionalProperties": json_schema(schema["values"])}
    if kind == "enum":
        return {"type": "string", "enum": list(schema["symbols"])}
    return json_schema(kind)


def _answer(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/" + (
                "Accepted" if "event_ids" in example or "accepted" in example else "Error")},
                "example": example}}}


_ERRORS = {
    "400": _answer("The body is not JSON, or not of the endpoint's shape.",
                   {"error": "bad_request", "count": 1, "problems": [
                       {"path": "", "message": "not JSON: Expecting value (line 1, column 1)"}]}),
    "401": _answer("No API key, or not a live one (`Authorization: Bearer rsk_...`).",
                   {"error": "unauthorized", "count": 0, "problems": []}),
    "403": _answer("The key lacks the endpoint's scope.",
                   {"error": "forbidden", "count": 1, "problems": [
                       {"path": "", "message": "this key's scopes are profiles"}]}),
    "413": _answer("The body, or the number of items, is over the limit.",
                   {"error": "too_large", "count": 1, "problems": [
                       {"path": "events", "message": "6000 events; at most 5000 in one request"}]}),
    "422": _answer(f"Items that break their contract; nothing was published. At most "
                   f"{MAX_PROBLEMS} problems are listed, `count` says how many there were.",
                   {"error": "invalid", "count": 2, "problems": [
                       {"path": "events[3].event.order_id", "message": "missing (required, string)"},
                       {"path": "events[7].event.amount_minor",
                        "message": '"12.50" (string) is not an integer (long)'}]}),
    "429": _answer("The broker or the pipeline is behind; nothing was published. Retry "
                   "after the `Retry-After` header's seconds.",
                   {"error": "backpressure", "count": 1, "problems": [
                       {"path": "", "message": "the router is 250000 events behind"}]}),
    "503": _answer("The broker did not acknowledge every record in time: some may be "
                   "stored. Retry with the same Idempotency-Key.",
                   {"error": "not_stored", "count": 1, "problems": [
                       {"path": "", "message": "Local: Message timed out"}]}),
}

_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "maxLength": 200},
                "description": "Any unique string per logical request (e.g. a UUID). A retry "
                               "with the same key and body publishes nothing and gets the "
                               "first answer again (header `Idempotent-Replayed: true`) for "
                               "24 h; the same key with another body is a 422."}


def document(max_batch: int = 5000) -> dict[str, Any]:
    """The OpenAPI document served at `/openapi.json`."""
    reg = avro.registry()
    schemas: dict[str, Any] = {}
    for name in [*sorted(EVENT_TYPES), "customer_profile", "consent_change"]:
        contract = reg.contract(name)
        optional = frozenset({"event_id"}) if name in EVENT_TYPES else frozenset()
        schemas[contract.schema["name"]] = json_schema(contract.schema, optional) | {
            "examples": [EXAMPLES[name]]}
        if name in EVENT_TYPES:
            schemas[contract.schema["name"]]["properties"]["event_id"]["description"] += (
                " Optional here: the API makes one when it is missing (derived from the "
                "Idempotency-Key when there is one).")
    schemas["Accepted"] = {"type": "object", "properties": {
        "accepted": {"type": "integer", "description": "Records the broker acknowledged."},
        "event_ids": {"type": "array", "items": {"type": "string"},
                      "description": "The event ids, in request order (events only)."}}}
    schemas["Error"] = {"type": "object", "properties": {
        "error": {"type": "string"}, "count": {"type": "integer"},
        "problems": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string", "description": "Where in the body ('' for all of it)."},
            "message": {"type": "string"}}}}}}
    names = {n: reg.contract(n).schema["name"] for n in EVENT_TYPES}
    schemas["BatchItem"] = {"type": "object", "required": ["type", "event"],
                            "additionalProperties": False, "properties": {
                                "type": {"type": "string", "enum": sorted(EVENT_TYPES)},
                                "event": {"oneOf": [{"$ref": f"#/components/schemas/{s}"}
                                                    for s in names.values()]}}}
    schemas["Batch"] = {"type": "object", "required": ["events"], "additionalProperties": False,
                        "properties": {"events": {"type": "array", "maxItems": max_batch,
                                                  "items": {"$ref": "#/components/schemas/BatchItem"}}}}
    paths: dict[str, Any] = {}
    for kind, topic in sorted(EVENT_TYPES.items()):
        paths[f"/v1/events/{kind}"] = {"post": _operation(
            f"Publish one {kind} event to {topic}", "events", names[kind],
            EXAMPLES[kind], {"accepted": 1, "event_ids": [
                EXAMPLES[kind].get("event_id", "1b4e28ba-2fa1-11d2-883f-0016d3cca427")]},
            key="customer_id")}
    paths["/v1/events:batch"] = {"post": _operation(
        f"Publish up to {max_batch} events of any types, all or none", "events", "Batch",
        {"events": [{"type": k, "event": EXAMPLES[k]} for k in ("order_status_changed",
                                                               "payment_due")]},
        {"accepted": 2, "event_ids": ["ord-A-1001-shipped", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"]},
        key="customer_id")}
    for path, name, scope, topic in (("/v1/profiles", "customer_profile", "profiles",
                                      topics.PROFILES),
                                     ("/v1/consents", "consent_change", "consents",
                                      topics.CONSENT)):
        ref = reg.contract(name).schema["name"]
        paths[path] = {"post": _operation(
            f"Publish one {name} (or an array of them) to {topic}", scope, ref,
            EXAMPLES[name], {"accepted": 1}, many=True, max_batch=max_batch,
            key=topics.BY_NAME[topic].key)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Rassylka events API", "version": "1",
                 "description": "JSON in, the Avro records of `schemas/` out, on the same "
                                "topics as a direct publish. 202 means the broker stored "
                                "every record of the request (acks=all)."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": f"`rassylka api-keys create --client NAME --scopes "
                           f"{','.join(SCOPES)}` prints a key once."}}},
        "security": [{"apiKey": []}],
    }


def _operation(summary: str, scope: str, ref: str, example: Any, accepted: dict[str, Any],
               key: str, many: bool = False, max_batch: int = 5000) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{ref}"}
    if many:
        schema = {"oneOf": [schema, {"type": "array", "maxItems": max_batch, "items": schema}]}
    return {
        "summary": summary,
        "description": f"Needs the `{scope}` scope. Kafka key: `{key}`.",
        "parameters": [_IDEMPOTENCY],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": schema, "example": example}}},
        "responses": {"202": _answer("Stored by the broker (every record acknowledged).",
                                     accepted), **_ERRORS},
    }
