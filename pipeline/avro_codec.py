"""Avro bodies of the project's own contracts, written and read by code made for each schema.

fastavro interprets a schema for every record: per field it looks the type up, and per
optional field it tries the union's branches until one validates. `compile_codec` turns
one schema into two Python functions that do only the work of that schema, field after
field. Measured on the 2-core AMD EPYC machine (best of 7 loops), fastavro → compiled:
writing a notification request 12.5 → 8.4 µs, a send outcome 12.8 → 4.1, a delivery
receipt 5.9 → 1.4; reading a notification request 12.3 → 9.5, a customer profile
6.5 → 2.8. In one A/B pair of `make bench` throughput runs the router's CPU per event
fell from 241 to 223 µs and the sender's from 560 to 509 µs.

They never decide anything fastavro would decide otherwise:

* The writer takes only values of exactly the expected Python type (`str`, `int` within
  range, `bool`, `float`, `bytes`, `dict`, `list`, None). Anything else, a missing field
  without a default included, raises `Fallback`, and the caller hands the record to
  fastavro, which encodes it or raises as before. A missing field with a default is
  written as fastavro writes that default (the bytes are taken from fastavro when the
  schema is compiled).
* The reader reads records written with this very schema (no resolution between two
  versions). Bytes it cannot read (short, a bad union index, invalid UTF-8, a boolean
  that is neither 0 nor 1) raise, and the caller asks fastavro for its verdict.
* A schema with anything else (enums, fixed, named references, other unions, logical
  types) is not compiled at all: `Unsupported`, and fastavro does all of it.

`tests/unit/contracts/test_avro_codec.py` holds both to fastavro's bytes and records over
random records of every contract, and to fastavro's verdict over corrupted bodies.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro
from fastavro.schema import parse_schema

Encoder = Callable[[dict[str, Any], bytearray], None]
Decoder = Callable[[bytes, int], tuple[dict[str, Any], int]]

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_EXACT_VARINT_BITS = 63
"""A varint of up to nine bytes (63 bits) is read here; a longer one by fastavro."""
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "double", "string", "bytes"})


class Unsupported(Exception):
    """The schema uses a type this module does not compile; fastavro handles it."""


class Fallback(Exception):
    """This record or body is not for the compiled path; ask fastavro."""


# Zigzag varints. A length or a small non-negative number (< 64) is one byte.
_SMALL = [bytes([n << 1]) for n in range(64)]
_DOUBLE = struct.Struct("<d")


def _write_long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_long(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte `first` (>= 0x80) was read before `pos`."""
    n = first & 0x7F
    shift = 7
    while shift < _EXACT_VARINT_BITS:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
    # A tenth byte: fastavro keeps 64 bits of it (and of anything longer); leave it to it.
    raise Fallback("a varint of ten bytes or more")


class _Source:
    """Generated source: one function per record, map and array type."""

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.constants: dict[str, Any] = {}
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"_{kind}{self.count}"

    def constant(self, value: Any) -> str:
        name = f"_K{len(self.constants)}"
        self.constants[name] = value
        return name


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema
        raise Unsupported(f"named type reference {schema!r}")
    if isinstance(schema, list):
        others = [s for s in schema if s != "null"]
        if len(schema) != 2 or len(others) != 1:
            raise Unsupported(f"union {schema!r}")
        return "union"
    if isinstance(schema, dict):
        if "logicalType" in schema:
            raise Unsupported(f"logical type {schema['logicalType']!r}")
        kind = schema.get("type")
        if kind in ("record", "map", "array"):
            return str(kind)
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return kind
    raise Unsupported(f"type {schema!r}")


# ------------------------------------------------------------------------------- writer
def _encode_lines(src: _Source, schema: Any, var: str, indent: str) -> list[str]:
    """Lines that append the encoding of `var` (of type `schema`) to `out`."""
    kind = _kind(schema)
    if isinstance(schema, dict) and kind in _PRIMITIVES:
        schema = kind
    if kind == "string":
        return [f"{indent}if type({var}) is not str: raise Fallback",
                f"{indent}_b = {var}.encode()",
                f"{indent}_n = len(_b)",
                f"{indent}out += _SMALL[_n] if _n < 64 else _write_long(_n)",
                f"{indent}out += _b"]
    if kind == "bytes":
        return [f"{indent}if type({var}) is not bytes: raise Fallback",
                f"{indent}_n = len({var})",
                f"{indent}out += _SMALL[_n] if _n < 64 else _write_long(_n)",
                f"{indent}out += {var}"]
    if kind in ("long", "int"):
        low, high = ("_LONG_MIN", "_LONG_MAX") if kind == "long" else ("_INT_MIN", "_INT_MAX")
        return [f"{indent}if type({var}) is not int or not {low} <= {var} <= {high}: raise Fallback",
                f"{indent}out += _SMALL[{var}] if 0 <= {var} < 64 else _write_long({var})"]
    if kind == "boolean":
        return [f"{indent}if {var} is True: out += b'\\x01'",
                f"{indent}elif {var} is False: out += b'\\x00'",
                f"{indent}else: raise Fallback"]
    if kind == "double":
        return [f"{indent}if type({var}) is not float: raise Fallback",
                f"{indent}out += _DOUBLE.pack({var})"]
    if kind == "null":
        return [f"{indent}if {var} is not None: raise Fallback"]
    if kind == "union":
        other = 1 - schema.index("null")
        lines = [f"{indent}if {var} is None: out += {_write_long(1 - other)!r}",
                 f"{indent}else:",
                 f"{indent}    out += {_write_long(other)!r}"]
        return lines + _encode_lines(src, schema[other], var, indent + "    ")
    function = _encoder_function(src, schema, kind)
    return [f"{indent}{function}({var}, out)"]


def _encoder_function(src: _Source, schema: dict[str, Any], kind: str) -> str:
    name = src.name("write_" + kind)
    body = [f"def {name}(v, out):", "    if type(v) is not dict: raise Fallback"]
    if kind == "record":
        for i, field in enumerate(schema["fields"]):
            var = f"f{i}"
            body.append(f"    {var} = v.get({field['name']!r}, _MISSING)")
            if "default" in field:
                default = src.constant(_default_bytes(field))
                body.append(f"    if {var} is _MISSING: out += {default}")
                body.append("    else:")
                body += _encode_lines(src, field["type"], var, "        ")
            else:
                body += _encode_lines(src, field["type"], var, "    ")
    else:
        values = schema["values"] if kind == "map" else schema["items"]
        if kind == "array":
            body[1] = "    if type(v) is not list: raise Fallback"
        body += ["    if v:",
                 "        out += _write_long(len(v))"]
        if kind == "map":
            body.append("        for k, x in v.items():")
            body += _encode_lines(src, "string", "k", "            ")
        else:
            body.append("        for x in v:")
        body += _encode_lines(src, values, "x", "            ")
        body.append("    out += b'\\x00'")
    src.functions.append("\n".join(body))
    return name


def _default_bytes(field: dict[str, Any]) -> bytes:
    """What fastavro writes for `field` when a record leaves it out."""
    wrapper = {"type": "record", "name": "_DefaultOf", "fields": [field]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parse_schema(wrapper), {}, strict_allow_default=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------- reader
def _read_long_lines(var: str, indent: str) -> list[str]:
    return [f"{indent}_c = d[p]",
            f"{indent}p += 1",
            f"{indent}if _c < 128: {var} = (_c >> 1) ^ -(_c & 1)",
            f"{indent}else: {var}, p = _read_long(d, p, _c)"]


def _decode_lines(src: _Source, schema: Any, var: str, indent: str) -> list[str]:
    """Lines that read a value of type `schema` at `p` into `var`."""
    kind = _kind(schema)
    if isinstance(schema, dict) and kind in _PRIMITIVES:
        schema = kind
    if kind in ("string", "bytes"):
        lines = _read_long_lines("_n", indent) + [
            f"{indent}_e = p + _n",
            f"{indent}if _n < 0 or _e > end: raise Fallback"]
        if kind == "string":
            return [*lines, f"{indent}{var} = d[p:_e].decode()", f"{indent}p = _e"]
        return [*lines, f"{indent}{var} = d[p:_e]", f"{indent}p = _e"]
    if kind in ("long", "int"):
        return _read_long_lines(var, indent)
    if kind == "boolean":
        return [f"{indent}_c = d[p]",
                f"{indent}p += 1",
                f"{indent}if _c == 1: {var} = True",
                f"{indent}elif _c == 0: {var} = False",
                f"{indent}else: raise Fallback"]
    if kind == "double":
        return [f"{indent}{var}, = _DOUBLE.unpack_from(d, p)",
                f"{indent}p += 8"]
    if kind == "null":
        return [f"{indent}{var} = None"]
    if kind == "union":
        null = schema.index("null")
        return [f"{indent}_c = d[p]",
                f"{indent}p += 1",
                f"{indent}if _c == {_write_long(null)[0]}: {var} = None",
                f"{indent}elif _c == {_write_long(1 - null)[0]}:",
                *_decode_lines(src, schema[1 - null], var, indent + "    "),
                f"{indent}else: raise Fallback"]
    function = _decoder_function(src, schema, kind)
    return [f"{indent}{var}, p = {function}(d, p, end)"]


def _decoder_function(src: _Source, schema: dict[str, Any], kind: str) -> str:
    name = src.name("read_" + kind)
    body = [f"def {name}(d, p, end):"]
    if kind == "record":
        names = []
        for i, field in enumerate(schema["fields"]):
            body += _decode_lines(src, field["type"], f"f{i}", "    ")
            names.append(f"{field['name']!r}: f{i}")
        body.append(f"    return {{{', '.join(names)}}}, p")
    else:
        body.append("    v = {}" if kind == "map" else "    v = []")
        body.append("    while True:")
        body += _read_long_lines("_k", "        ")
        body += ["        if _k == 0: return v, p",
                 "        if _k < 0:",
                 "            _k = -_k"]
        body += _read_long_lines("_size", "            ")
        body.append("        for _ in range(_k):")
        if kind == "map":
            body += _decode_lines(src, "string", "k", "            ")
            body += _decode_lines(src, schema["values"], "x", "            ")
            body.append("            v[k] = x")
        else:
            body += _decode_lines(src, schema["items"], "x", "            ")
            body.append("            v.append(x)")
    src.functions.append("\n".join(body))
    return name


# --------------------------------------------------------------------------------- both
def compile_codec(schema: dict[str, Any]) -> tuple[Encoder, Decoder]:
    """(write, read) for a record schema (the JSON form, as in `schemas/*.avsc`).

    `write(record, out)` appends the body to `out`; `read(data, pos)` returns the record
    and the position after it. Raises Unsupported for a schema with types not compiled.
    """
    if _kind(schema) != "record":
        raise Unsupported("not a record")
    src = _Source()
    writer = _encoder_function(src, schema, "record")
    reader = _decoder_function(src, schema, "record")
    scope: dict[str, Any] = {
        "Fallback": Fallback, "_MISSING": object(), "_SMALL": _SMALL, "_DOUBLE": _DOUBLE,
        "_write_long": _write_long, "_read_long": _read_long,
        "_LONG_MIN": _LONG_MIN, "_LONG_MAX": _LONG_MAX, "_INT_MIN": _INT_MIN, "_INT_MAX": _INT_MAX,
        **src.constants,
    }
    exec(compile("\n\n".join(src.functions), f"<avro codec {schema.get('name')}>", "exec"), scope)
    read_record = scope[reader]

    def read(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        return read_record(data, pos, len(data))  # type: ignore[no-any-return]

    return scope[writer], read
