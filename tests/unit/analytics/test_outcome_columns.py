"""The sink's bulk path for outcomes (`rows.OutcomeColumns`) against the per-record path.

Every record the bulk path takes must come out exactly as fastavro + `message_row` map it;
every other record it must leave to the per-record path (which dead-letters it, sends it
to `redeliveries`, or maps it the slow way). Records are built field by field here, so
that broken bodies can be made on purpose.
"""

from __future__ import annotations

import io
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from connectors.clickhouse import ArrowRows
from pipeline import avro
from pipeline.analytics.privacy import mask, phone_hash
from pipeline.analytics.rows import (
    MESSAGE_COLUMNS,
    MESSAGE_SCHEMA,
    OutcomeColumns,
    message_row,
    phone_columns,
    to_row,
)
from pipeline.analytics.sink import bulk_readers, decode_registry
from pipeline.errors import PermanentError

KEY = "unit-key"
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
CURRENT = avro.registry().contract("send_outcome")
READER = OutcomeColumns.for_schemas(CURRENT.schema, CURRENT.schema)
HEADER = avro.MAGIC + CURRENT.fingerprint


def outcome(n: int = 1, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "request_id": f"r{n}", "message_id": f"r{n}", "status": "submitted", "reason": None,
        "detail": None, "lane": "marketing", "rule_id": "promo", "template_id": "t",
        "variant": "b", "campaign_id": "spring", "customer_id": f"c{n}",
        "phone": f"+7916{n % 10_000_000:07d}", "region": "RU", "operator": "MTS",
        "gateway": "smpp", "gateway_message_ids": [f"g{n}"], "segments": 1,
        "encoding": "UCS2", "cost": 2.5, "event_occurred_at_ms": 1_700_000_000_000 + n,
        "decided_at_ms": 1_700_000_000_100 + n, "attempts": 1, "config_version": "v3@0123abcd",
    }
    record.update(over)
    return record


# -- Avro bodies, field by field --------------------------------------------------------


def varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return varint(len(raw)) + raw


def body(record: dict[str, Any], raw: dict[str, bytes] | None = None) -> bytes:
    """The single-object encoding of `record` (current schema); `raw` replaces the bytes of
    the named fields with its own."""
    out = bytearray(HEADER)
    for field in CURRENT.schema["fields"]:
        name, kind = field["name"], field["type"]
        if raw and name in raw:
            out += raw[name]
        elif kind == "string":
            out += text(record[name])
        elif kind == ["null", "string"]:
            out += b"\x00" if record[name] is None else b"\x02" + text(record[name])
        elif kind in ("int", "long"):
            out += varint(record[name])
        elif kind == "double":
            out += struct.pack("<d", record[name])
        else:  # the array of gateway message ids
            items = record[name]
            out += (varint(len(items)) + b"".join(map(text, items)) if items else b"") + b"\x00"
    return bytes(out)


def bulk(values: list[bytes], reader: OutcomeColumns = READER) -> tuple[list[tuple], list[int]]:
    rows, others = reader.messages(values, avro.HEADER_LEN, KEY)
    return list(rows), others


def one_by_one(value: bytes) -> tuple[str, tuple] | None:
    """What the per-record path makes of `value`: (table, row), or None (a dead letter)."""
    try:
        schema, record = avro.decode_any(value, decode_registry())
        if schema != "send_outcome":
            return None
        return to_row(schema, record, KEY)
    except PermanentError:
        return None


def same(a: tuple, b: tuple) -> bool:
    """Row equality with NaN equal to NaN."""
    return len(a) == len(b) and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True))


# -- regular records --------------------------------------------------------------------

EDGE_RECORDS = [
    outcome(1),
    outcome(2, reason="opted_out", detail="STOP", status="suppressed", campaign_id=None,
            region=None, operator=None, gateway=None, encoding=None, config_version=None),
    outcome(3, phone=None, gateway_message_ids=[]),
    outcome(4, phone="", gateway_message_ids=["a", "b", "c"]),
    outcome(5, customer_id="клиент-№5 🎉", rule_id="правило", detail="é" * 5000),
    outcome(6, request_id="x" * 64, message_id="y" * 200, template_id="z" * 20_000),
    outcome(7, attempts=0, segments=0, cost=-0.0, event_occurred_at_ms=0),
    outcome(8, segments=65_535, attempts=65_535, cost=1e300, decided_at_ms=4_102_444_800_000),
    outcome(9, phone="+7916123"),  # the shortest number masked with a prefix
    outcome(10, phone="+123456"),  # shorter: privacy masks it its own way
    outcome(11, phone="8 (916) 123-45-67"),
    outcome(12, phone="+7916١٢٣٤٥٦٧"),  # digits, but not ASCII ones
    outcome(13, phone=" +79161234567 "),
    outcome(14, phone="+79161234567\n"),
    outcome(15, reason="duplicated", detail="not a redelivery: only 'duplicate' is one"),
]


def test_bulk_rows_equal_the_per_record_rows() -> None:
    values = [body(r) for r in EDGE_RECORDS]
    assert values[0] == avro.encode("send_outcome", EDGE_RECORDS[0])
    rows, others = bulk(values)
    assert others == []
    assert len(rows) == len(EDGE_RECORDS)
    for value, row in zip(values, rows, strict=True):
        table, expected = one_by_one(value)  # type: ignore[misc]
        assert table == "messages"
        assert same(row, expected), (row, expected)


def test_nan_cost_is_kept() -> None:
    (row,), _ = bulk([body(outcome(cost=float("nan")))])
    assert math.isnan(dict(zip(MESSAGE_COLUMNS, row, strict=True))["cost"])


def test_records_of_the_first_schema_version_take_the_reader_defaults() -> None:
    v1 = json.loads((SCHEMAS / "history" / "send_outcome.v1.avsc").read_text())
    writer = avro.registry().by_fingerprint
    old = next(c for c in writer.values() if c.name == "send_outcome" and c.schema == v1)
    reader = OutcomeColumns.for_schemas(old.schema, CURRENT.schema)
    assert reader is not None
    records = [outcome(n, config_version=None) for n in range(3)]
    values = [avro.encode("send_outcome", {k: v for k, v in r.items() if k != "config_version"},
                          old) for r in records]
    rows, others = bulk(values, reader)
    assert others == [] and rows == [one_by_one(v)[1] for v in values]  # type: ignore[index]


def test_the_sink_reads_every_send_outcome_version_in_bulk() -> None:
    readers = bulk_readers(decode_registry())
    versions = [fp for fp, c in decode_registry().by_fingerprint.items()
                if c.name == "send_outcome"]
    assert set(readers) == {avro.MAGIC + fp for fp in versions} and HEADER in readers


def test_unreadable_schemas_have_no_bulk_reader() -> None:
    fields = CURRENT.schema["fields"]
    with_map = {**CURRENT.schema,
                "fields": [*fields, {"name": "tags", "type": {"type": "map", "values": "string"}}]}
    assert OutcomeColumns.for_schemas(with_map, CURRENT.schema) is None
    promoted = {**CURRENT.schema, "fields": [
        {**f, "type": "long"} if f["name"] == "segments" else f for f in fields]}
    assert OutcomeColumns.for_schemas(promoted, CURRENT.schema) is None
    no_lane = {**CURRENT.schema, "fields": [f for f in fields if f["name"] != "lane"]}
    assert OutcomeColumns.for_schemas(no_lane, CURRENT.schema) is None
    string_first = {**CURRENT.schema, "fields": [  # branch 0 is the string there
        {**f, "type": ["string", "null"]} if f["name"] == "reason" else f for f in fields]}
    assert OutcomeColumns.for_schemas(string_first, CURRENT.schema) is None


# -- irregular records ------------------------------------------------------------------

IRREGULAR = {
    "truncated": body(outcome())[:30],
    "header only": HEADER,
    "a redelivery": body(outcome(reason="duplicate")),
    "segments out of UInt16": body(outcome(segments=70_000)),
    "attempts out of UInt16": body(outcome(attempts=-1)),
    "time before 1970": body(outcome(event_occurred_at_ms=-1)),
    "time after 2100": body(outcome(decided_at_ms=4_102_444_800_001)),
    "10-byte varint": body(outcome(decided_at_ms=2**62)),
    "union branch 2": body(outcome(), raw={"reason": b"\x04" + text("x")}),
    "negative length": body(outcome(), raw={"status": varint(-3)}),
    "invalid UTF-8": body(outcome(), raw={"customer_id": text(b"c\xff1")}),
    "invalid UTF-8 in detail": body(outcome(), raw={"detail": b"\x02" + text(b"\xed\xa0\x80")}),
    "invalid UTF-8 in an id": body(outcome(), raw={"gateway_message_ids": b"\x02"
                                                   + text(b"\xc0\x80") + b"\x00"}),
    "a block with its size": body(outcome(), raw={"gateway_message_ids": varint(-1) + varint(3)
                                                  + text("g1") + b"\x00"}),
    "a long array": body(outcome(gateway_message_ids=[f"g{i}" for i in range(100)])),
}


@pytest.mark.parametrize("name", IRREGULAR)
def test_irregular_records_go_one_by_one(name: str) -> None:
    values = [body(outcome(1)), IRREGULAR[name], body(outcome(3))]
    rows, others = bulk(values)
    utf8 = "UTF-8" in name  # one bad string sends the whole run one by one
    assert others == ([0, 1, 2] if utf8 else [1])
    if not utf8:
        assert rows == [message_row(outcome(1), KEY), message_row(outcome(3), KEY)]


def test_what_the_bulk_path_takes_it_maps_as_the_per_record_path_does() -> None:
    """Random damage to valid bodies: a record the bulk path keeps is one the per-record
    path maps the same way; one that path dead-letters or redirects is never kept."""
    rng = random.Random(20240301)
    originals = [body(r) for r in EDGE_RECORDS] + [body(outcome(n)) for n in range(50)]
    kept = 0
    for _ in range(2000):
        value = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(avro.HEADER_LEN, len(value))
            action = rng.random()
            if action < 0.6:
                value[at] = rng.randrange(256)
            elif action < 0.8:
                del value[at:at + rng.randint(1, 4)]
            else:
                value[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        rows, others = bulk([originals[0], bytes(value), originals[1]])
        if others == [0, 1, 2]:  # a string that is not UTF-8: the whole run goes one by one
            continue
        assert others in ([], [1])  # the neighbours are read whatever the damage
        if others:
            continue
        kept += 1
        expected = one_by_one(bytes(value))
        assert expected is not None and expected[0] == "messages", bytes(value)
        assert same(rows[1], expected[1]), (bytes(value), rows[1], expected)
    assert kept > 150  # damage to string contents and numbers leaves many readable


# -- phones -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["unit-key", "k" * 100])
def test_phone_columns_hash_and_mask_as_privacy_does(key: str) -> None:
    phones = ["+79161234567", "+7916123", "+123456", "", "8 (916) 123-45-67", "+7916١٢٣٤٥٦٧",
              " +79161234567", "+79161234567\n", "++79161234567", "abc", "+4915123456789012"]
    hashes, masks = phone_columns(pa.array(phones, pa.large_string()), key)
    assert hashes.to_pylist() == [phone_hash(p, key) if p else "" for p in phones]
    assert masks.to_pylist() == [mask(p) if p else "" for p in phones]


# -- ArrowRows --------------------------------------------------------------------------


def test_arrow_rows_hold_tables_and_tuples_in_order() -> None:
    (first,), _ = bulk([body(outcome(1))])
    block, _ = READER.messages([body(outcome(2))], avro.HEADER_LEN, KEY)
    rows = ArrowRows(MESSAGE_SCHEMA, [[first], block])
    rows.append(message_row(outcome(3), KEY))
    expected = [message_row(outcome(n), KEY) for n in (1, 2, 3)]
    assert len(rows) == 3 and list(rows) == expected
    table = rows.to_arrow()
    assert table.schema == MESSAGE_SCHEMA and table.num_rows == 3
    assert ArrowRows(MESSAGE_SCHEMA, [table]).columns == MESSAGE_COLUMNS
    assert list(ArrowRows(MESSAGE_SCHEMA, [table])) == expected


def test_a_tuple_that_does_not_fit_fails_at_conversion() -> None:
    rows = ArrowRows(MESSAGE_SCHEMA, [[message_row(outcome(segments=70_000), KEY)]])
    with pytest.raises(ValueError):
        rows.to_arrow()
    with pytest.raises(ValueError):
        rows.extend(pa.table({"x": [1]}))


def test_bodies_built_here_are_what_fastavro_writes() -> None:
    for record in EDGE_RECORDS:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, CURRENT.parsed, record)
        assert body(record) == HEADER + buf.getvalue()
