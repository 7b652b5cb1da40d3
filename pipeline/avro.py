"""Avro contracts: load `schemas/`, encode with single-object encoding, decode two framings.

Every record Rassylka writes is Avro single-object encoded: the two marker bytes
``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer's schema
(its parsing canonical form), then the Avro binary body. A reader looks the
fingerprint up among every schema version it knows (``schemas/*.avsc`` and
``schemas/history/*.avsc``) and resolves the writer's schema to its own reader
schema, so old readers read new data and new readers read old data.

Readers also accept the Confluent wire format that stock Schema Registry serializers
write: magic byte ``00``, the 4-byte big-endian id of the writer's schema in the
registry, then the body. The writer's schema is fetched by id (`pipeline.registry`,
cached in process) and resolved to the current contract of the same record name, so a
publisher may add a field with a default without redeploying the readers. A registry
that does not answer raises `registry.RegistryUnavailable` (retryable), never DecodeError.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from pipeline import avro_codec
from pipeline.errors import PermanentError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LEN = 5
REMOTE_WRITERS_MAX = 1024
"""Most registry writer schemas one SchemaRegistry keeps parsed."""


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
    """Every contract in a schema folder, current and historical, by name and fingerprint;
    and the writer schemas of Confluent-framed records, by registry id, as they are met."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR, registry_url: str | None = None) -> None:
        self.current: dict[str, Contract] = {}
        self.by_fingerprint: dict[bytes, Contract] = {}
        self.registry_url = registry_url  # None: pipeline.registry.registry_url() at first use
        self._by_id: OrderedDict[int, Contract] = OrderedDict()
        self._by_id_lock = threading.Lock()
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

    def by_schema_id(self, schema_id: int) -> Contract:
        """The writer contract registered under `schema_id` in the Schema Registry.

        Named after the current contract with the same record full name; a schema this
        folder already holds is that contract. Served from memory after the first lookup.
        Raises DecodeError for an id the registry does not know or a record that is not a
        contract of this project, RegistryUnavailable when the registry does not answer.
        """
        with self._by_id_lock:
            known = self._by_id.get(schema_id)
            if known is not None:
                self._by_id.move_to_end(schema_id)
                return known
        from pipeline import registry

        remote = registry.client(self.registry_url)
        text = remote.schema(schema_id)
        if text is None:
            raise DecodeError(f"unknown schema id {schema_id} in the Schema Registry at {remote.url}")
        try:
            raw = json.loads(text)
            contract = _contract("?", raw)
        except Exception as exc:  # not JSON, or not an Avro schema fastavro can parse
            raise DecodeError(f"schema id {schema_id} is not a usable Avro schema: {exc}") from exc
        contract = self.by_fingerprint.get(contract.fingerprint) or self._named(contract, schema_id)
        with self._by_id_lock:
            self._by_id[schema_id] = contract
            while len(self._by_id) > REMOTE_WRITERS_MAX:
                self._by_id.popitem(last=False)
        return contract

    def _named(self, writer: Contract, schema_id: int) -> Contract:
        full_name = writer.full_name if isinstance(writer.schema, dict) else ""
        for current in self.current.values():
            if current.full_name == full_name:
                return Contract(current.name, writer.schema, writer.parsed, writer.fingerprint)
        raise DecodeError(f"schema id {schema_id} is record {full_name or '?'!r}, "
                          f"not a contract of this project (schemas/*.avsc)")


@lru_cache(maxsize=1)
def registry() -> SchemaRegistry:
    """The process-wide registry of the project's own `schemas/` folder."""
    return SchemaRegistry()


def encode(name: str, record: dict[str, Any], contract: Contract | None = None) -> bytes:
    """Encode `record` with the current schema `name` in single-object encoding.

    Raises ValueError when the record does not match the schema.
    """
    contract = contract or registry().contract(name)
    codec = _codec(contract)
    if codec is not None:
        out = bytearray(MAGIC)
        out += contract.fingerprint
        try:
            codec[0](record, out)
            return bytes(out)
        except Exception:  # noqa: BLE001 - not for the compiled writer: fastavro decides
            pass
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(contract.fingerprint)
    try:
        fastavro.schemaless_writer(buf, contract.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise ValueError(f"record does not match schema {name!r}: {exc}") from exc
    return buf.getvalue()


_CODECS: dict[bytes, tuple[avro_codec.Encoder, avro_codec.Decoder] | None] = {}


def _codec(contract: Contract) -> tuple[avro_codec.Encoder, avro_codec.Decoder] | None:
    """The compiled writer and reader of `contract` (`pipeline.avro_codec`), made at first
    use; None when its schema is not compiled (fastavro does all of its work)."""
    try:
        return _CODECS[contract.fingerprint]
    except KeyError:
        pass
    try:
        codec: tuple[avro_codec.Encoder, avro_codec.Decoder] | None = (
            avro_codec.compile_codec(contract.schema))
    except avro_codec.Unsupported:
        codec = None
    _CODECS[contract.fingerprint] = codec
    return codec


def writer_of(data: bytes, reg: SchemaRegistry | None = None) -> Contract:
    """The writer's contract: by the fingerprint heading `data` (single-object encoding)
    or by the registry id (Confluent framing); DecodeError when unknown."""
    return _framing(data, reg or registry())[0]


def _framing(data: bytes, reg: SchemaRegistry) -> tuple[Contract, int]:
    """The writer's contract and where the Avro body starts."""
    if len(data) >= HEADER_LEN and data[:2] == MAGIC:
        writer = reg.by_fingerprint.get(data[2:HEADER_LEN])
        if writer is None:
            raise DecodeError(
                f"unknown schema fingerprint {data[2:HEADER_LEN].hex()}: a schema version this "
                f"reader was not deployed with (publish through the Schema Registry instead, "
                f"see README)")
        return writer, HEADER_LEN
    if len(data) >= CONFLUENT_HEADER_LEN and data[0] == CONFLUENT_MAGIC:
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_LEN], "big")
        return reg.by_schema_id(schema_id), CONFLUENT_HEADER_LEN
    raise DecodeError("not Avro single-object encoded (missing C3 01 marker) nor in the "
                      "Confluent wire format (magic byte 00 and a schema id)")


def decode(name: str, data: bytes, reg: SchemaRegistry | None = None) -> dict[str, Any]:
    """Decode `data` into a dict of the current schema `name` (the reader schema).

    The writer's schema comes from the fingerprint or the registry id; it must be a
    version of `name`. Raises DecodeError for anything that is not such a record, and
    `registry.RegistryUnavailable` (retryable) when a Confluent-framed record's writer
    schema cannot be fetched now.
    """
    reg = reg or registry()
    writer, body = _framing(data, reg)
    if writer.name != name:
        raise DecodeError(f"expected a {name} record, got {writer.name}")
    reader = reg.contract(name)
    if writer is reader:
        codec = _codec(writer)
        if codec is not None:
            try:
                return codec[1](data, body)[0]
            except Exception:  # noqa: BLE001 - not readable by the compiled reader: ask fastavro
                pass
    try:
        return fastavro.schemaless_reader(  # type: ignore[no-any-return]
            io.BytesIO(data[body:]),
            writer.parsed,
            None if writer is reader else reader.parsed,
        )
    except Exception as exc:  # fastavro raises many kinds on corrupt bodies
        raise DecodeError(f"corrupt {name} body: {exc.__class__.__name__}: {exc}") from exc


def decode_any(data: bytes, reg: SchemaRegistry | None = None) -> tuple[str, dict[str, Any]]:
    """Decode `data` whatever its contract; returns (schema name, record)."""
    reg = reg or registry()
    writer = writer_of(data, reg)  # the registry's answer is cached: decode does not ask again
    return writer.name, decode(writer.name, data, reg)


def fingerprint_hex(name: str) -> str:
    """The little-endian wire fingerprint of the current schema `name`, as hex."""
    return registry().contract(name).fingerprint.hex()

