"""Typed models of `config/rules.yaml` and `config/templates/*.yaml`: the file structure.

The models say what each file may hold (fields, types, enums, ranges, formats) and are
the source of the JSON Schemas under `config/schema/` that editors use to complete and
check these files (`rassylka config schema` regenerates them). `pipeline.rules.loader`
validates with them first, then checks what a model cannot know on its own: Avro
fields of the events, template references, variants against each other, follow-up
targets, the Jinja code. It builds the frozen records of `pipeline.rules.model`.

Values YAML already typed are taken strictly: `"10"` is not a priority, `"no"` is not a
boolean. Durations ('30s', '6h', '2d') are parsed to seconds here.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from pipeline.rules.model import EVENT_TYPES, LANES, OPERATORS
from pipeline.rules.sandbox import MAX_BUILD

RULES_SCHEMA = "rules.schema.json"
TEMPLATE_SCHEMA = "template.schema.json"

ID = re.compile(r"^[a-z0-9_]+$")
LOCALE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z]{2,4})?$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ALPHA_SENDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10}$")
_NUMERIC_SENDER = re.compile(r"^\+?\d{3,15}$")
INT32 = (-(2**31), 2**31 - 1)

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
Lane = Literal[LANES]  # type: ignore[valid-type]


def parse_duration(value: Any) -> int | None:
    """Seconds in '30s', '15m', '6h' or '2d'; None when `value` is not such a duration."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if not match or int(match.group(1)) <= 0:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- field types
# Each check raises a PydanticCustomError whose message is what ops read after the path.


def _fail(kind: str, message: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, {"value": repr(value)})


def _seconds(value: Any) -> int:
    seconds = parse_duration(value)
    if seconds is None:
        raise _fail(
            "duration",
            "bad duration {value} (use a positive number and unit: 30s, 15m, 6h, 2d)",
            value,
        )
    if seconds > INT32[1]:
        raise _fail("duration", "duration {value} is too long", value)
    return seconds


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], Any]:
    hint = " (use lower-case letters, digits and _)" if pattern is ID else " (e.g. ru, en, en-US)"

    def check(value: Any) -> Any:
        if not isinstance(value, str) or not pattern.match(value):
            raise _fail("format", f"bad {what} {{value}}{hint}", value)
        return value

    return check


def _sender(value: Any) -> Any:
    if not isinstance(value, str) or not (
        _ALPHA_SENDER.match(value) or _NUMERIC_SENDER.match(value)
    ):
        raise _fail(
            "sender_id",
            "bad sender id {value} (alphanumeric, at most 11 characters, "
            "or a numeric short code / number of up to 15 digits)",
            value,
        )
    return value


def _whole(low: int, high: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail("range", f"expected a whole number from {low} to {high:,}, got {{value}}",
                        value)
        return value

    return check


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not INT32[0] <= value <= INT32[1]:
        raise _fail("integer", "expected an integer, got {value}", value)
    return value


def _weight(value: Any) -> Any:
    if not is_number(value) or value <= 0:
        raise _fail("weight", "weight must be a positive number, got {value}", value)
    return value


def _share(value: Any) -> Any:
    if not is_number(value) or not 0 < value < 1:
        raise _fail("share", "a number above 0 and below 1/variants, got {value}", value)
    return float(value)


def _strings(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _fail("strings", "expected a list of strings, got {value}", value)
    return value


def _locales(value: Any) -> Any:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, str) and LOCALE.match(x) for x in value)
    ):
        raise _fail("locales",
                    "expected a non-empty list of locales like [ru, en], got {value}", value)
    return value


def _text(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise _fail("text", "expected a non-empty text, got {value}", value)
    return value


def _texts_by_locale(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        raise _fail("locales", "'locales:' must map locale to text, e.g. ru: \"...\"", value)
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


_DURATION_SCHEMA = {
    "type": "string",
    "pattern": r"^\s*[0-9]+\s*[smhd]\s*$",
    "description": "A positive number and a unit: 30s, 15m, 6h, 2d.",
    "examples": ["30s", "15m", "6h", "2d"],
}
Duration = Annotated[int, BeforeValidator(_seconds), WithJsonSchema(_DURATION_SCHEMA)]
Id = Annotated[str, BeforeValidator(_matching(ID, "id")),
               WithJsonSchema({"type": "string", "pattern": ID.pattern})]
Locale = Annotated[str, BeforeValidator(_matching(LOCALE, "locale")),
                   WithJsonSchema({"type": "string", "pattern": LOCALE.pattern})]
SenderId = Annotated[
    str,
    BeforeValidator(_sender),
    WithJsonSchema({"type": "string", "anyOf": [{"pattern": _ALPHA_SENDER.pattern},
                                                {"pattern": _NUMERIC_SENDER.pattern}]}),
]
Strings = Annotated[list[str], BeforeValidator(_strings)]
Priority = Annotated[int, BeforeValidator(_integer),
                     WithJsonSchema({"type": "integer", "minimum": INT32[0], "maximum": INT32[1]})]
Weight = Annotated[int | float, BeforeValidator(_weight),
                   WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
Share = Annotated[float, BeforeValidator(_share),
                  WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})]
Text = Annotated[str, BeforeValidator(_text),
                 WithJsonSchema({"type": "string", "minLength": 1})]


def _whole_type(low: int, high: int) -> Any:
    return Annotated[int, BeforeValidator(_whole(low, high)),
                     WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})]


_OPERAND = {"type": ["string", "number", "boolean", "null"]}
_CONDITIONS_SCHEMA = {
    "type": "object",
    "description": "field: condition, all must hold. A field is a top-level event field or "
                   "attributes.<key>; a plain value means eq.",
    "additionalProperties": {
        "anyOf": [
            _OPERAND,
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    **{op: _OPERAND for op in OPERATORS},
                    "in": {"type": "array", "minItems": 1, "items": _OPERAND},
                    "not_in": {"type": "array", "minItems": 1, "items": _OPERAND},
                    "exists": {"type": "boolean"},
                    "regex": {"type": "string"},
                },
            },
        ]
    },
}
Conditions = Annotated[dict[str, Any], WithJsonSchema(_CONDITIONS_SCHEMA)]


# ---------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RenderModel(_Model):
    """`settings.render`: limits of one template render."""

    timeout_ms: _whole_type(1, 5_000) = Field(  # type: ignore[valid-type]
        50, description="CPU milliseconds one render may take.")
    max_chars: _whole_type(1, MAX_BUILD) = Field(  # type: ignore[valid-type]
        1000, description="Longest text a render may produce.")


class SettingsModel(_Model):
    """`settings:`: defaults for every rule."""

    required_locales: Annotated[list[Locale], BeforeValidator(_locales),
                                Field(min_length=1)]
    default_locale: Locale
    default_sender_id: SenderId
    default_ttl: Duration
    default_dedup_window: Duration
    render: RenderModel | None = None


class CustomerModel(_Model):
    """`customer:`: which customers a rule addresses; every part given must hold."""

    segments_any: Strings | None = None
    segments_none: Strings | None = None
    attributes: Conditions | None = None
    locale_in: Strings | None = None


class VariantModel(_Model):
    name: Annotated[str, BeforeValidator(_matching(ID, "variant name")),
                    WithJsonSchema({"type": "string", "pattern": ID.pattern})]
    template: Annotated[str, BeforeValidator(_matching(ID, "template id")),
                        WithJsonSchema({"type": "string", "pattern": ID.pattern})]
    weight: Weight


class BanditModel(_Model):
    """`bandit:` options of `strategy: bandit`."""

    metric: Literal["click", "conversion"] = "click"
    min_share: Share = 0.05
    every: Duration = Field(3600, description="How often weights are learned again.")


class UnlessModel(_Model):
    """`follow_up.unless`: what cancels a scheduled follow-up."""

    event: EventType | None = None
    when: Conditions | None = None
    match: Annotated[
        list[str] | None,
        BeforeValidator(_one_or_many),
        WithJsonSchema({"anyOf": [{"type": "string"},
                                  {"type": "array", "items": {"type": "string"}}]}),
    ] = None
    clicked: bool | None = None


class FollowUpModel(_Model):
    """`follow_up:`: a second message `after` a matching event, unless cancelled first."""

    after: Duration
    rule: Id = Field(description="Id of a rule with trigger: follow_up, for the same event.")
    unless: UnlessModel | None = None


class RuleModel(_Model):
    """One notification rule: when an event matches, render and send one SMS."""

    id: Id
    description: str | None = None
    enabled: bool = True
    event: EventType
    when: Conditions | None = None
    customer: CustomerModel | None = None
    template: Annotated[str, BeforeValidator(_matching(ID, "template id")),
                        WithJsonSchema({"type": "string", "pattern": ID.pattern})] = Field(
        None, description="The template to render; or give `variants:`.")  # type: ignore[assignment]
    variants: Annotated[list[VariantModel], Field(min_length=1)] = None  # type: ignore[assignment]
    lane: Lane
    priority: Priority = 0
    ttl: Duration = Field(None, description="Default: settings.default_ttl.")  # type: ignore[assignment]
    dedup_window: Duration = Field(None)  # type: ignore[assignment]
    dedup_by_content: bool = False
    sender_id: SenderId = Field(None)  # type: ignore[assignment]
    allow_transliteration: bool = False
    send_at: str | None = Field(None, description="Event field holding an ISO datetime.")
    strategy: Literal["fixed", "bandit"] = "fixed"
    bandit: BanditModel | None = None
    follow_up: FollowUpModel | None = None
    trigger: Literal["event", "follow_up"] = "event"


class RulesFile(_Model):
    """`config/rules.yaml`."""

    model_config = ConfigDict(title="Rassylka rules (config/rules.yaml)")

    settings: SettingsModel
    rules: list[RuleModel]


class TemplateFile(_Model):
    """`config/templates/<id>.yaml`: one SMS text per locale (sandboxed Jinja)."""

    model_config = ConfigDict(title="Rassylka template (config/templates/<id>.yaml)")

    id: Id = Field(description="The file name without .yaml.")
    description: str = ""
    locales: Annotated[
        dict[Locale, Text],
        BeforeValidator(_texts_by_locale),
        WithJsonSchema({"type": "object", "minProperties": 1, "additionalProperties": False,
                        "patternProperties": {LOCALE.pattern: {"type": "string", "minLength": 1}},
                        "description": "locale: text (sandboxed Jinja), e.g. ru: \"...\""}),
    ]


# ---------------------------------------------------------------------------- errors


def suggest(word: str, choices: Any) -> str:
    """A "did you mean" hint naming the closest of `choices` to `word`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_MISSING_HINTS = {
    "event": f" (one of {', '.join(EVENT_TYPES)})",
    "lane": f" ({', '.join(LANES)})",
    "after": " (a duration: 3d, 6h)",
    "rule": " (the id of a rule with trigger: follow_up)",
}
_TYPE_MESSAGES = {
    "string_type": "expected a text",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
}


def _unwrap(annotation: Any) -> Any:
    """The model, list, dict or Literal inside Annotated[...] and `X | None`."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _type_at(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation of the value at `loc` in `root` (None when the path leaves it)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            current = info.annotation  # pydantic keeps Annotated[...] metadata apart
        elif origin is list and isinstance(part, int):
            current = typing.get_args(current)[0]
        elif origin is dict and isinstance(part, str):
            current = typing.get_args(current)[1]
        else:
            return None
    return _unwrap(current)


def model_problems(
    root: type[BaseModel], exc: ValidationError
) -> list[tuple[tuple[Any, ...], str, tuple[Any, ...]]]:
    """(path, message, where) of each error in `exc`, worded for ops: `path` names what
    the message is about (the mapping, for unknown and missing fields), `where` is the
    value's own path (an unknown field's key), the one whose line to show."""
    found: list[tuple[tuple[Any, ...], str]] = []
    locs = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        locs.append(loc)
        kind, value = error["type"], error.get("input")
        if kind == "extra_forbidden":
            parent = _type_at(root, loc[:-1])
            known = parent.model_fields if isinstance(parent, type) else ()
            found.append((loc[:-1], f"unknown field '{loc[-1]}'{suggest(str(loc[-1]), known)}"))
        elif kind == "missing":
            found.append((loc[:-1], f"missing field '{loc[-1]}'{_MISSING_HINTS.get(loc[-1], '')}"))
        elif kind == "literal_error":
            choices = typing.get_args(_type_at(root, loc)) or ()
            name = str(loc[-1]) if loc else "value"
            found.append((loc, f"unknown {name} {value!r}{suggest(str(value), choices)} "
                               f"(known: {', '.join(map(str, choices))})"))
        elif kind == "too_short":
            found.append((loc, f"expected a non-empty list, got {value!r}"))
        elif kind in _TYPE_MESSAGES:
            found.append((loc, f"{_TYPE_MESSAGES[kind]}, got {value!r}"))
        elif isinstance(error.get("ctx"), dict) and "value" in error["ctx"]:
            found.append((loc, error["msg"]))  # our own checks: already worded
        else:
            found.append((loc, f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {value!r}"))
    return [(path, message, loc) for (path, message), loc in zip(found, locs, strict=True)]


# ---------------------------------------------------------------------------- JSON Schema


def json_schemas() -> dict[str, str]:
    """{file name: text} of the JSON Schemas editors use for rules.yaml and templates."""
    texts = {}
    for name, model in ((RULES_SCHEMA, RulesFile), (TEMPLATE_SCHEMA, TemplateFile)):
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  **model.model_json_schema()}
        texts[name] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return texts


def write_json_schemas(out: Path) -> list[Path]:
    """Write `json_schemas()` into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
