"""JSON items against the Avro contracts: pure checks shared by `rassylka produce` and the
HTTP API (`pipeline.api`).

An item is valid when it is a datum of the topic's contract in plain JSON (a union value
is given as is, not wrapped as `{"string": ...}`), names no field the contract lacks (Avro
would silently drop a misspelt optional field), passes the router's own check for business
events (`router.worker.invalid_event`: what the router would dead-letter is refused at the
door) and has a non-empty key. Every problem names the field path it is about.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pipeline import avro, topics


@dataclass(frozen=True)
class Problem:
    """Why one value is not valid: the field path (`order_id`, `attributes.tier`,
    `segments[2]`; '' for the item itself) and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def avro_contract(schema: str) -> bool:
    """Whether a TopicSpec.schema names an Avro contract of `schemas/` (not json/yaml)."""
    return schema in avro.registry().current


def default_key(spec: topics.TopicSpec) -> list[str] | None:
    """The fields whose values, joined by `|`, make the key of `spec`'s records."""
    names = {f["name"] for f in avro.registry().contract(spec.schema).schema["fields"]}
    parts = [p.strip("<>") for p in spec.key.split("|")]
    parts = ["phone" if p == "e164" else p for p in parts]
    return parts if all(p in names for p in parts) else None


def validate_item(name: str, contract: avro.Contract, item: Any,
                  key_fields: list[str]) -> tuple[bytes | None, bytes] | list[Problem]:
    """(key, single-object encoded value) of one item for catalog topic `name`, or the
    problems that keep it off the topic (never both, never an empty list)."""
    found = [] if accepts(contract)(item) else problems(contract.schema, item,
                                                        contract.schema["name"], {})
    if not found and name in topics.EVENT_TOPICS:
        if why := _router_check()(item):
            field, _, rest = why.partition(" ")
            found = [Problem(field, rest) if field in item else Problem("", why)]
    missing = [f for f in key_fields if isinstance(item, dict) and not item.get(f)]
    if not found and missing:
        found = [Problem(missing[0], "empty, but it is the key")]
    if found:
        return found
    try:
        return ("|".join(str(item[f]) for f in key_fields).encode() if key_fields else None,
                avro.encode(contract.name, item))
    except ValueError as exc:
        return [Problem("", str(exc))]


@lru_cache(maxsize=1)
def _router_check() -> Callable[[dict[str, Any]], str | None]:
    from pipeline.router.worker import invalid_event  # the router's module is heavy

    return invalid_event


def validate_items(name: str, contract: avro.Contract, items: list[Any],
                   key_fields: list[str]) -> tuple[list[tuple[bytes | None, bytes]], list[str]]:
    """(key, encoded value) of each item, and one line per problem (`item N: field: what`)."""
    encoded: list[tuple[bytes | None, bytes]] = []
    lines: list[str] = []
    for number, item in enumerate(items, 1):
        result = validate_item(name, contract, item, key_fields)
        if isinstance(result, list):
            lines.extend(f"item {number}: {problem}" for problem in result)
        else:
            encoded.append(result)
    return encoded, lines


def accepts(contract: avro.Contract) -> Callable[[Any], bool]:
    """A predicate true exactly when `problems` of `contract`'s schema finds none: the
    schema compiled once into nested closures, so the common case (a valid item) costs
    a few checks per field instead of a walk of the schema. `problems` still names what
    is wrong with an item this refuses."""
    found = _ACCEPTS.get(contract.fingerprint)
    if found is None:
        found = _ACCEPTS[contract.fingerprint] = _compile(contract.schema, {})
    return found


_ACCEPTS: dict[bytes, Callable[[Any], bool]] = {}


def _compile(schema: Any, named: dict[str, Callable[[Any], bool]]) -> Callable[[Any], bool]:
    """The predicate of `schema` (raw JSON form); `named` maps the named types seen so
    far to their predicates (filled in when a record's fields are compiled, so a
    recursive reference works)."""
    if isinstance(schema, str) and schema in named:
        return lambda value, name=schema: named[name](value)
    if isinstance(schema, list):
        branches = [_compile(branch, named) for branch in schema]
        return lambda value: any(ok(value) for ok in branches)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "record":
        return _compile_record(schema, named)
    if isinstance(schema, dict) and kind == "array":
        item = _compile(schema["items"], named)
        return lambda value: isinstance(value, list) and all(item(v) for v in value)
    if isinstance(schema, dict) and kind == "map":
        each = _compile(schema["values"], named)
        return lambda value: isinstance(value, dict) and all(each(v) for v in value.values())
    if kind == "enum":
        symbols = frozenset(schema["symbols"])
        ok = named[schema["name"]] = lambda value: isinstance(value, str) and value in symbols
        return ok
    if kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]
        return lambda value: (isinstance(value, int) and not isinstance(value, bool)
                              and low <= value <= high)
    ok = _PRIMITIVES.get(kind)
    return ok if ok is not None else lambda value: False


def _compile_record(schema: dict[str, Any],
                    named: dict[str, Callable[[Any], bool]]) -> Callable[[Any], bool]:
    fields: list[tuple[str, Callable[[Any], bool]]] = []
    required: list[str] = []
    known = frozenset(f["name"] for f in schema["fields"])

    def ok(value: Any) -> bool:
        if not isinstance(value, dict) or not value.keys() <= known:
            return False
        for name in required:
            if name not in value:
                return False
        for name, check in fields:
            if name in value and not check(value[name]):
                return False
        return True

    named[schema["name"]] = ok  # before the fields: a field may refer to this record
    if schema.get("namespace"):
        named[f"{schema['namespace']}.{schema['name']}"] = ok
    for field in schema["fields"]:
        fields.append((field["name"], _compile(field["type"], named)))
        if "default" not in field:
            required.append(field["name"])
    return ok


def check(schema: Any, value: Any, path: str, named: dict[str, Any]) -> list[str]:
    """`problems` as one line each (`path: what`)."""
    return [str(p) for p in problems(schema, value, path, named)]


_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def problems(schema: Any, value: Any, path: str, named: dict[str, Any]) -> list[Problem]:
    """Why `value` is not a datum of Avro `schema` (raw JSON form), one Problem each;
    [] when it is one. `path` is where `value` sits (the record's name for a top-level
    record, whose fields are then named bare). Unknown record fields are problems too."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        for branch in schema:
            if not problems(branch, value, path, named):
                return []
        kinds = "|".join(b if isinstance(b, str) else b.get("type", "?") for b in schema)
        return [Problem(path, f"{_shown(value)} is not one of {kinds}")]
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "record":
        named[schema.get("name")] = schema
        if schema.get("namespace"):
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        if not isinstance(value, dict):
            return [Problem(path, f"a JSON object expected, got {_shown(value)}")]
        top = path == schema["name"]
        out = []
        for field in schema["fields"]:
            where = field["name"] if top else f"{path}.{field['name']}"
            if field["name"] not in value:
                if "default" not in field:
                    out.append(Problem(where, f"missing (required, {_type_name(field['type'])})"))
                continue
            out.extend(problems(field["type"], value[field["name"]], where, named))
        known = {f["name"] for f in schema["fields"]}
        out.extend(Problem(k, f"unknown field of {schema['name']}") if top
                   else Problem(f"{path}.{k}", "unknown field") for k in value if k not in known)
        return out
    if isinstance(schema, dict) and kind in ("array", "map"):
        if kind == "array":
            if not isinstance(value, list):
                return [Problem(path, f"a JSON array expected, got {_shown(value)}")]
            return [p for i, v in enumerate(value)
                    for p in problems(schema["items"], v, f"{path}[{i}]", named)]
        if not isinstance(value, dict):
            return [Problem(path, f"a JSON object (map) expected, got {_shown(value)}")]
        return [p for k, v in value.items()
                for p in problems(schema["values"], v, f"{path}.{k}", named)]
    if kind == "enum":
        named[schema["name"]] = schema
        return [] if value in schema["symbols"] else [
            Problem(path, f"{_shown(value)} is not one of {', '.join(schema['symbols'])}")]
    if kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]
        if not isinstance(value, int) or isinstance(value, bool):
            return [Problem(path, f"{_shown(value)} is not an integer ({kind})")]
        return [] if low <= value <= high else [Problem(path, f"{value} is out of range for {kind}")]
    ok = _PRIMITIVES.get(kind)
    if ok is None:
        return [Problem(path, f"unsupported Avro type {kind!r}")]
    return [] if ok(value) else [Problem(path, f"{_shown(value)} is not a {kind}")]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: UP038


def _text(value: Any) -> bool:
    return isinstance(value, str)


_PRIMITIVES: dict[str, Any] = {
    "null": lambda value: value is None,
    "boolean": lambda value: isinstance(value, bool),
    "string": _text, "bytes": _text, "fixed": _text,
    "float": _number, "double": _number,
}


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return "|".join(_type_name(b) for b in schema)
    return schema if isinstance(schema, str) else str(schema.get("type"))


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})" if value is not None else "null"
