"""Decoded Avro records → row tuples for the ClickHouse fact tables.

Pure functions, called by the analytics sink for every record it consumes. Each
`*_COLUMNS` constant names the columns of its row tuple, in order; `day` columns are
left to ClickHouse (`DEFAULT toDate(...)`). Times stay epoch milliseconds: the
DateTime64(3) columns take them as they are. Absent optional strings become ''.
Phone numbers are hashed with the deployment's key and masked here, before anything
leaves the process. A record missing a required field raises `InvalidRecord`.

Profiles are the one versioned table: their rows carry the record's Kafka timestamp
(`published_ms`), and a tombstone on the compacted profiles topic becomes a
`deleted_profile_row`, since a deletion has nothing else to order it by.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat
from phonenumbers import carrier as _carrier

from pipeline.analytics.privacy import mask, phone_hash, scrub
from pipeline.errors import PermanentError
from pipeline.sender.decision import Reject
from pipeline.sender.numbers import parse_number

Record = Mapping[str, Any]
Row = tuple[Any, ...]


class InvalidRecord(PermanentError):
    """A record lacks a field its schema requires; dead-letter it."""

    reason = "invalid_record"


MESSAGE_COLUMNS = (
    "request_id",
    "message_id",
    "status",
    "reason",
    "lane",
    "rule_id",
    "template_id",
    "variant",
    "campaign_id",
    "customer_id",
    "phone_hash",
    "phone_masked",
    "region",
    "operator",
    "gateway",
    "segments",
    "encoding",
    "cost",
    "attempts",
    "event_time",
    "decided_at",
    "config_version",
)

RECEIPT_COLUMNS = (
    "message_id",
    "gateway_message_id",
    "state",
    "error_code",
    "segment",
    "segments",
    "gateway",
    "received_at",
)

CLICK_COLUMNS = ("click_id", "code", "message_id", "url", "user_agent", "clicked_at")

CONVERSION_COLUMNS = (
    "conversion_id",
    "order_id",
    "customer_id",
    "message_id",
    "touch",
    "touch_at",
    "revenue_minor",
    "currency",
    "rule_id",
    "campaign_id",
    "variant",
    "converted_at",
)

INBOUND_COLUMNS = (
    "inbound_id",
    "sender_hash",
    "sender_masked",
    "to_number",
    "text",
    "gateway",
    "received_at",
)

CONSENT_COLUMNS = (
    "phone_hash",
    "phone_masked",
    "scope",
    "status",
    "source",
    "customer_id",
    "evidence",
    "changed_at",
)


def message_row(r: Record, key: str) -> Row:
    """`send_outcome` → `messages`. A missing or invalid phone leaves hash and mask ''."""
    phone = r.get("phone")
    return (
        r["request_id"],
        r["message_id"],
        r["status"],
        _s(r.get("reason")),
        r["lane"],
        r["rule_id"],
        r["template_id"],
        r["variant"],
        _s(r.get("campaign_id")),
        r["customer_id"],
        phone_hash(phone, key) if phone else "",
        mask(phone) if phone else "",
        _s(r.get("region")),
        _s(r.get("operator")),
        _s(r.get("gateway")),
        int(r.get("segments") or 0),
        _s(r.get("encoding")),
        float(r.get("cost") or 0.0),
        int(r.get("attempts") or 1),
        int(r.get("event_occurred_at_ms") or 0),
        int(r["decided_at_ms"]),
        _s(r.get("config_version")),
    )


def receipt_row(r: Record, key: str = "") -> Row:
    """`delivery_receipt` → `receipts` (no phone in it; `key` unused)."""
    return (
        r["message_id"],
        r["gateway_message_id"],
        r["state"],
        _s(r.get("error_code")),
        int(r.get("segment") or 1),
        int(r.get("segments") or 1),
        _s(r.get("gateway")),
        int(r["received_at_ms"]),
    )


def click_row(r: Record, key: str = "") -> Row:
    """`click` → `clicks` (`key` unused)."""
    return (
        r["click_id"],
        r["code"],
        r["message_id"],
        r["url"],
        _s(r.get("user_agent")),
        int(r["clicked_at_ms"]),
    )


def conversion_row(r: Record, key: str = "") -> Row:
    """`conversion` → `conversions` (`key` unused)."""
    return (
        r["conversion_id"],
        r["order_id"],
        r["customer_id"],
        r["message_id"],
        r["touch"],
        int(r["touch_at_ms"]),
        int(r["revenue_minor"]),
        r.get("currency") or "RUB",
        _s(r.get("rule_id")),
        _s(r.get("campaign_id")),
        _s(r.get("variant")),
        int(r["converted_at_ms"]),
    )


def inbound_row(r: Record, key: str) -> Row:
    """`inbound_message` → `inbound`: sender hashed and masked, its number masked in the text."""
    sender = r["from_number"]
    return (
        r["inbound_id"],
        phone_hash(sender, key),
        mask(sender),
        r["to"],
        scrub(r["text"], sender),
        _s(r.get("gateway")),
        int(r["received_at_ms"]),
    )


def consent_row(r: Record, key: str) -> Row:
    """`consent_change` → `consent_changes`: number hashed and masked, also in the evidence."""
    phone = r["phone"]
    return (
        phone_hash(phone, key),
        mask(phone),
        r["scope"],
        r["status"],
        r["source"],
        _s(r.get("customer_id")),
        _s(scrub(r.get("evidence"), phone)),
        int(r["changed_at_ms"]),
    )


REDELIVERY_COLUMNS = ("request_id", "lane", "rule_id", "campaign_id", "detail", "seen_at")


def redelivery_row(r: Record, key: str = "") -> Row:
    """A request delivered to the sender again (`send_outcome` with reason `duplicate`,
    from `sms.redeliveries`) → `redeliveries`: counted there, never in `messages`, so a
    replay cannot replace a request's real outcome."""
    return (
        r["request_id"],
        r["lane"],
        r["rule_id"],
        _s(r.get("campaign_id")),
        _s(r.get("detail"))[:300],
        int(r["decided_at_ms"]),
    )


PROFILE_COLUMNS = (
    "customer_id",
    "phone_hash",
    "phone_masked",
    "country",
    "region",
    "city",
    "locale",
    "time_zone",
    "operator",
    "number_status",
    "number_region",
    "segments",
    "attributes",
    "deleted",
    "updated_at",
    "published_at",
)


def profile_row(r: Record, key: str, published_ms: int = 0) -> Row:
    """`customer_profile` → `profiles`, versioned by `published_ms` (the Kafka timestamp).

    The number is hashed in E.164 (read in the profile's country), so the hash matches the
    one in messages, inbound and consent_changes; region and city come from the attributes,
    which are kept with the number masked wherever they repeat it. Names are not kept.
    """
    country = _s(r.get("country")) or "RU"
    e164, operator = profile_number(r["phone"], country)
    fit = parse_number(r["phone"], country)
    attributes = {str(k): _s(scrub(str(v), e164) if e164 else v)
                  for k, v in (r.get("attributes") or {}).items()}
    return (
        r["customer_id"],
        phone_hash(e164, key) if e164 else "",
        mask(e164) if e164 else "",
        country,
        attributes.get("region", ""),
        attributes.get("city", ""),
        _s(r.get("locale")),
        _s(r.get("time_zone")),
        operator,
        fit.reason if isinstance(fit, Reject) else "",
        "" if isinstance(fit, Reject) else fit.region,
        [str(s) for s in r.get("segments") or ()],
        attributes,
        0,
        int(r.get("updated_at_ms") or 0) or int(published_ms),
        int(published_ms),
    )


def deleted_profile_row(customer_id: str, published_ms: int) -> Row:
    """A tombstone on the profiles topic → a `profiles` row marked deleted, fields empty."""
    if not customer_id:
        raise InvalidRecord("a profile tombstone without a key (customer_id)")
    return (customer_id, "", "", "", "", "", "", "", "", "", "", [], {}, 1, published_ms,
            published_ms)


@lru_cache(maxsize=65536)
def profile_number(phone: str, country: str) -> tuple[str, str]:
    """(E.164, operator) of a profile's number as typed, national numbers read in `country`.

    The operator is phonenumbers' range holder (as the sender reports it in messages), ''
    when unknown. A number phonenumbers cannot read keeps its typed digits, so it is still
    hashed and masked, never stored in clear; an empty one gives ('', '').
    """
    if not any(ch.isdigit() for ch in phone):
        return "", ""
    try:
        number = phonenumbers.parse(phone, country or None)
    except NumberParseException:
        return phone.strip(), ""
    if not phonenumbers.is_valid_number(number):
        return phone.strip(), ""
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return e164, _carrier.name_for_number(number, "en") or ""


ORDER_COLUMNS = (
    "event_id",
    "order_id",
    "customer_id",
    "status",
    "previous_status",
    "amount_minor",
    "currency",
    "source",
    "occurred_at",
)


def order_row(r: Record, key: str = "") -> Row:
    """`order_status_changed` → `orders`: one row per status event (`key` unused)."""
    return (
        r["event_id"],
        r["order_id"],
        r["customer_id"],
        r["status"],
        _s(r.get("previous_status")),
        int(r.get("amount_minor") or 0),
        r.get("currency") or "RUB",
        _s(r.get("source")),
        int(r["occurred_at_ms"]),
    )


CAMPAIGN_MEMBER_COLUMNS = ("campaign_id", "customer_id", "snapshot", "phase", "variant",
                           "time_zone", "frozen_at")


def campaign_member_row(r: Record, key: str = "", published_ms: int = 0) -> Row:
    """A member of a campaign's audience snapshot (JSON on campaigns.audience; the sink
    takes `campaign_id` from the record key '<campaign>|<customer>' when the record lacks
    it) → `campaign_members`, stamped with the record's Kafka time."""
    campaign_id = _s(r.get("campaign_id"))
    if not campaign_id or r.get("phase") not in ("test", "holdout", "rollout"):
        raise InvalidRecord(f"an audience member without a campaign or phase: {r.get('phase')!r}")
    return (campaign_id, r["customer_id"], _s(r.get("snapshot")), r["phase"],
            _s(r.get("variant")), _s(r.get("zone")), int(published_ms))


DECISION_COLUMNS = ("decision_id", "kind", "subject", "action", "winner", "reason", "metric",
                    "probabilities", "weights", "previous_weights", "inputs", "decided_at")


def decision_row(r: Record, key: str = "") -> Row:
    """An automatic decision (JSON on campaigns.decisions) → `decisions`: a campaign's
    verdict (`campaign_id`, `decided_at_ms`) or a bandit rule's weights (`rule_id`,
    `updated_at_ms`); the inputs are kept as JSON."""
    if r.get("campaign_id"):
        kind, subject, at = "campaign", str(r["campaign_id"]), int(r["decided_at_ms"])
        action = str(r["action"])
    else:
        kind, subject, at = "bandit", str(r["rule_id"]), int(r["updated_at_ms"])
        action = "weights"
    return (f"{kind}:{subject}:{at}", kind, subject, action, _s(r.get("winner")),
            _s(r.get("reason")), _s(r.get("metric")), _floats(r.get("probabilities")),
            _floats(r.get("weights")), _floats(r.get("previous_weights")),
            json.dumps(r.get("inputs") or {}, sort_keys=True), at)


CONFIG_RELEASE_COLUMNS = ("version", "number", "stamp", "content_hash", "author", "message",
                          "previous", "rollback_of", "added", "removed", "changed", "files",
                          "published_at", "activate_at")


def config_release_row(r: Record, key: str = "") -> Row:
    """A config release (JSON on config.rules, `pipeline.releases.Release`) → `config_releases`."""
    number, digest = int(r["number"]), str(r["content_hash"])
    diff = r.get("diff") or {}
    return (f"v{number}", number, f"v{number}@{digest[:8]}", digest, _s(r.get("author")),
            _s(r.get("message")), _s(r.get("previous")), _s(r.get("rollback_of")),
            [str(x) for x in diff.get("added", [])], [str(x) for x in diff.get("removed", [])],
            [str(x) for x in diff.get("changed", [])],
            {str(k): str(v) for k, v in r["files"].items()}, int(r["created_at_ms"]),
            int(r["activate_at_ms"]))


def _floats(values: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (values or {}).items()}


@dataclass(frozen=True)
class TableMapping:
    """Where records of one schema go: the table, its insert columns, the row function.

    A `versioned` mapping's row function also takes the record's Kafka timestamp.
    """

    table: str
    columns: tuple[str, ...]
    to_row: Callable[..., Row]
    versioned: bool = False


# Keyed by the schema's file name in schemas/ (without .avsc).
MAPPINGS: dict[str, TableMapping] = {
    "send_outcome": TableMapping("messages", MESSAGE_COLUMNS, message_row),
    "delivery_receipt": TableMapping("receipts", RECEIPT_COLUMNS, receipt_row),
    "click": TableMapping("clicks", CLICK_COLUMNS, click_row),
    "conversion": TableMapping("conversions", CONVERSION_COLUMNS, conversion_row),
    "inbound_message": TableMapping("inbound", INBOUND_COLUMNS, inbound_row),
    "consent_change": TableMapping("consent_changes", CONSENT_COLUMNS, consent_row),
    "customer_profile": TableMapping("profiles", PROFILE_COLUMNS, profile_row, versioned=True),
    "order_status_changed": TableMapping("orders", ORDER_COLUMNS, order_row),
    # JSON topics of the campaign worker (no Avro contract; the sink parses them itself)
    "campaign_member": TableMapping("campaign_members", CAMPAIGN_MEMBER_COLUMNS,
                                    campaign_member_row, versioned=True),
    "decision": TableMapping("decisions", DECISION_COLUMNS, decision_row),
    "config_release": TableMapping("config_releases", CONFIG_RELEASE_COLUMNS, config_release_row),
}
REDELIVERIES = TableMapping("redeliveries", REDELIVERY_COLUMNS, redelivery_row)


def to_row(schema: str, record: Record, key: str, published_ms: int = 0) -> tuple[str, Row]:
    """The table and row for a record of `schema`; `InvalidRecord` when it cannot be mapped.

    `published_ms` is the record's Kafka timestamp, used only by versioned tables (profiles).
    """
    mapping = MAPPINGS.get(schema)
    if schema == "send_outcome" and record.get("reason") == "duplicate":
        mapping = REDELIVERIES  # also what senders before sms.redeliveries wrote as outcomes
    if mapping is None:
        raise InvalidRecord(f"no analytics table for schema {schema!r}")
    try:
        if mapping.versioned:
            return mapping.table, mapping.to_row(record, key, published_ms)
        return mapping.table, mapping.to_row(record, key)
    except KeyError as exc:
        raise InvalidRecord(f"{schema} record lacks field {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidRecord(f"{schema} record has a bad field: {exc}") from exc


def _s(value: Any) -> str:
    return "" if value is None else str(value)
