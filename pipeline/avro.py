"""Avro contracts: load `schemas/`, encode and decode with single-object encoding.

Every record on every Rassylka topic is Avro single-object encoded: the two marker
bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer's
schema (its parsing canonical form), then the Avro binary body. A reader looks
the fingerprint up among every schema version it knows (``schemas/*.avsc`` and
``schemas/history/*.avsc``) and resolves the writer's schema to its own reader
schema, so old readers read new data and new readers read old data.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from pipeline.errors import PermanentError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10


class DecodeError(PermanentError):
    """The bytes are not a record of the expected contract; never retried."""

    reason = "undecodable"


@dataclass(frozen=True)
class Contract:
    """One schema version: its name, parsed form and fingerprint."""

    name: str
    schema: dict[str, Any]
    parsed: Any
    fingerprint: bytes

    @property
    def full_name(self) -> str:
        return f"{self.schema.get('namespace', '')}.{self.schema['name']}".lstrip(".")


def _contract(name: str, raw: dict[str, Any]) -> Contract:
    parsed = parse_schema(raw)
    canonical = to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    # fastavro prints the fingerprint big-endian; the spec puts it little-endian on the wire.
    return Contract(name=name, schema=raw, parsed=parsed, fingerprint=fp[::-1])


class SchemaRegistry:
    """Every contract in a schema folder, current and historical, by name and fingerprint."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.current: dict[str, Contract] = {}
        self.by_fingerprint: dict[bytes, Contract] = {}
        for path in sorted(schema_dir.glob("*.avsc")):
            contract = _contract(path.stem, json.loads(path.read_text(encoding="utf-8")))
            self.current[contract.name] = contract
            self.by_fingerprint[contract.fingerprint] = contract
        for path in sorted((schema_dir / "history").glob("*.avsc")):
            contract = _contract(path.stem.split(".")[0], json.loads(path.read_text(encoding="utf-8")))
            self.by_fingerprint.setdefault(contract.fingerprint, contract)

    def contract(self, name: str) -> Contract:
        try:
            return self.current[name]
        except KeyError:
            raise KeyError(f"no schema named {name!r} in {SCHEMA_DIR}") from None


@lru_cache(maxsize=1)
def registry() -> SchemaRegistry:
    """The process-wide registry of the project's own `schemas/` folder."""
    return SchemaRegistry()


def encode(name: str, record: dict[str, Any], contract: Contract | None = None) -> bytes:
    """Encode `record` with the current schema `name` in single-object encoding.

    Raises ValueError when the record does not match the schema.
    """
    contract = contract or registry().contract(name)
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(contract.fingerprint)
    try:
        fastavro.schemaless_writer(buf, contract.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"record does not match schema {name!r}: {exc}") from exc
    return buf.getvalue()


def writer_of(data: bytes, reg: SchemaRegistry | None = None) -> Contract:
    """The contract whose fingerprint heads `data`; DecodeError when unknown."""
    reg = reg or registry()
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise DecodeError("not Avro single-object encoded (missing C3 01 marker)")
    writer = reg.by_fingerprint.get(data[2:HEADER_LEN])
    if writer is None:
        raise DecodeError(f"unknown schema fingerprint {data[2:HEADER_LEN].hex()}")
    return writer


def decode(name: str, data: bytes, reg: SchemaRegistry | None = None) -> dict[str, Any]:
    """Decode `data` into a dict of the current schema `name` (the reader schema).

    The writer's schema comes from the fingerprint; it must be a version of `name`.
    Raises DecodeError for anything that is not such a record.
    """
    reg = reg or registry()
    writer = writer_of(data, reg)
    if writer.name != name:
        raise DecodeError(f"expected a {name} record, got {writer.name}")
    reader = reg.contract(name)
    try:
        return fastavro.schemaless_reader(  # type: ignore[no-any-return]
            io.BytesIO(data[HEADER_LEN:]),
            writer.parsed,
            None if writer is reader else reader.parsed,
        )
    except Exception as exc:  # fastavro raises many kinds on corrupt bodies
        raise DecodeError(f"corrupt {name} body: {exc.__class__.__name__}: {exc}") from exc


def decode_any(data: bytes, reg: SchemaRegistry | None = None) -> tuple[str, dict[str, Any]]:
    """Decode `data` whatever its contract; returns (schema name, record)."""
    reg = reg or registry()
    writer = writer_of(data, reg)
    return writer.name, decode(writer.name, data, reg)


def fingerprint_hex(name: str) -> str:
    """The little-endian wire fingerprint of the current schema `name`, as hex."""
    return registry().contract(name).fingerprint.hex()

