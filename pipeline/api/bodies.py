"""Request bodies to the records they publish: pure, no I/O.

Each function takes the parsed JSON of one request and returns what to publish, or raises
`Invalid` with an HTTP status and every problem with its path in the body
(`events[3].event.order_id`), so nothing of a request with one bad item is published.

The records are exactly those of a direct publish (README, "Publishing events"): the
topic's Avro contract in single-object encoding, keyed as the catalog says (events and
profiles by `customer_id`, consents by `<phone>|<scope>`). The API adds one thing: an
event without `event_id` gets one (`EventIds`); every other field is the publisher's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers

from pipeline import avro, topics
from pipeline.api.publisher import Record
from pipeline.settings import Settings
from pipeline.validation import Problem, default_key, validate_item

EVENT_TYPES: dict[str, str] = {schema: name for name, schema in topics.EVENT_TOPICS.items()}
"""Event type (its contract's name, the `{type}` of the URL) -> catalog topic."""

MAX_PROBLEMS = 100
"""Most problems listed in one answer (the count says how many there were)."""

_NAMESPACE = uuid.UUID("6f1d0b52-6a44-4f1c-9e55-2f0b8f0e3a11")


class Invalid(Exception):
    """The request cannot be published as it is: `status` (400, 404, 413, 422) and why."""

    def __init__(self, status: int, problems: list[Problem]) -> None:
        self.status = status
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems[:3]))

    def answer(self) -> dict[str, Any]:
        """The JSON body of the error answer."""
        return {"error": {400: "bad_request", 404: "unknown_type", 413: "too_large",
                          422: "invalid"}.get(self.status, "invalid"),
                "problems": [{"path": p.path, "message": p.message}
                             for p in self.problems[:MAX_PROBLEMS]],
                "count": len(self.problems)}


@dataclass(frozen=True)
class Accepted:
    """What one request publishes, and the event ids its 202 answer lists."""

    records: list[Record]
    event_ids: list[str]


class EventIds:
    """Ids for events sent without `event_id`: derived from the client and its
    Idempotency-Key when there is one (a retry gets the same ids, so even a retry the API
    cannot recognise is deduplicated by the pipeline), else random."""

    def __init__(self, client: str, idempotency_key: str | None) -> None:
        self.base = f"{client}|{idempotency_key}" if idempotency_key else None

    def __call__(self, index: int) -> str:
        if self.base is None:
            return str(uuid.uuid4())
        return str(uuid.uuid5(_NAMESPACE, f"{self.base}|{index}"))


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`; Invalid(400) saying where it stops being JSON."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise Invalid(400, [Problem("", "the body is not UTF-8")]) from None
    except json.JSONDecodeError as exc:
        raise Invalid(400, [Problem("", f"not JSON: {exc.msg} (line {exc.lineno}, "
                                        f"column {exc.colno})")]) from None


def event(settings: Settings, kind: str, body: Any, ids: Callable[[int], str]) -> Accepted:
    """`POST /v1/events/{kind}`: one event object."""
    if kind not in EVENT_TYPES:
        raise Invalid(404, [Problem("type", f"unknown event type {kind!r}; known: "
                                            f"{', '.join(sorted(EVENT_TYPES))}")])
    if not isinstance(body, dict):
        raise Invalid(400, [Problem("", "the body must be a JSON object (one event)")])
    record, event_id, found = _event(settings, kind, body, ids, 0, "")
    if found:
        raise Invalid(422, found)
    assert record is not None
    return Accepted([record], [event_id])


def batch(settings: Settings, body: Any, ids: Callable[[int], str], max_items: int) -> Accepted:
    """`POST /v1/events:batch`: `{"events": [{"type": T, "event": {...}}, ...]}`."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise Invalid(400, [Problem("events", 'the body must be {"events": [{"type": ..., '
                                              '"event": {...}}, ...]}')])
    strangers = [k for k in body if k != "events"]
    items = body["events"]
    if len(items) > max_items:
        raise Invalid(413, [Problem("events", f"{len(items)} events; at most {max_items} "
                                              f"in one request")])
    found = [Problem(k, "unknown field of the batch") for k in strangers]
    if not items:
        found.append(Problem("events", "empty: nothing to publish"))
    records, event_ids = [], []
    for i, item in enumerate(items):
        where = f"events[{i}]"
        if not isinstance(item, dict):
            found.append(Problem(where, 'a JSON object {"type": ..., "event": {...}} expected'))
            continue
        found += [Problem(f"{where}.{k}", "unknown field (type and event only)")
                  for k in item if k not in ("type", "event")]
        kind = item.get("type")
        if kind not in EVENT_TYPES:
            found.append(Problem(f"{where}.type", f"{json.dumps(kind)} is not an event type; "
                                                  f"known: {', '.join(sorted(EVENT_TYPES))}"))
            continue
        if not isinstance(item.get("event"), dict):
            found.append(Problem(f"{where}.event", "a JSON object (the event) expected"))
            continue
        record, event_id, problems = _event(settings, kind, item["event"], ids, i,
                                            f"{where}.event")
        found += problems
        if record is not None:
            records.append(record)
            event_ids.append(event_id)
    if found:
        raise Invalid(422, found)
    return Accepted(records, event_ids)


def profiles(settings: Settings, body: Any, max_items: int) -> Accepted:
    """`POST /v1/profiles`: one customer_profile object, or an array of them."""
    return _records(settings, topics.PROFILES, body, max_items, lambda item: [])


def consents(settings: Settings, body: Any, max_items: int) -> Accepted:
    """`POST /v1/consents`: one consent_change object, or an array of them. Beyond the
    contract: the phone in E.164 (the topic's key) and the scope and status the sender
    knows (it would dead-letter any other)."""
    return _records(settings, topics.CONSENT, body, max_items, _consent_problems)


def _event(settings: Settings, kind: str, item: dict[str, Any], ids: Callable[[int], str],
           index: int, where: str) -> tuple[Record | None, str, list[Problem]]:
    if "event_id" not in item:
        item = {**item, "event_id": ids(index)}
    name = EVENT_TYPES[kind]
    result = validate_item(name, avro.registry().contract(kind), item, ["customer_id"])
    if isinstance(result, list):
        return None, "", [_at(where, p, kind) for p in result]
    key, value = result
    return Record(settings.topic(name), key, value), str(item["event_id"]), []


def _records(settings: Settings, name: str, body: Any, max_items: int,
             extra: Callable[[dict[str, Any]], list[Problem]]) -> Accepted:
    spec = topics.BY_NAME[name]
    many = isinstance(body, list)
    items = body if many else [body]
    if not many and not isinstance(body, dict):
        raise Invalid(400, [Problem("", f"the body must be a {spec.schema} object or an "
                                        f"array of them")])
    if len(items) > max_items:
        raise Invalid(413, [Problem("", f"{len(items)} items; at most {max_items} in one "
                                        f"request")])
    if not items:
        raise Invalid(422, [Problem("", "empty: nothing to publish")])
    contract = avro.registry().contract(spec.schema)
    key_fields = default_key(spec) or []
    found: list[Problem] = []
    records = []
    for i, item in enumerate(items):
        where = f"[{i}]" if many else ""
        result = validate_item(name, contract, item, key_fields)
        if not isinstance(result, list) and (more := extra(item)):
            result = more
        if isinstance(result, list):
            found += [_at(where, p, spec.schema) for p in result]
        else:
            records.append(Record(settings.topic(name), *result))
    if found:
        raise Invalid(422, found)
    return Accepted(records, [])


def _at(where: str, problem: Problem, contract: str) -> Problem:
    """`problem` (path relative to the item) at its place in the body."""
    path = problem.path
    if path == avro.registry().contract(contract).schema["name"]:
        path = ""  # the item itself
    full = f"{where}.{path}" if where and path else where or path
    return Problem(full, problem.message)


def _consent_problems(item: dict[str, Any]) -> list[Problem]:
    from pipeline.sender.consent import InvalidConsentChange, apply_change

    out = []
    phone = item["phone"]
    try:
        number = phonenumbers.parse(phone, None)
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        valid = phonenumbers.is_valid_number(number) and e164 == phone
    except phonenumbers.NumberParseException:
        valid = False
    if not valid:
        out.append(Problem("phone", "not a valid number in E.164 (+ country code and number); it "
                                    "is the topic's key"))
    try:
        apply_change(None, item)
    except InvalidConsentChange as exc:
        field = "scope" if "scope" in str(exc) else "status" if "status" in str(exc) else ""
        out.append(Problem(field, str(exc)))
    return out
