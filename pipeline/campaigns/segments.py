"""Audience segments: named conditions on customer profiles and behaviour, compiled to one
ClickHouse query over the analytics store.

`config/segments.yaml` names each segment, says what it is for, and gives its condition
tree (`where`): `all: [...]`, `any: [...]`, `not: {...}`, leaves on profile fields, leaves
on behaviour in a window of days, and references to other segments:

    segments:
      lapsed_moscow_buyers:
        description: Bought in Moscow last year, nothing in the last 90 days.
        where:
          all:
            - city: Moscow
            - ordered: {within_days: 365, status: paid}
            - not: {ordered: {within_days: 90}}

Called by `rassylka segments validate|preview` (and by campaigns choosing an audience).
`load_segments` reads and checks the file (pydantic models, then references and cycles;
every problem names the file, the segment, the line and the key); `compile_segment`
turns one segment into a single SQL query returning its customers; `preview` runs it for
a size, breakdowns and a masked sample.

What the leaves read (tables of infra/clickhouse/00*.sql, deduplicated with FINAL where a
duplicate could change the answer). A window of N days is [now - N days, now]:

- profile fields: `profiles` (FINAL, deleted = 0): country, region, city, locale,
  operator, `tag` (alias `segments`: the profile's segments array), `attribute`.
- `received`: a message submitted to a gateway (`messages`, decided in the window).
- `delivered`: a DELIVRD receipt in the window (`receipts` → `messages` for the customer).
- `clicked`: a click on a tracked link in the window (`clicks` → `messages`).
- `converted`: a conversion in the window (`conversions`); with `min_revenue`, their revenue
  summed over the window reaches it (major units: roubles, for two-decimal currencies).
- `no_response`: received a message in the last N days, and in those days neither clicked
  nor replied (`inbound`, matched on the number's hash).
- `opted_in_since`: the latest marketing consent change is an opt-in made in the last N days
  (`consent_changes`, matched on the number's hash; at equal times an opt-out wins).
- `ordered`: at least `min_count` distinct orders (default 1) with an event in the window,
  of the given statuses when `status` is set (`orders`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from connectors.clickhouse import DEFAULT_DATABASE, Client
from pipeline.errors import ConfigError

SEGMENTS_FILE = "segments.yaml"
MAX_DAYS = 3650  # ten years: more is a typo, and no fact table keeps that much
DAY_MS = 86_400_000
ORDER_STATUSES = ("created", "paid", "shipped", "ready_for_pickup", "delivered", "cancelled")
HINT = "see every problem with `rassylka segments validate`"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------- YAML shape


def _texts(value: Any) -> tuple[str, ...]:
    """One text or a non-empty list of texts, as a tuple (YAML `RU` or `[RU, KZ]`)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise PydanticCustomError("empty_list", "must not be an empty list")
    for item in items:
        if not isinstance(item, str):
            hint = " (YAML reads no/yes/on/off as true/false: quote it)" if isinstance(
                item, bool) else ""
            raise PydanticCustomError(
                "text", "must be text or a list of texts, got {value}{hint}",
                {"value": repr(item), "hint": hint},
            )
        if not item.strip():
            raise PydanticCustomError("text", "must not be empty text")
    return tuple(items)


def _countries(value: Any) -> tuple[str, ...]:
    codes = _texts(value)
    for code in codes:
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise PydanticCustomError(
                "country", "{code} is not an ISO 3166-1 alpha-2 country code (e.g. RU)",
                {"code": repr(code)},
            )
    return codes


def _statuses(value: Any) -> tuple[str, ...]:
    statuses = _texts(value)
    for status in statuses:
        if status not in ORDER_STATUSES:
            raise PydanticCustomError(
                "order_status", "unknown order status {status}{hint} (statuses: {known})",
                {"status": repr(status), "hint": _suggest(status, ORDER_STATUSES),
                 "known": ", ".join(ORDER_STATUSES)},
            )
    return statuses


_TEXTS_SCHEMA = WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
)
Texts = Annotated[tuple[str, ...], BeforeValidator(_texts), _TEXTS_SCHEMA]
Countries = Annotated[tuple[str, ...], BeforeValidator(_countries), _TEXTS_SCHEMA]
Statuses = Annotated[tuple[str, ...], BeforeValidator(_statuses), _TEXTS_SCHEMA]
Days = Annotated[StrictInt, Field(ge=1, le=MAX_DAYS)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]


class _Model(BaseModel):
    """Strict, immutable: unknown keys are errors, nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Window(_Model):
    """Something happened at least once in the last `within_days` days."""

    within_days: Days


class ConversionWindow(_Model):
    """Converted in the last `within_days` days, for at least `min_revenue` in total."""

    within_days: Days
    min_revenue: Annotated[float, Field(strict=True, ge=0)] | None = None


class Quiet(_Model):
    """A span of the last `days` days."""

    days: Days


class OrderWindow(_Model):
    """At least `min_count` orders with an event in the window, of `status` when set."""

    within_days: Days
    min_count: Annotated[StrictInt, Field(ge=1)] = 1
    status: Statuses | None = None


class AttributeTest(_Model):
    """A profile attribute equal to a value, or one of several (`in`)."""

    name: Annotated[StrictStr, StringConstraints(min_length=1)]
    equals: StrictStr | None = None
    in_: Texts | None = Field(default=None, alias="in")

    @model_validator(mode="after")
    def _one_test(self) -> AttributeTest:
        if (self.equals is None) == (self.in_ is None):
            raise PydanticCustomError("attribute_test", "give exactly one of equals or in")
        return self


class AllOf(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Model):
    any: list[Condition] = Field(min_length=1)


class Not(_Model):
    not_: Condition = Field(alias="not")


class CountryIs(_Model):
    country: Countries


class RegionIs(_Model):
    region: Texts


class CityIs(_Model):
    city: Texts


class LocaleIs(_Model):
    locale: Texts


class OperatorIs(_Model):
    operator: Texts


class HasTag(_Model):
    """Any of these in the profile's `segments` array."""

    tag: Texts


class HasSegmentsTag(_Model):
    """`tag` spelt as the profile field's name."""

    segments: Texts


class AttributeIs(_Model):
    attribute: AttributeTest


class Received(_Model):
    received: Window


class Delivered(_Model):
    delivered: Window


class Clicked(_Model):
    clicked: Window


class Converted(_Model):
    converted: ConversionWindow


class NoResponse(_Model):
    no_response: Quiet


class OptedInSince(_Model):
    opted_in_since: Quiet


class Ordered(_Model):
    ordered: OrderWindow


class InSegment(_Model):
    """The customers of another segment."""

    segment: Name


# The key that names each kind of condition (a condition is a mapping with one key).
CONDITIONS: dict[str, type[_Model]] = {
    "all": AllOf, "any": AnyOf, "not": Not,
    "country": CountryIs, "region": RegionIs, "city": CityIs, "locale": LocaleIs,
    "operator": OperatorIs, "tag": HasTag, "segments": HasSegmentsTag,
    "attribute": AttributeIs,
    "received": Received, "delivered": Delivered, "clicked": Clicked, "converted": Converted,
    "no_response": NoResponse, "opted_in_since": OptedInSince, "ordered": Ordered,
    "segment": InSegment,
}
_KIND_OF = {cls: key for key, cls in CONDITIONS.items()}


def _condition_kind(value: Any) -> str | None:
    """The tag pydantic dispatches a condition on: its only key (None: not one key)."""
    if isinstance(value, dict):
        return str(next(iter(value))) if len(value) == 1 else None
    return _KIND_OF.get(type(value))


Condition = Annotated[
    Union[  # noqa: UP007 - pydantic needs the tagged members spelt out
        Annotated[AllOf, Tag("all")], Annotated[AnyOf, Tag("any")], Annotated[Not, Tag("not")],
        Annotated[CountryIs, Tag("country")], Annotated[RegionIs, Tag("region")],
        Annotated[CityIs, Tag("city")], Annotated[LocaleIs, Tag("locale")],
        Annotated[OperatorIs, Tag("operator")], Annotated[HasTag, Tag("tag")],
        Annotated[HasSegmentsTag, Tag("segments")], Annotated[AttributeIs, Tag("attribute")],
        Annotated[Received, Tag("received")], Annotated[Delivered, Tag("delivered")],
        Annotated[Clicked, Tag("clicked")], Annotated[Converted, Tag("converted")],
        Annotated[NoResponse, Tag("no_response")],
        Annotated[OptedInSince, Tag("opted_in_since")], Annotated[Ordered, Tag("ordered")],
        Annotated[InSegment, Tag("segment")],
    ],
    Discriminator(_condition_kind),
]
for _model in (AllOf, AnyOf, Not):
    _model.model_rebuild()


class Segment(_Model):
    """One audience: what it is for, and who is in it."""

    description: Annotated[StrictStr, StringConstraints(min_length=1)]
    where: Condition


class SegmentsFile(_Model):
    """The whole of `config/segments.yaml` (its JSON Schema: `model_json_schema()`)."""

    segments: dict[Name, Segment] = Field(default_factory=dict)


# ---------------------------------------------------------------------------- loading


def load_segments(config_dir: str | Path) -> dict[str, Segment]:
    """The segments of `<config_dir>/segments.yaml` by name; {} when there is no such file.

    Called at start-up by whatever uses segments (the CLI, campaigns). Raises ConfigError
    listing every problem: YAML errors, unknown keys or conditions, bad values and windows,
    unknown segment references and reference cycles, each with file, segment and line.
    """
    path = Path(config_dir) / SEGMENTS_FILE
    if not path.is_file():
        return {}
    segments, problems = parse_segments(path.read_text(encoding="utf-8"), display_path(path))
    if problems:
        raise ConfigError(problems, hint=HINT)
    return segments


def validate_segments(config_dir: str | Path) -> list[str]:
    """Every problem of `<config_dir>/segments.yaml`; empty when it is fine (or absent)."""
    try:
        load_segments(config_dir)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def parse_segments(text: str, label: str = f"config/{SEGMENTS_FILE}") -> tuple[
        dict[str, Segment], list[str]]:
    """Segments read from YAML `text`, and the problems found (`label` names the file)."""
    try:
        root, data = _read_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return {}, [f"{label}{where}: YAML error: {exc.problem or exc.context}"]
    except yaml.YAMLError as exc:
        return {}, [f"{label}: YAML error: {exc}"]
    lines = _Lines(root)
    problems = [f"{label}, line {line}: duplicate key {key!r}" for key, line in lines.duplicates]
    if problems:
        return {}, problems
    if data is None:  # an empty file
        return {}, []
    try:
        parsed = SegmentsFile.model_validate(data)
    except ValidationError as exc:
        return {}, [_problem(label, lines, err) for err in exc.errors()]
    problems = _check_references(parsed.segments, label, lines)
    return (dict(parsed.segments), []) if not problems else ({}, problems)


def _read_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, safely."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


class _Lines:
    """Line numbers of YAML nodes by path (keys and list indexes), and duplicate keys."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root
        self.duplicates: list[tuple[str, int]] = []
        self._find_duplicates(root)

    def line(self, path: Sequence[Any]) -> int | None:
        """The line of the deepest node on `path`; steps that lead nowhere are skipped
        (pydantic adds union tags to its paths: `all`, `all`, 0)."""
        node, line = self.root, None
        for step in path:
            child = self._child(node, step)
            if child is not None:
                node, line = child
        return line if line is not None else (self.root.start_mark.line + 1 if self.root else None)

    @staticmethod
    def _child(node: yaml.Node | None, step: Any) -> tuple[yaml.Node, int] | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == step:
                    return value, key.start_mark.line + 1
        if isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if 0 <= step < len(node.value):
                item = node.value[step]
                return item, item.start_mark.line + 1
        return None

    def _find_duplicates(self, node: yaml.Node | None) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        self.duplicates.append((key.value, key.start_mark.line + 1))
                    seen.add(key.value)
                self._find_duplicates(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._find_duplicates(item)


def _problem(label: str, lines: _Lines, err: Mapping[str, Any]) -> str:
    """One pydantic error as `file: segment 'x', line N: where.path: what is wrong`."""
    loc = _clean(err["loc"])
    kind, message = err["type"], err["msg"]
    line_path = list(loc)
    if kind == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), _known_keys(loc))}"
        loc = loc[:-1]
    elif kind == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        message = (f"unknown condition {tag!r}{_suggest(tag, CONDITIONS)} "
                   f"(conditions: {', '.join(CONDITIONS)})")
    elif kind == "union_tag_not_found":
        message = _not_one_key(err["input"])
    elif kind == "missing":
        message = f"missing key {loc[-1]!r}"
        loc = loc[:-1]
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"must be a whole number, got {_brief(err['input'])}"
    elif kind in ("greater_than_equal", "less_than_equal"):
        bound = "at least" if kind == "greater_than_equal" else "at most"
        limit = err["ctx"].get("ge", err["ctx"].get("le"))
        message = f"must be {bound} {limit}, got {_brief(err['input'])}"
    elif kind == "string_pattern_mismatch" and "[key]" in loc:
        message = "a segment name is letters, digits, '_', '-' or '.', starting with a letter or digit"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"must be a mapping (key: value), got {_brief(err['input'])}"
    elif kind in ("string_type", "float_type"):
        message = f"{message[0].lower()}{message[1:]}, got {_brief(err['input'])}"
    return _where(label, lines.line(line_path), [step for step in loc if step != "[key]"],
                  message)


def _brief(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clean(loc: Sequence[Any]) -> tuple[Any, ...]:
    """pydantic's path without the union tags it repeats: where.all.all.0 → where.all.0."""
    out: list[Any] = []
    for i, step in enumerate(loc):
        if step in CONDITIONS and i + 1 < len(loc) and loc[i + 1] == step:
            continue
        out.append(step)
    return tuple(out)


def _known_keys(loc: Sequence[Any]) -> list[str]:
    """The keys allowed where an unknown key `loc[-1]` was found."""
    parent = loc[-2] if len(loc) >= 2 else None
    if len(loc) == 1:
        return list(SegmentsFile.model_fields)
    if len(loc) == 3 and loc[0] == "segments":
        return list(Segment.model_fields)
    model = CONDITIONS.get(str(parent))
    if model is None:
        return []
    params = model.model_fields[next(iter(model.model_fields))].annotation
    if isinstance(params, type) and issubclass(params, BaseModel):
        return [f.alias or n for n, f in params.model_fields.items()]
    return []


def _not_one_key(value: Any) -> str:
    if isinstance(value, dict) and not value:
        return "empty condition (conditions: " + ", ".join(CONDITIONS) + ")"
    if isinstance(value, dict):
        keys = ", ".join(map(str, value))
        return f"a condition has one key, this one has {keys}: put them under all: [...]"
    return f"a condition is a mapping such as {{country: RU}}, got {_brief(value)}"


def _where(label: str, line: int | None, loc: Sequence[Any], message: str) -> str:
    """`label: segment 'x', line N: where.all[1].city: message`."""
    at = f", line {line}" if line else ""
    if len(loc) >= 2 and loc[0] == "segments":
        inner = _path(loc[2:])
        return f"{label}: segment {loc[1]!r}{at}: {inner + ': ' if inner else ''}{message}"
    inner = _path(loc)
    return f"{label}{at}: {inner + ': ' if inner else ''}{message}"


def _path(loc: Sequence[Any]) -> str:
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _check_references(segments: Mapping[str, Segment], label: str, lines: _Lines) -> list[str]:
    """Problems with `segment:` references: unknown names, and cycles (each reported once)."""
    problems: list[str] = []
    edges: dict[str, list[str]] = {}
    for name, segment in segments.items():
        edges[name] = []
        for ref, loc in _references(segment.where, ("where",)):
            if ref in segments:
                edges[name].append(ref)
                continue
            full = ("segments", name, *loc)
            problems.append(_where(label, lines.line(full), full,
                                   f"unknown segment {ref!r}{_suggest(ref, segments)}"))
    for cycle in _cycles(edges):
        full = ("segments", cycle[0])
        problems.append(_where(label, lines.line(full), full,
                               "segments refer to each other in a cycle: " + " → ".join(cycle)))
    return problems


def _references(node: _Model, loc: tuple[Any, ...]) -> Iterable[tuple[str, tuple[Any, ...]]]:
    """(referenced segment, path of the reference) for every `segment:` under `node`."""
    match node:
        case InSegment(segment=name):
            yield name, (*loc, "segment")
        case AllOf(all=items) | AnyOf(any=items):
            key = _KIND_OF[type(node)]
            for i, item in enumerate(items):
                yield from _references(item, (*loc, key, i))
        case Not(not_=inner):
            yield from _references(inner, (*loc, "not"))


def _cycles(edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Reference cycles, each once, as [a, b, ..., a], starting at their first name."""
    found: dict[tuple[str, ...], list[str]] = {}
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(path: list[str]) -> None:  # path: the names being visited, ending here
        name = path[-1]
        state[name] = "open"
        for ref in edges.get(name, []):
            if state.get(ref) == "open":
                cycle = path[path.index(ref):]
                start = cycle.index(min(cycle))
                ordered = cycle[start:] + cycle[:start]
                found.setdefault(tuple(ordered), [*ordered, ordered[0]])
            elif ref not in state:
                visit([*path, ref])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit([name])
    return list(found.values())


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def display_path(path: Path) -> str:
    """`path` relative to the working directory when below it (`config/segments.yaml`)."""
    try:
        resolved = path.resolve()
        return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) \
            else str(path)
    except (OSError, ValueError):
        return str(path)


# ---------------------------------------------------------------------------- SQL


class UnknownSegment(ConfigError):
    """A segment asked for by name is not among the loaded ones."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = sorted(known)
        super().__init__([f"no segment {name!r}{_suggest(name, names)} "
                          f"(segments: {', '.join(names) or 'none'})"])


def quote(value: str) -> str:
    """`value` as a ClickHouse string literal: single-quoted, with backslashes and quotes
    escaped (and \\n \\r \\t \\0 \\b \\f, for readable SQL). Every text from the YAML
    reaches SQL through here."""
    if not isinstance(value, str):
        raise TypeError(f"quote() takes text, got {type(value).__name__}")
    return "'" + value.translate(_ESCAPES) + "'"


_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                          "\0": "\\0", "\b": "\\b", "\f": "\\f"})


def compile_segment(
    segments: Mapping[str, Segment], name: str, now_ms: int, database: str = DEFAULT_DATABASE
) -> str:
    """One ClickHouse query returning the distinct `customer_id`s of segment `name`, as of
    `now_ms` (windows end there), among profiles that are not deleted.

    Raises UnknownSegment for a name not in `segments`, ConfigError for a reference cycle
    (only possible when `segments` did not come from `load_segments`).
    """
    return audience_sql(segments, name, now_ms, "DISTINCT customer_id", database)


def audience_sql(
    segments: Mapping[str, Segment], name: str, now_ms: int, columns: str,
    database: str = DEFAULT_DATABASE,
) -> str:
    """`SELECT <columns>` over the profiles (one row per customer) of segment `name`.

    `columns` is SQL written by the caller, never configuration.
    """
    if not _IDENTIFIER.match(database):
        raise ValueError(f"invalid database name {database!r}")
    if name not in segments:
        raise UnknownSegment(name, segments)
    condition = _Compiler(segments, database, int(now_ms)).segment(name)
    return (f"SELECT {columns}\nFROM {database}.profiles FINAL\n"
            f"WHERE deleted = 0\n  AND {condition}")


class _Compiler:
    """Turns condition trees into SQL boolean expressions over `profiles` columns."""

    def __init__(self, segments: Mapping[str, Segment], database: str, now_ms: int) -> None:
        self.segments = segments
        self.db = database
        self.now_ms = now_ms
        self._open: list[str] = []  # segments being compiled: a reference back is a cycle

    def segment(self, name: str, depth: int = 1) -> str:
        if name not in self.segments:
            raise UnknownSegment(name, self.segments)
        if name in self._open:
            cycle = " → ".join([*self._open[self._open.index(name):], name])
            raise ConfigError([f"segments refer to each other in a cycle: {cycle}"], hint=HINT)
        self._open.append(name)
        try:
            return self.sql(self.segments[name].where, depth)
        finally:
            self._open.pop()

    def sql(self, node: _Model, depth: int = 1) -> str:
        """The SQL of one condition; `depth` indents nested all / any / not for reading."""
        match node:
            case AllOf(all=items):
                return self._join("AND", items, depth)
            case AnyOf(any=items):
                return self._join("OR", items, depth)
            case Not(not_=inner):
                return f"NOT ({self.sql(inner, depth + 1)})"
            case CountryIs(country=v) | RegionIs(region=v) | CityIs(city=v) | LocaleIs(
                    locale=v) | OperatorIs(operator=v):
                return _one_of(_KIND_OF[type(node)], v)
            case HasTag(tag=v) | HasSegmentsTag(segments=v):
                return f"hasAny(segments, [{', '.join(map(quote, v))}])"
            case AttributeIs(attribute=test):
                values = (test.equals,) if test.equals is not None else test.in_ or ()
                return _one_of(f"attributes[{quote(test.name)}]", values)
            case Received(received=w):
                return f"customer_id IN ({self.received(w.within_days)})"
            case Delivered(delivered=w):
                return f"customer_id IN ({self.delivered(w.within_days)})"
            case Clicked(clicked=w):
                return f"customer_id IN ({self.clicked(w.within_days)})"
            case Converted(converted=w):
                return f"customer_id IN ({self.converted(w)})"
            case NoResponse(no_response=q):
                return self.no_response(q.days)
            case OptedInSince(opted_in_since=q):
                return f"phone_hash IN ({self.opted_in(q.days)})"
            case Ordered(ordered=w):
                return f"customer_id IN ({self.ordered(w)})"
            case InSegment(segment=name):
                return self.segment(name, depth)
        raise TypeError(f"not a segment condition: {node!r}")

    def _join(self, operator: str, items: Sequence[_Model], depth: int) -> str:
        inner = "\n" + "  " * (depth + 1)
        parts = f"{inner}{operator} ".join(self.sql(item, depth + 1) for item in items)
        return f"({inner}{parts}\n{'  ' * depth})"

    # -- behaviour: subqueries returning customer_id (or phone_hash) -------------------

    def received(self, days: int) -> str:
        return (f"SELECT customer_id FROM {self.db}.messages FINAL "
                f"WHERE status = 'submitted' AND {self.window('decided_at', days)}")

    def delivered(self, days: int) -> str:
        return self._messages_with(
            f"SELECT message_id FROM {self.db}.receipts "
            f"WHERE state = 'DELIVRD' AND {self.window('received_at', days)}")

    def clicked(self, days: int) -> str:
        return self._messages_with(
            f"SELECT message_id FROM {self.db}.clicks WHERE {self.window('clicked_at', days)}")

    def converted(self, w: ConversionWindow) -> str:
        sql = (f"SELECT customer_id FROM {self.db}.conversions FINAL "
               f"WHERE {self.window('converted_at', w.within_days)}")
        if w.min_revenue is None:
            return sql
        minor = int(round(w.min_revenue * 100))
        return f"{sql} GROUP BY customer_id HAVING sum(revenue_minor) >= {minor}"

    def no_response(self, days: int) -> str:
        replied = (f"SELECT sender_hash FROM {self.db}.inbound "
                   f"WHERE {self.window('received_at', days)}")
        return (f"(customer_id IN ({self.received(days)}) "
                f"AND customer_id NOT IN ({self.clicked(days)}) "
                f"AND phone_hash NOT IN ({replied}))")

    def opted_in(self, days: int) -> str:
        since = _time(self.now_ms - days * DAY_MS)
        return (f"SELECT phone_hash FROM {self.db}.consent_changes FINAL "
                f"WHERE scope = 'marketing' AND changed_at <= {_time(self.now_ms)} "
                f"GROUP BY phone_hash "
                f"HAVING argMax(status, (changed_at, status = 'opt_out')) = 'opt_in' "
                f"AND max(changed_at) >= {since}")

    def ordered(self, w: OrderWindow) -> str:
        status = f" AND {_one_of('status', w.status)}" if w.status else ""
        sql = (f"SELECT customer_id FROM {self.db}.orders "
               f"WHERE {self.window('occurred_at', w.within_days)}{status}")
        if w.min_count == 1:
            return sql
        return f"{sql} GROUP BY customer_id HAVING uniqExact(order_id) >= {int(w.min_count)}"

    def window(self, column: str, days: int) -> str:
        """`column` within the last `days` days, up to now."""
        since = self.now_ms - int(days) * DAY_MS
        return f"{column} >= {_time(since)} AND {column} <= {_time(self.now_ms)}"

    def _messages_with(self, message_ids: str) -> str:
        return (f"SELECT customer_id FROM {self.db}.messages FINAL "
                f"WHERE message_id IN ({message_ids})")


def _one_of(column: str, values: Sequence[str]) -> str:
    if len(values) == 1:
        return f"{column} = {quote(values[0])}"
    return f"{column} IN ({', '.join(map(quote, values))})"


def _time(ms: int) -> str:
    """A UTC DateTime64(3) literal for epoch milliseconds `ms`, readable in the SQL."""
    moment = _EPOCH + dt.timedelta(milliseconds=int(ms))
    return f"toDateTime64({quote(moment.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3])}, 3, 'UTC')"


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class Preview:
    """What a segment holds right now: its size, where it is, a few masked members.

    Breakdowns are (value, customers), most customers first; '' is "not known" (a profile
    without a region attribute, a number without carrier data).
    """

    segment: str
    size: int
    by_region: list[tuple[str, int]]
    by_operator: list[tuple[str, int]]
    sample: list[tuple[str, str]]  # (customer_id, phone_masked)
    seconds: float  # time the queries took


def preview(
    client: Client, segments: Mapping[str, Segment], name: str, now_ms: int, sample: int = 10,
    database: str = DEFAULT_DATABASE,
) -> Preview:
    """Run segment `name` against ClickHouse: size, breakdowns by region and operator, and
    `sample` members (customer id and masked phone, a stable pseudo-random pick: the
    lowest hashes of the customer ids).

    One query, grouped by (region, operator): its cells add up to the size and to both
    breakdowns, and each cell keeps its `sample` lowest-hash members, whose lowest overall
    are the sample; the segment is evaluated once. Raises UnknownSegment for an unknown
    name, the client's RetryableError / PermanentError when ClickHouse fails.
    """
    started = time.perf_counter()
    columns = "region, operator, count()"
    if sample > 0:
        columns += (f", groupArraySorted({int(sample)})"
                    "((cityHash64(customer_id), customer_id, phone_masked))")
    cells = client.rows(audience_sql(segments, name, now_ms, columns, database)
                        + "\nGROUP BY region, operator")
    by_region: Counter[str] = Counter()
    by_operator: Counter[str] = Counter()
    picked: list[tuple[int, str, str]] = []
    for region, operator, count, *members in cells:
        by_region[region] += int(count)
        by_operator[operator] += int(count)
        picked.extend(tuple(m) for m in (members[0] if members else ()))
    return Preview(
        segment=name,
        size=sum(by_region.values()),
        by_region=_ranked(by_region),
        by_operator=_ranked(by_operator),
        sample=[(str(cid), str(masked)) for _, cid, masked in sorted(picked)[:sample]],
        seconds=time.perf_counter() - started,
    )


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
