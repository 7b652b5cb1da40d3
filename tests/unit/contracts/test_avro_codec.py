"""The compiled Avro writer and reader give exactly what fastavro gives: the same bytes, the
same records, the same refusals; over random records of every contract, values of the
wrong type, and corrupted bodies."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import fastavro
import pytest

from pipeline import avro, avro_codec
from pipeline.avro import SCHEMA_DIR, DecodeError

CONTRACTS = sorted(avro.registry().current)
HISTORY = sorted(p.name for p in (SCHEMA_DIR / "history").glob("*.avsc"))
TEXTS = ["", "a", "Привет", "СТОП 😀", "x" * 63, "y" * 64, "z" * 200, "\u0000", "€" * 40]
NUMBERS = [0, 1, -1, 63, 64, -64, -65, 127, 128, 1 << 20, -(1 << 31), (1 << 31) - 1,
           (1 << 62), -(1 << 63), (1 << 63) - 1, 1_796_000_000_000]
INTS = [n for n in NUMBERS if -(1 << 31) <= n < (1 << 31)]


def _value(rng: random.Random, schema: Any) -> Any:
    if isinstance(schema, list):
        return None if rng.random() < 0.3 else _value(rng, next(s for s in schema if s != "null"))
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "string":
        return rng.choice(TEXTS) if rng.random() < 0.5 else "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x400, 0x450),
                            rng.randrange(0x1F600, 0x1F650)])) for _ in range(rng.randrange(90)))
    if kind == "bytes":
        return rng.randbytes(rng.choice([0, 1, 63, 64, 300]))
    if kind == "long":
        return rng.choice(NUMBERS) if rng.random() < 0.5 else rng.randrange(-(1 << 40), 1 << 40)
    if kind == "int":
        return rng.choice(INTS)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "double":
        return rng.choice([0.0, -1.5, 1e300, 3.25, float("inf"), rng.random()])
    if kind == "null":
        return None
    if kind == "map":
        return {rng.choice(TEXTS) + str(i): _value(rng, schema["values"]) for i in range(rng.choice([0, 1, 3, 70]))}
    if kind == "array":
        return [_value(rng, schema["items"]) for _ in range(rng.choice([0, 1, 3, 70]))]
    assert kind == "record", kind
    record = {}
    for field in schema["fields"]:
        if "default" in field and rng.random() < 0.2:
            continue  # left out: the default is written
        record[field["name"]] = _value(rng, field["type"])
    return record


def _needs_ten_bytes(value: Any) -> bool:
    """Whether `value` holds a number whose varint is ten bytes long (|n| >= 2**62)."""
    if isinstance(value, dict):
        return any(_needs_ten_bytes(v) for v in value.values())
    if isinstance(value, list):
        return any(_needs_ten_bytes(v) for v in value)
    return type(value) is int and not -(1 << 62) <= value < (1 << 62)


def _fastavro_encode(contract: avro.Contract, record: Any) -> bytes | type[Exception]:
    """What `avro.encode` gave before the compiled writer: the body, or the error's type."""
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, contract.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return ValueError
    return avro.MAGIC + contract.fingerprint + buf.getvalue()


def _encode(name: str, record: Any) -> bytes | type[Exception]:
    try:
        return avro.encode(name, record)
    except ValueError:
        return ValueError


def _fastavro_decode(contract: avro.Contract, data: bytes) -> Any:
    try:
        return fastavro.schemaless_reader(io.BytesIO(data[avro.HEADER_LEN:]), contract.parsed, None)
    except Exception:  # noqa: BLE001 - any failure is a DecodeError in avro.decode
        return DecodeError


def _decode(name: str, data: bytes) -> Any:
    try:
        return avro.decode(name, data)
    except DecodeError:
        return DecodeError


@pytest.mark.parametrize("name", CONTRACTS)
def test_every_contract_is_compiled(name: str) -> None:
    assert avro._codec(avro.registry().contract(name)) is not None


@pytest.mark.parametrize("name", CONTRACTS)
def test_random_records_encode_and_decode_as_fastavro_does(name: str) -> None:
    contract = avro.registry().contract(name)
    rng = random.Random(name)
    codec = avro._codec(contract)
    assert codec is not None
    write, read = codec
    for _ in range(400):
        record = _value(rng, contract.schema)
        data = _encode(name, record)
        assert data == _fastavro_encode(contract, record)
        assert isinstance(data, bytes)
        assert _decode(name, data) == _fastavro_decode(contract, data)
        # and the compiled code answered itself: a valid record never falls back
        out = bytearray()
        write(record, out)
        assert bytes(out) == data[avro.HEADER_LEN:]
        if not _needs_ten_bytes(record):  # those varints are read by fastavro
            assert read(data, avro.HEADER_LEN) == (_fastavro_decode(contract, data), len(data))


@pytest.mark.parametrize("name", CONTRACTS)
def test_values_of_the_wrong_type_get_fastavros_answer(name: str) -> None:
    """A bool for a number, an int for a double, a tuple for a list, None where no null is
    allowed, a field left out without a default, a dict subclass: fastavro writes or refuses."""
    contract = avro.registry().contract(name)
    rng = random.Random(name + "wrong")
    odd = [True, False, 1, 1.0, "1", b"1", None, (), ("a",), [], {}, 1 << 64, -(1 << 64),
           "\ud800", object()]
    for _ in range(300):
        record = _value(rng, contract.schema)
        field = rng.choice(contract.schema["fields"])
        if rng.random() < 0.2:
            record.pop(field["name"], None)
        else:
            record[field["name"]] = rng.choice(odd)
        assert _encode(name, record) == _fastavro_encode(contract, record), field
    assert _encode(name, "not a record") is ValueError
    record = _SubDict(_value(rng, contract.schema))
    with pytest.raises(avro_codec.Fallback):
        avro._codec(contract)[0](record, bytearray())  # type: ignore[index]
    assert _encode(name, record) == _fastavro_encode(contract, record)


class _SubDict(dict):  # type: ignore[type-arg]
    """A record as a dict subclass: not taken by the compiled writer, written by fastavro."""


@pytest.mark.parametrize("name", CONTRACTS)
def test_corrupted_bodies_get_fastavros_verdict(name: str) -> None:
    contract = avro.registry().contract(name)
    rng = random.Random(name + "corrupt")
    for _ in range(300):
        data = bytearray(_encode(name, _value(rng, contract.schema)))  # type: ignore[arg-type]
        cut = rng.randrange(avro.HEADER_LEN, len(data) + 1)
        kind = rng.random()
        if kind < 0.4:
            data = data[:cut]
        elif kind < 0.8 and cut < len(data):
            data[cut] = rng.randrange(256)
        else:
            data[cut:cut] = rng.randbytes(rng.randrange(1, 12))
        assert _decode(name, bytes(data)) == _fastavro_decode(contract, bytes(data))


@pytest.mark.parametrize("path", HISTORY)
def test_older_writers_are_still_resolved_by_fastavro(path: str) -> None:
    """A record written with a historical schema is read into the current one (defaults
    filled in) exactly as before: the compiled reader only reads its own schema."""
    raw = json.loads((SCHEMA_DIR / "history" / path).read_text(encoding="utf-8"))
    name = path.split(".")[0]
    old = avro._contract(name, raw)
    rng = random.Random(path)
    current = avro.registry().contract(name)
    for _ in range(50):
        record = _value(rng, raw)
        data = _encode_with(old, record)
        expected = fastavro.schemaless_reader(io.BytesIO(data[avro.HEADER_LEN:]), old.parsed,
                                              current.parsed)
        assert avro.decode(name, data) == expected


def _encode_with(contract: avro.Contract, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, contract.parsed, record, strict_allow_default=True)
    return avro.MAGIC + contract.fingerprint + buf.getvalue()


def test_a_number_out_of_range_is_a_value_error() -> None:
    """fastavro raises OverflowError for a long beyond 64 bits; `encode` promises ValueError
    for a record that does not match its schema (it let OverflowError through before)."""
    record = {"click_id": "k", "code": "abc", "message_id": "m", "url": "https://x",
              "clicked_at_ms": 1 << 64}
    with pytest.raises(ValueError, match="does not match schema 'click'"):
        avro.encode("click", record)


def test_a_schema_with_types_not_compiled_is_left_to_fastavro() -> None:
    for schema in (
        {"type": "record", "name": "E", "fields": [{"name": "e", "type": {"type": "enum", "name": "K", "symbols": ["A"]}}]},
        {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "string", "long"]}]},
        {"type": "record", "name": "T", "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
    ):
        with pytest.raises(avro_codec.Unsupported):
            avro_codec.compile_codec(schema)


def test_blocks_with_a_byte_size_are_read() -> None:
    """Arrays and maps may come in blocks whose count is negative and followed by the
    block's size in bytes (other writers do this): the compiled reader reads them."""
    schema = {"type": "record", "name": "B", "fields": [
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "string"}}]}
    _write, read = avro_codec.compile_codec(schema)
    # a: one block of -2 items (4 bytes), then a block of 1, then the end; m: {"k": "v"}
    body = bytes([3, 8, 2, 4, 2, 6, 0, 2, 2]) + b"k" + bytes([2]) + b"v" + bytes([0])
    assert read(body, 0) == ({"a": [1, 2, 3], "m": {"k": "v"}}, len(body))
    assert fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(schema)) == {
        "a": [1, 2, 3], "m": {"k": "v"}}
