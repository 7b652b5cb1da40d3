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

Outcomes, most of the traffic, also have a bulk path (`OutcomeColumns`, at the end): Avro
bodies decoded and mapped a batch at a time into the same `messages` rows, as columns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import NumberParseException, PhoneNumberFormat
from phonenumbers import carrier as _carrier

from connectors.clickhouse import ArrowRows
from pipeline.analytics.privacy import HASH_BYTES, mask, phone_hash, scrub, scrub_segment
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
    "part_ref",
    "segment",
    "segments",
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
        (scrub_segment if r.get("segments", 1) > 1 else scrub)(r["text"], sender),
        _s(r.get("gateway")),
        int(r["received_at_ms"]),
        r.get("part_ref"),
        r.get("segment", 1),
        r.get("segments", 1),
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


# -- the bulk path: outcomes decoded and mapped many at a time, column by column ---------
#
# Outcomes come by the thousand. Decoding each with fastavro and building its tuple costs
# tens of µs a record in Python; `OutcomeColumns` reads every record of a chunk at once,
# field by field, with numpy (positions, varints, string spans), and hands the `messages`
# rows over as Arrow columns (`ArrowRows`), which ClickHouse parses in C++. It takes only
# the records it reads exactly as fastavro and `message_row` would; the others are left
# to the per-record path (a dead letter, a redelivery, a value out of the usual range).

_PAD = bytes(16)  # after the last body: a varint read at any record's end stays in the buffer
_VARINT_BYTES = {"int": 5, "long": 9}  # longer ones (|long| ≥ 2**62) go the per-record way
_ARRAY_ITEMS = 64  # longer arrays go the per-record way (each item is a pass over the chunk)
_TIME = pa.timestamp("ms", tz="UTC")
_TIME_RANGE = (0, 4_102_444_800_000)  # 1970 to 2100: times outside go the per-record way
_UINT16_RANGE = (0, 65_535)
MESSAGE_SCHEMA = pa.schema(
    [(name, pa.uint16()) if name in ("segments", "attempts")
     else (name, pa.float64()) if name == "cost"
     else (name, _TIME) if name in ("event_time", "decided_at")
     else (name, pa.large_string()) for name in MESSAGE_COLUMNS]
)
# The send_outcome fields `message_row` reads, in the form the bulk path needs them.
_OUTCOME_KINDS = {
    "request_id": "string", "message_id": "string", "status": "string",
    "reason": "optional_string", "lane": "string", "rule_id": "string",
    "template_id": "string", "variant": "string", "campaign_id": "optional_string",
    "customer_id": "string", "phone": "optional_string", "region": "optional_string",
    "operator": "optional_string", "gateway": "optional_string", "segments": "int",
    "encoding": "optional_string", "cost": "double", "attempts": "int",
    "event_occurred_at_ms": "long", "decided_at_ms": "long",
    "config_version": "optional_string",
}
# their strings ('' for null); all but the phone are `messages` columns of the same name
_TEXT_FIELDS = [name for name, kind in _OUTCOME_KINDS.items() if kind.endswith("string")]


def _kind(avro_type: Any) -> str | None:
    """The bulk reader's name for an Avro field type; None when it cannot read it."""
    if avro_type in ("string", "int", "long", "double"):
        return str(avro_type)
    if avro_type == ["null", "string"]:  # branch 1 is the string
        return "optional_string"
    if isinstance(avro_type, dict) and avro_type.get("type") == "array" \
            and avro_type.get("items") == "string":
        return "string_array"
    return None


class _Chunk:
    """Every record of a chunk in one buffer, with each record's read position.

    A read advances every record's position at once (or only where a mask holds). A
    record read past its end (truncated, corrupt) or holding something the bulk path does
    not take is marked `irregular`; its position is held at its end, so reads stay in
    the buffer. Every string read is kept as a span (start, length; 0 where not read).
    """

    def __init__(self, values: Sequence[bytes], skip: int) -> None:
        sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        self.end = np.cumsum(sizes)
        start = self.end - sizes + skip
        self.buf = np.frombuffer(b"".join(values) + _PAD, dtype=np.uint8)
        self.irregular = start > self.end
        self.pos = np.minimum(start, self.end)
        self.spans: list[tuple[np.ndarray, np.ndarray]] = []

    def varint(self, where: np.ndarray | None = None, max_bytes: int = 9) -> np.ndarray:
        """Zigzag varints (Avro int and long) at the positions; 0 where `where` is false."""
        at = self.pos
        byte = self.buf[at]
        value = (byte & 0x7F).astype(np.int64)
        going_on = byte >= 0x80
        if where is not None:
            going_on &= where
        more = np.flatnonzero(going_on)
        after = at + 1
        for shift in range(7, 7 * max_bytes, 7):
            if not len(more):
                break
            byte = self.buf[after[more]]
            value[more] |= (byte & 0x7F).astype(np.int64) << shift
            after[more] += 1
            more = more[byte >= 0x80]
        self.irregular[more] = True
        if where is not None:
            after = np.where(where, after, at)
            value[~where] = 0
        self._advance(after)
        return (value >> 1) ^ -(value & 1)

    def string(self, where: np.ndarray | None = None) -> int:
        """Read a string (where `where` holds); returns the index of its span."""
        length = self.varint(where)
        negative = length < 0
        self.irregular |= negative
        length[negative] = 0
        start = self.pos
        self._advance(start + length)
        self.spans.append((start, length))
        return len(self.spans) - 1

    def double(self) -> np.ndarray:
        at = self.pos
        value = self.buf[at[:, None] + np.arange(8)].view("<f8").ravel()
        self._advance(at + 8)
        return value

    def texts(self, keep: np.ndarray) -> list[pa.LargeStringArray] | None:
        """Each span's strings for the `keep` rows; None when one is not valid UTF-8
        (fastavro decodes strictly: such a string fails its record).

        The spans and the bytes between them cut the buffer into consecutive pieces, so
        the buffer itself is the data of an Arrow array of them all; Arrow then copies
        out the spans wanted (`take`). The skipped rows' spans count as empty: they may
        run past their record.
        """
        starts = np.stack([start for start, _ in self.spans], axis=1)  # row × span
        ends = starts + np.stack([length for _, length in self.spans], axis=1)
        ends[~keep] = starts[~keep]
        pieces = np.empty(starts.size * 2 + 2, dtype=np.int64)
        pieces[0], pieces[-1] = 0, len(self.buf)
        pieces[1:-2:2], pieces[2:-1:2] = starts.ravel(), ends.ravel()
        every = pa.LargeStringArray.from_buffers(
            len(pieces) - 1, pa.py_buffer(pieces), pa.py_buffer(self.buf))
        rows = np.flatnonzero(keep)
        spans = np.arange(len(self.spans))
        wanted = every.take(1 + 2 * (rows * len(spans) + spans[:, None]).ravel())
        try:
            wanted.validate(full=True)
        except pa.ArrowInvalid:
            return None
        return [wanted.slice(i * len(rows), len(rows)) for i in spans]

    def _advance(self, to: np.ndarray) -> None:
        self.irregular |= to > self.end
        self.pos = np.minimum(to, self.end)


class OutcomeColumns:
    """Maps many send_outcome records of one writer schema to `messages` rows at once.

    `for_schemas` gives None when the writer schema has a field the bulk reader cannot
    read, or lacks one `message_row` needs (records of that schema go one by one).
    """

    def __init__(self, writer_fields: list[tuple[str, str]], defaults: dict[str, Any]) -> None:
        self.writer_fields = writer_fields  # (name, kind) in the order of the bodies
        self.defaults = defaults  # fields the writer lacks: the reader schema's default

    @classmethod
    def for_schemas(cls, writer: Mapping[str, Any], reader: Mapping[str, Any]
                    ) -> OutcomeColumns | None:
        fields = [(f["name"], _kind(f["type"])) for f in writer["fields"]]
        if any(kind is None for _, kind in fields):
            return None
        written = dict(fields)
        reader_fields = {f["name"]: f for f in reader["fields"]}
        defaults = {}
        for name, kind in _OUTCOME_KINDS.items():
            field = reader_fields.get(name)
            if field is None or _kind(field["type"]) != kind:
                return None
            default = field.get("default", ...)
            if name in written:
                if written[name] != kind:
                    return None
            elif kind == "optional_string" and default is None:
                defaults[name] = None
            elif kind in ("int", "long", "double") and isinstance(default, int | float):
                defaults[name] = default
            else:
                return None
        return cls(fields, defaults)  # type: ignore[arg-type]

    def messages(self, values: Sequence[bytes], skip: int, key: str
                 ) -> tuple[ArrowRows, list[int]]:
        """The `messages` rows of the regular records among `values` (their Avro bodies
        start at byte `skip`), in order, and the indexes of the other records."""
        chunk = _Chunk(values, skip)
        spans: dict[str, int] = {}  # string field → its span
        numbers: dict[str, np.ndarray] = {}
        for name, kind in self.writer_fields:
            if kind == "string":
                spans[name] = chunk.string()
            elif kind == "optional_string":
                branch = chunk.varint()
                chunk.irregular |= (branch != 0) & (branch != 1)
                spans[name] = chunk.string(branch == 1)  # null: '' as `_s` makes it
            elif kind == "double":
                numbers[name] = chunk.double()
            elif kind == "string_array":
                _skip_string_array(chunk)
            else:
                numbers[name] = chunk.varint(max_bytes=_VARINT_BYTES[kind])
        for name, default in self.defaults.items():
            if default is not None:
                numbers[name] = np.full(len(values), default)
        # message_row: `or` replaces 0 (and -0.0) with the default
        cost = np.where(numbers["cost"] == 0, 0.0, numbers["cost"])
        attempts = np.where(numbers["attempts"] == 0, 1, numbers["attempts"])
        irregular = chunk.irregular
        if "reason" in spans:  # a redelivery: its row goes to `redeliveries`
            irregular |= _is(chunk, *chunk.spans[spans["reason"]], b"duplicate")
        for value, (low, high) in ((numbers["segments"], _UINT16_RANGE),
                                   (attempts, _UINT16_RANGE),
                                   (numbers["event_occurred_at_ms"], _TIME_RANGE),
                                   (numbers["decided_at_ms"], _TIME_RANGE)):
            irregular |= (value < low) | (value > high)
        keep = ~irregular
        texts = chunk.texts(keep)
        if texts is None:
            return ArrowRows(MESSAGE_SCHEMA), list(range(len(values)))
        kept = len(texts[0]) if texts else int(keep.sum())
        text = {name: texts[spans[name]] if name in spans else _empty_strings(kept)
                for name in _TEXT_FIELDS}
        hashes, masks = phone_columns(text.pop("phone"), key)
        columns = {
            **text,
            "phone_hash": hashes,
            "phone_masked": masks,
            "segments": pa.array(numbers["segments"][keep], pa.uint16()),
            "cost": pa.array(cost[keep], pa.float64()),
            "attempts": pa.array(attempts[keep], pa.uint16()),
            "event_time": pa.array(numbers["event_occurred_at_ms"][keep], _TIME),
            "decided_at": pa.array(numbers["decided_at_ms"][keep], _TIME),
        }
        table = pa.table([columns[name] for name in MESSAGE_COLUMNS], schema=MESSAGE_SCHEMA)
        return ArrowRows(MESSAGE_SCHEMA, [table]), np.flatnonzero(irregular).tolist()


def _skip_string_array(chunk: _Chunk) -> None:
    """Read past an array of strings: blocks of items, a zero count at the end."""
    left = chunk.varint()
    for _ in range(_ARRAY_ITEMS):
        odd = left < 0  # a block with its byte size: writers here never write one
        chunk.irregular |= odd
        left[odd | chunk.irregular] = 0
        reading = left > 0
        if not reading.any():
            return
        chunk.string(reading)
        left[reading] -= 1
        block_done = reading & (left == 0)
        if block_done.any():
            left[block_done] = chunk.varint(block_done)[block_done]
    chunk.irregular |= left != 0


def _is(chunk: _Chunk, start: np.ndarray, length: np.ndarray, word: bytes) -> np.ndarray:
    """Which records' string at (start, length) is `word`."""
    same = length == len(word)
    candidates = np.flatnonzero(same)
    if len(candidates):
        window = chunk.buf[start[candidates, None] + np.arange(len(word))]
        same[candidates] = (window == np.frombuffer(word, np.uint8)).all(axis=1)
    return same


def _empty_strings(count: int) -> pa.LargeStringArray:
    return pa.LargeStringArray.from_buffers(
        count, pa.py_buffer(np.zeros(count + 1, dtype=np.int64)), pa.py_buffer(b""))


def phone_columns(phones: pa.LargeStringArray, key: str
                  ) -> tuple[pa.LargeStringArray, pa.LargeStringArray]:
    """`phone_hash` and `mask` of each number ('' for none), as `message_row` makes them.

    A plain E.164 number ('+' and at least 7 ASCII digits) is canonical already: it is
    hashed from a copied keyed state and masked by Arrow, skipping the
    character-by-character canonicalisation of `privacy` (several times faster). Any
    other number goes through `privacy` itself.
    """
    copy = _keyed_hash(key).copy
    hashes = []
    for number in phones.cast(pa.large_binary()).to_pylist():
        if number:
            digest = copy()
            digest.update(number)
            hashes.append(digest.hexdigest())
        else:
            hashes.append("")
    star, nothing = pa.scalar("*", pa.large_string()), pa.scalar("", pa.large_string())
    stars = pc.binary_repeat(star, pc.max_element_wise(pc.utf8_length(phones), 7) - 7)
    masks = pc.binary_join_element_wise(pc.utf8_slice_codeunits(phones, 0, 5), stars,
                                        pc.utf8_slice_codeunits(phones, -2), nothing)
    plain = pc.or_(pc.match_substring_regex(phones, r"^\+[0-9]{7,}$"),
                   pc.equal(pc.binary_length(phones), 0))
    others = np.flatnonzero(~plain.to_numpy(zero_copy_only=False))
    if len(others):
        numbers, masks = phones.to_pylist(), masks.to_pylist()
        for row in others:
            hashes[row], masks[row] = phone_hash(numbers[row], key), mask(numbers[row])
    return pa.array(hashes, pa.large_string()), pa.array(masks, pa.large_string())


@lru_cache(maxsize=4)
def _keyed_hash(key: str) -> Any:
    """A BLAKE2b state keyed as `phone_hash` keys it, checked against it on a probe."""
    key_bytes = key.encode()
    if len(key_bytes) > hashlib.blake2b.MAX_KEY_SIZE:
        key_bytes = hashlib.blake2b(key_bytes).digest()
    keyed = hashlib.blake2b(digest_size=HASH_BYTES, key=key_bytes)
    probe = keyed.copy()
    probe.update(b"+79161234567")
    if probe.hexdigest() != phone_hash("+79161234567", key):
        raise RuntimeError("the bulk phone hash no longer matches privacy.phone_hash")
    return keyed
