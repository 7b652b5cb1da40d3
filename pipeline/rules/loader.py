"""Load and validate `config/rules.yaml` and `config/templates/*.yaml` into a `RuleSet`.

Validation collects every problem before giving up, each message naming the file, the
rule (index and id) or template (id, locale, line) and the exact field, so ops can fix a
whole config in one pass. Condition fields are checked against the Avro contract of the
event (`schemas/<event>.avsc`), and template references (`event.x`, `customer.x`) against
the contracts of the events that use the template and of the customer profile.

The same code validates a config folder (`load_ruleset`, `validate`) and a bundle of file
texts received at run time (`load_bundle`), e.g. from the `config.rules` topic.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes

from pipeline.avro import SCHEMA_DIR
from pipeline.errors import ConfigError
from pipeline.rules.model import (
    DEFAULT_VARIANT,
    EVENT_TYPES,
    LANES,
    OPERATORS,
    Bandit,
    Condition,
    CustomerFilter,
    FollowUp,
    RenderLimits,
    Rule,
    RuleSet,
    RuleSettings,
    Template,
    Variant,
)
from pipeline.rules.render import (
    CONTEXT_NAMES,
    HELPER_FILTERS,
    RULE_FIELDS,
    build_environment,
    compile_source,
)
from pipeline.rules.sandbox import MAX_BUILD
from pipeline.rules.template_check import JINJA_NAMES, check_template, field_uses

log = logging.getLogger(__name__)

RULES_FILE = "rules.yaml"
TEMPLATES_DIR = "templates"
PROFILE_SCHEMA = "customer_profile"

_SETTINGS_FIELDS = (
    "required_locales",
    "default_locale",
    "default_sender_id",
    "default_ttl",
    "default_dedup_window",
)
_OPTIONAL_SETTINGS = ("render",)
_RENDER_FIELDS = {  # name: (lowest, highest)
    "timeout_ms": (1, 5_000),
    "max_chars": (1, MAX_BUILD),
}
_RULE_FIELDS = (
    "id",
    "description",
    "enabled",
    "event",
    "when",
    "customer",
    "template",
    "variants",
    "lane",
    "priority",
    "ttl",
    "dedup_window",
    "dedup_by_content",
    "sender_id",
    "allow_transliteration",
    "send_at",
    "strategy",
    "bandit",
    "follow_up",
    "trigger",
)
_FOLLOW_UP_FIELDS = ("after", "rule", "unless")
_UNLESS_FIELDS = ("event", "when", "match", "clicked")
_BANDIT_FIELDS = ("metric", "min_share", "every")
_CUSTOMER_FIELDS = ("segments_any", "segments_none", "attributes", "locale_in")
_VARIANT_FIELDS = ("name", "template", "weight")
_TEMPLATE_FIELDS = ("id", "description", "locales")

_ID = re.compile(r"^[a-z0-9_]+$")
_LOCALE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z]{2,4})?$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ALPHA_SENDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10}$")
_NUMERIC_SENDER = re.compile(r"^\+?\d{3,15}$")
_INT32 = (-(2**31), 2**31 - 1)
_SCALAR_KINDS = ("string", "int", "float", "bool")


# ---------------------------------------------------------------------------- public API


def load_ruleset(config_dir: str | Path, schema_dir: Path = SCHEMA_DIR) -> RuleSet:
    """Load and validate the rules and templates under `config_dir`.

    Called once at router start-up (and by `rassylka config validate`). Raises
    ConfigError listing every problem found; the pipeline must not start on a bad config.
    """
    return load_bundle(read_bundle(config_dir), schema_dir)


def validate(config_dir: str | Path, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Every problem in the rules and templates under `config_dir`; empty when they are fine."""
    try:
        load_ruleset(config_dir, schema_dir)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def read_bundle(config_dir: str | Path) -> dict[str, str]:
    """The rule-set files of `config_dir` as {'rules.yaml': text, 'templates/<id>.yaml': text}.

    Other files of `config/` (routes, limits) are not part of the bundle.
    """
    root = Path(config_dir)
    files: dict[str, str] = {}
    rules = root / RULES_FILE
    if rules.is_file():
        files[RULES_FILE] = rules.read_text(encoding="utf-8")
    for path in sorted((root / TEMPLATES_DIR).glob("*.yaml")):
        files[f"{TEMPLATES_DIR}/{path.name}"] = path.read_text(encoding="utf-8")
    return files


def load_bundle(files: Mapping[str, str | bytes], schema_dir: Path = SCHEMA_DIR) -> RuleSet:
    """Build a RuleSet from file texts keyed by path relative to `config/`.

    Used for hot reload: validate a new bundle completely, then swap it in; on ConfigError
    keep the running rule set. Raises ConfigError with every problem found.
    """
    texts = {
        name: data.decode("utf-8") if isinstance(data, bytes) else data
        for name, data in files.items()
    }
    builder = _Builder(_Schemas.load(schema_dir))
    ruleset = builder.build(texts)
    if builder.problems:
        raise ConfigError(builder.problems)
    assert ruleset is not None
    log.info(
        "loaded rule set %s: %d rules, %d templates",
        ruleset.version,
        len(ruleset.rules),
        len(ruleset.templates),
    )
    return ruleset


def parse_duration(value: Any) -> int | None:
    """Seconds in '30s', '15m', '6h' or '2d'; None when `value` is not such a duration."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if not match or int(match.group(1)) <= 0:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


# ---------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (the later one would win)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# ---------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class _FieldType:
    kinds: tuple[str, ...]  # string, int, float, bool, map, array, other
    nullable: bool
    avro: str


def _field_type(avro_type: Any) -> _FieldType:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    kinds: list[str] = []
    nullable = False
    for branch in branches:
        name = branch.get("type") if isinstance(branch, dict) else branch
        if name == "null":
            nullable = True
        elif name in ("string", "enum"):
            kinds.append("string")
        elif name in ("int", "long"):
            kinds.append("int")
        elif name in ("float", "double"):
            kinds.append("float")
        elif name == "boolean":
            kinds.append("bool")
        elif name in ("map", "array"):
            kinds.append(name)
        else:
            kinds.append("other")
    return _FieldType(tuple(kinds), nullable, json.dumps(avro_type))


_ATTRIBUTE_TYPE = _FieldType(("string",), False, '"string" (attribute)')


@dataclass
class _Schemas:
    fields: dict[str, dict[str, _FieldType]]
    schema_dir: Path

    @classmethod
    def load(cls, schema_dir: Path) -> _Schemas:
        fields: dict[str, dict[str, _FieldType]] = {}
        for name in (*EVENT_TYPES, PROFILE_SCHEMA):
            path = schema_dir / f"{name}.avsc"
            if path.is_file():
                raw = json.loads(path.read_text(encoding="utf-8"))
                fields[name] = {f["name"]: _field_type(f["type"]) for f in raw["fields"]}
        return cls(fields, schema_dir)


# ---------------------------------------------------------------------------- building


@dataclass
class _TemplateRefs:
    """Where a template reads `event.<field>`: (field, locale, line); and where it loops
    over or prints one: (field, 'loop' or 'print', locale, line)."""

    event_fields: list[tuple[str, str, int]] = field(default_factory=list)
    event_uses: list[tuple[str, str, str, int]] = field(default_factory=list)


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Builder:
    """One validation pass; `problems` collects every message."""

    def __init__(self, schemas: _Schemas) -> None:
        self.schemas = schemas
        self.problems: list[str] = []
        self.env = build_environment()
        self.broken_templates: set[str] = set()  # exist but invalid: rules need not say "not found"

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def build(self, texts: Mapping[str, str]) -> RuleSet | None:
        for name in (*EVENT_TYPES, PROFILE_SCHEMA):
            if name not in self.schemas.fields:
                self.problem(f"schemas/{name}.avsc: not found in {self.schemas.schema_dir}")
        rules_label = f"config/{RULES_FILE}"
        if RULES_FILE not in texts:
            self.problem(f"{rules_label}: file not found")
            return None
        before = len(self.problems)
        raw_rules = self._yaml(rules_label, texts[RULES_FILE])
        if len(self.problems) > before:
            return None  # line-numbered YAML error: anything more would be noise
        if not isinstance(raw_rules, Mapping):
            self.problem(f"{rules_label}: expected a mapping with 'settings:' and 'rules:'")
            return None
        for key in raw_rules:
            if key not in ("settings", "rules"):
                self.problem(
                    f"{rules_label}: unknown top-level field '{key}'{_suggest(str(key), ('settings', 'rules'))}"
                )
        settings = self._settings(rules_label, raw_rules.get("settings"))

        templates: dict[str, Template] = {}
        refs: dict[str, _TemplateRefs] = {}
        for name in sorted(texts):
            if name.startswith(f"{TEMPLATES_DIR}/"):
                self._template(name, texts[name], settings, templates, refs)

        rules = self._rules(rules_label, raw_rules.get("rules"), settings, templates, refs)
        if self.problems:
            return None
        by_event = {
            event: tuple(sorted((r for r in rules if r.event == event), key=lambda r: -r.priority))
            for event in EVENT_TYPES
        }
        used = {t for r in rules for t in r.templates}
        for unused in sorted(set(templates) - used):
            log.info("template %s is not used by any rule", unused)
        digest = hashlib.sha256()
        for name in sorted(texts):
            digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
        return RuleSet(
            settings=settings,
            rules=tuple(rules),
            templates=MappingProxyType(templates),
            version=digest.hexdigest()[:12],
            by_event=MappingProxyType(by_event),
        )

    def _yaml(self, label: str, text: str) -> Any:
        try:
            return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            self.problem(f"{label}: YAML error{line}: {exc.problem or exc.context}")
        except yaml.YAMLError as exc:
            self.problem(f"{label}: YAML error: {exc}")
        return None

    # -- settings ----------------------------------------------------------------------

    def _settings(self, label: str, raw: Any) -> RuleSettings:
        where = f"{label}: settings"
        fallback = RuleSettings(("ru", "en"), "ru", "INFO", 86400, 86400)
        if raw is None:
            self.problem(f"{where}: missing (needs {_join(_SETTINGS_FIELDS)})")
            return fallback
        if not isinstance(raw, Mapping):
            self.problem(f"{where}: expected a mapping")
            return fallback
        self._unknown_fields(where, raw, _SETTINGS_FIELDS + _OPTIONAL_SETTINGS)
        for key in _SETTINGS_FIELDS:
            if key not in raw:
                self.problem(f"{where}: missing field '{key}'")
        locales = raw.get("required_locales", list(fallback.required_locales))
        if (
            not isinstance(locales, list)
            or not locales
            or not all(isinstance(x, str) and _LOCALE.match(x) for x in locales)
        ):
            self.problem(
                f"{where}.required_locales: expected a non-empty list of locales like [ru, en], got {locales!r}"
            )
            locales = list(fallback.required_locales)
        default_locale = raw.get("default_locale", locales[0])
        if default_locale not in locales:
            self.problem(
                f"{where}.default_locale: {default_locale!r} is not one of required_locales ({_join(locales)})"
            )
        sender = raw.get("default_sender_id", fallback.default_sender_id)
        self._check_sender(f"{where}.default_sender_id", sender)
        ttl = self._duration(f"{where}.default_ttl", raw.get("default_ttl", "24h"))
        dedup = self._duration(
            f"{where}.default_dedup_window", raw.get("default_dedup_window", "24h")
        )
        return RuleSettings(
            required_locales=tuple(locales),
            default_locale=str(default_locale),
            default_sender_id=str(sender),
            default_ttl_s=ttl or fallback.default_ttl_s,
            default_dedup_window_s=dedup or fallback.default_dedup_window_s,
            render=self._render_limits(f"{where}.render", raw.get("render")),
        )

    def _render_limits(self, where: str, raw: Any) -> RenderLimits:
        """`settings.render`: {timeout_ms, max_chars}; absent keys keep their defaults."""
        defaults = RenderLimits()
        if raw is None:
            return defaults
        if not isinstance(raw, Mapping):
            self.problem(f"{where}: expected a mapping with {_join(_RENDER_FIELDS)}")
            return defaults
        self._unknown_fields(where, raw, tuple(_RENDER_FIELDS))
        values: dict[str, int] = {}
        for key, (low, high) in _RENDER_FIELDS.items():
            if key not in raw:
                continue
            value = raw[key]
            if not _is_int(value) or not low <= value <= high:
                self.problem(
                    f"{where}.{key}: expected a whole number from {low} to {high:,}, got {value!r}"
                )
            else:
                values[key] = value
        return RenderLimits(**{**defaults.__dict__, **values})

    # -- small checks ------------------------------------------------------------------

    def _unknown_fields(self, where: str, raw: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
        for key in raw:
            if key not in allowed:
                self.problem(f"{where}: unknown field '{key}'{_suggest(str(key), allowed)}")

    def _duration(self, where: str, value: Any) -> int | None:
        seconds = parse_duration(value)
        if seconds is None:
            self.problem(
                f"{where}: bad duration {value!r} (use a positive number and unit: 30s, 15m, 6h, 2d)"
            )
        elif seconds > _INT32[1]:
            self.problem(f"{where}: duration {value!r} is too long")
            return None
        return seconds

    def _check_sender(self, where: str, value: Any) -> None:
        if not isinstance(value, str) or not (
            _ALPHA_SENDER.match(value) or _NUMERIC_SENDER.match(value)
        ):
            self.problem(
                f"{where}: bad sender id {value!r} (alphanumeric, at most 11 characters, "
                "or a numeric short code / number of up to 15 digits)"
            )

    def _bool(self, where: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(f"{where}: expected true or false, got {value!r}")
            return default
        return value

    def _string_list(self, where: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            self.problem(f"{where}: expected a list of strings, got {value!r}")
            return ()
        return tuple(value)

    # -- conditions --------------------------------------------------------------------

    def _conditions(
        self, where: str, raw: Any, fields: dict[str, _FieldType] | None, event: str | None
    ) -> tuple[Condition, ...]:
        """Parse a condition mapping; `fields` None means a free-form attributes map."""
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            self.problem(f"{where}: expected a mapping of field: condition, got {raw!r}")
            return ()
        conditions: list[Condition] = []
        for path, spec in raw.items():
            at = f"{where}.{path}"
            ftype = self._condition_field(at, str(path), fields, event)
            if isinstance(spec, Mapping):
                if not spec:
                    self.problem(f"{at}: empty condition (operators: {_join(OPERATORS)})")
                operators = spec.items()
            elif isinstance(spec, list):
                self.problem(f"{at}: a list needs an operator, e.g. {{in: {spec!r}}}")
                continue
            else:
                operators = [("eq", spec)]
            for op, value in operators:
                if op not in OPERATORS:
                    self.problem(
                        f"{at}: unknown operator '{op}'{_suggest(str(op), OPERATORS)} (operators: {_join(OPERATORS)})"
                    )
                    continue
                if ftype is not None:
                    at_op = f"{at}.{op}" if isinstance(spec, Mapping) else at
                    self._check_operand(at_op, op, value, ftype)
                conditions.append(Condition(path=str(path), op=str(op), value=_freeze(value)))
        return tuple(conditions)

    def _condition_field(
        self, at: str, path: str, fields: dict[str, _FieldType] | None, event: str | None
    ) -> _FieldType | None:
        if fields is None:
            return _ATTRIBUTE_TYPE
        if (
            path.startswith("attributes.")
            and len(path) > len("attributes.")
            and "attributes" in fields
        ):
            return _ATTRIBUTE_TYPE
        if path == "attributes":
            self.problem(f"{at}: 'attributes' is a map; write a condition on attributes.<key>")
            return None
        if path in fields:
            return fields[path]
        self.problem(
            f"{at}: no field '{path}' in event {event}{_suggest(path, fields)} "
            f"(fields: {_join(fields)}, or attributes.<key>)"
        )
        return None

    def _check_operand(self, at: str, op: str, value: Any, ftype: _FieldType) -> None:
        if op == "exists":
            if not isinstance(value, bool):
                self.problem(f"{at}: exists takes true or false, got {value!r}")
            return
        if not any(k in _SCALAR_KINDS for k in ftype.kinds):
            self.problem(
                f"{at}: cannot test a field of type {ftype.avro} with '{op}' (only exists)"
            )
            return
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.problem(f"{at}: {op} takes a non-empty list, got {value!r}")
                return
            for item in value:
                self._check_scalar(at, op, item, ftype)
            return
        if op == "regex":
            if "string" not in ftype.kinds:
                self.problem(f"{at}: regex needs a string field, this one is {ftype.avro}")
            if not isinstance(value, str):
                self.problem(f"{at}: regex takes a string pattern, got {value!r}")
                return
            try:
                re.compile(value)
            except re.error as exc:
                self.problem(f"{at}: bad regex {value!r}: {exc}")
            return
        if op in ("gt", "gte", "lt", "lte") and value is None:
            self.problem(f"{at}: {op} cannot compare with null")
            return
        self._check_scalar(at, op, value, ftype)

    def _check_scalar(self, at: str, op: str, value: Any, ftype: _FieldType) -> None:
        if value is None:
            if not ftype.nullable:
                self.problem(
                    f"{at}: {op} null can never hold, the field is never null ({ftype.avro})"
                )
            return
        attribute = ftype is _ATTRIBUTE_TYPE
        fits = (
            (
                "string" in ftype.kinds
                and (isinstance(value, str) or (attribute and isinstance(value, int | float)))
            )
            or ("int" in ftype.kinds and _is_int(value))
            or ("float" in ftype.kinds and _is_number(value))
            or ("bool" in ftype.kinds and isinstance(value, bool))
        )
        if not fits:
            hint = (
                " (quote it: YAML reads yes/no/on/off as booleans)"
                if isinstance(value, bool)
                else ""
            )
            self.problem(f"{at}: {value!r} does not fit a field of type {ftype.avro}{hint}")

    # -- rules ---------------------------------------------------------------------------

    def _rules(
        self,
        label: str,
        raw: Any,
        settings: RuleSettings,
        templates: dict[str, Template],
        refs: dict[str, _TemplateRefs],
    ) -> list[Rule]:
        if raw is None:
            self.problem(f"{label}: missing 'rules:' list")
            return []
        if not isinstance(raw, list):
            self.problem(f"{label}: 'rules:' must be a list, got {type(raw).__name__}")
            return []
        rules: list[Rule] = []
        first_index: dict[str, int] = {}
        for index, item in enumerate(raw):
            rule_id = item.get("id") if isinstance(item, Mapping) else None
            where = f"{label}: rules[{index}]" + (
                f" ({rule_id})" if isinstance(rule_id, str) else ""
            )
            if not isinstance(item, Mapping):
                self.problem(f"{where}: expected a mapping, got {item!r}")
                continue
            if isinstance(rule_id, str) and rule_id in first_index:
                self.problem(
                    f"{where}: duplicate id '{rule_id}' (first at rules[{first_index[rule_id]}])"
                )
            elif isinstance(rule_id, str):
                first_index[rule_id] = index
            rule = self._rule(where, item, settings, templates, refs)
            if rule is not None and item.get("enabled", True) is True:
                rules.append(rule)
        by_id = {r.id: r for r in rules}
        for rule in rules:
            if rule.follow_up is None:
                continue
            target = by_id.get(rule.follow_up.rule)
            where = f"{label}: rule {rule.id}: follow_up.rule"
            if target is None:
                self.problem(f"{where}: no (enabled) rule {rule.follow_up.rule!r}")
            elif target.trigger != "follow_up" or target.event != rule.event:
                self.problem(f"{where}: rule {target.id} must say trigger: follow_up and be "
                             f"for event {rule.event}")
        return rules

    def _rule(
        self,
        where: str,
        raw: Mapping[str, Any],
        settings: RuleSettings,
        templates: dict[str, Template],
        refs: dict[str, _TemplateRefs],
    ) -> Rule | None:
        before = len(self.problems)
        self._unknown_fields(where, raw, _RULE_FIELDS)
        rule_id = raw.get("id")
        if rule_id is None:
            self.problem(f"{where}: missing field 'id'")
        elif not isinstance(rule_id, str) or not _ID.match(rule_id):
            self.problem(f"{where}: bad id {rule_id!r} (use lower-case letters, digits and _)")
        self._bool(f"{where}: enabled", raw.get("enabled"), True)

        event = raw.get("event")
        fields: dict[str, _FieldType] | None = None
        if event is None:
            self.problem(f"{where}: missing field 'event' (one of {_join(EVENT_TYPES)})")
        elif event not in EVENT_TYPES:
            self.problem(
                f"{where}: event: unknown event {event!r}{_suggest(str(event), EVENT_TYPES)} (events: {_join(EVENT_TYPES)})"
            )
        else:
            fields = self.schemas.fields.get(event)
        when: tuple[Condition, ...] = ()
        if fields is not None:
            when = self._conditions(f"{where}: when", raw.get("when"), fields, event)
        customer = self._customer(f"{where}: customer", raw.get("customer"))

        variants = self._variants(where, raw, templates)

        lane = raw.get("lane")
        if lane is None:
            self.problem(f"{where}: missing field 'lane' ({_join(LANES)})")
        elif lane not in LANES:
            self.problem(
                f"{where}: lane: unknown lane {lane!r}{_suggest(str(lane), LANES)} (lanes: {_join(LANES)})"
            )
        priority = raw.get("priority", 0)
        if not _is_int(priority) or not _INT32[0] <= priority <= _INT32[1]:
            self.problem(f"{where}: priority: expected an integer, got {priority!r}")
            priority = 0
        ttl = (
            self._duration(f"{where}: ttl", raw["ttl"]) if "ttl" in raw else settings.default_ttl_s
        )
        dedup = (
            self._duration(f"{where}: dedup_window", raw["dedup_window"])
            if "dedup_window" in raw
            else settings.default_dedup_window_s
        )
        sender = raw.get("sender_id", settings.default_sender_id)
        if "sender_id" in raw:
            self._check_sender(f"{where}: sender_id", sender)
        dedup_by_content = self._bool(
            f"{where}: dedup_by_content", raw.get("dedup_by_content"), False
        )
        translit = self._bool(
            f"{where}: allow_transliteration", raw.get("allow_transliteration"), False
        )
        send_at = raw.get("send_at")
        if send_at is not None and fields is not None:
            self._check_send_at(f"{where}: send_at", send_at, fields, str(event))
        bandit = self._bandit(where, raw, variants)
        follow_up = self._follow_up(where, raw.get("follow_up"), fields, str(event))
        trigger = raw.get("trigger", "event")
        if trigger not in ("event", "follow_up"):
            self.problem(f"{where}: trigger: expected event or follow_up, got {trigger!r}")

        if fields is not None:
            for variant in variants:
                if variant.template in refs:
                    self._check_event_refs(
                        where, variant.template, refs[variant.template], fields, str(event)
                    )
        if len(self.problems) > before:
            return None
        return Rule(
            id=str(rule_id),
            event=str(event),
            when=when,
            customer=customer,
            variants=variants,
            lane=str(lane),
            priority=int(priority),
            ttl_s=int(ttl or 0),
            dedup_window_s=int(dedup or 0),
            dedup_by_content=dedup_by_content,
            sender_id=str(sender),
            allow_transliteration=translit,
            send_at=send_at,
            bandit=bandit,
            follow_up=follow_up,
            trigger=str(trigger),
        )

    def _follow_up(self, where: str, raw: Any, fields: dict[str, _FieldType] | None,
                   event: str) -> FollowUp | None:
        """`follow_up: {after, rule, unless: {event, when, match, clicked}}`, or None."""
        if raw is None:
            return None
        where = f"{where}: follow_up"
        if not isinstance(raw, dict):
            self.problem(f"{where}: expected a mapping with {', '.join(_FOLLOW_UP_FIELDS)}")
            return None
        for key in raw:
            if key not in _FOLLOW_UP_FIELDS:
                self.problem(f"{where}: unknown field {key!r} (known: {', '.join(_FOLLOW_UP_FIELDS)})")
        after = self._duration(f"{where}.after", raw.get("after")) if "after" in raw else None
        if "after" not in raw:
            self.problem(f"{where}: missing field 'after' (a duration: 3d, 6h)")
        rule = raw.get("rule")
        if not isinstance(rule, str) or not rule:
            self.problem(f"{where}: missing field 'rule' (the id of a rule with trigger: follow_up)")
        unless = raw.get("unless") or {}
        if not isinstance(unless, dict):
            self.problem(f"{where}.unless: expected a mapping with {', '.join(_UNLESS_FIELDS)}")
            unless = {}
        for key in unless:
            if key not in _UNLESS_FIELDS:
                self.problem(f"{where}.unless: unknown field {key!r} (known: {', '.join(_UNLESS_FIELDS)})")
        cancel_event = unless.get("event")
        when: tuple[Condition, ...] = ()
        match: tuple[str, ...] = ()
        if cancel_event is not None:
            if cancel_event not in EVENT_TYPES:
                self.problem(f"{where}.unless.event: unknown event {cancel_event!r} "
                             f"(events: {_join(EVENT_TYPES)})")
            else:
                cancel_fields = self.schemas.fields.get(cancel_event)
                if cancel_fields is not None:
                    when = self._conditions(f"{where}.unless.when", unless.get("when"),
                                            cancel_fields, cancel_event)
                raw_match = unless.get("match") or []
                match = (raw_match,) if isinstance(raw_match, str) else tuple(raw_match)
                for name in match:
                    for kind, known in ((event, fields), (cancel_event, cancel_fields)):
                        if known is not None and name not in known:
                            self.problem(f"{where}.unless.match: {kind} has no field {name!r}")
        elif "when" in unless or "match" in unless:
            self.problem(f"{where}.unless: 'when' and 'match' need 'event'")
        clicked = self._bool(f"{where}.unless.clicked", unless.get("clicked"), False)
        if cancel_event is None and not clicked:
            self.problem(f"{where}.unless: say what cancels it (event, or clicked: true)")
        return FollowUp(after_s=int(after or 0), rule=str(rule or ""),
                        unless_event=cancel_event, unless_when=when, match=match,
                        unless_clicked=clicked)

    def _bandit(self, where: str, raw: dict[str, Any], variants: tuple[Variant, ...]) -> Bandit | None:
        """`strategy: bandit` (with optional `bandit: {metric, min_share, every}`), or None
        for fixed weights (`strategy: fixed`, the default)."""
        strategy = raw.get("strategy", "fixed")
        if strategy not in ("fixed", "bandit"):
            self.problem(f"{where}: strategy: expected fixed or bandit, got {strategy!r}")
            return None
        options = raw.get("bandit") or {}
        if strategy == "fixed":
            if "bandit" in raw:
                self.problem(f"{where}: bandit: only with strategy: bandit")
            return None
        if not isinstance(options, dict):
            self.problem(f"{where}: bandit: expected a mapping with {', '.join(_BANDIT_FIELDS)}")
            return None
        for key in options:
            if key not in _BANDIT_FIELDS:
                self.problem(f"{where}: bandit: unknown field {key!r} "
                             f"(known: {', '.join(_BANDIT_FIELDS)})")
        if len(variants) < 2:
            self.problem(f"{where}: strategy: bandit needs at least two variants")
        metric = options.get("metric", "click")
        if metric not in ("click", "conversion"):
            self.problem(f"{where}: bandit.metric: expected click or conversion, got {metric!r}")
        share = options.get("min_share", 0.05)
        if not _is_number(share) or not 0 < share < 1 / max(len(variants), 1):
            self.problem(f"{where}: bandit.min_share: a number above 0 and below 1/variants "
                         f"({1 / max(len(variants), 1):.2f}), got {share!r}")
        every = self._duration(f"{where}: bandit.every", options.get("every", "1h"))
        return Bandit(metric=str(metric), min_share=float(share) if _is_number(share) else 0.05,
                      every_s=int(every or 3600))

    def _customer(self, where: str, raw: Any) -> CustomerFilter:
        if raw is None:
            return CustomerFilter()
        if not isinstance(raw, Mapping):
            self.problem(f"{where}: expected a mapping ({_join(_CUSTOMER_FIELDS)})")
            return CustomerFilter()
        self._unknown_fields(where, raw, _CUSTOMER_FIELDS)
        return CustomerFilter(
            segments_any=self._string_list(f"{where}.segments_any", raw.get("segments_any")),
            segments_none=self._string_list(f"{where}.segments_none", raw.get("segments_none")),
            attributes=self._conditions(f"{where}.attributes", raw.get("attributes"), None, None),
            locale_in=self._string_list(f"{where}.locale_in", raw.get("locale_in")),
        )

    def _variants(
        self, where: str, raw: Mapping[str, Any], templates: dict[str, Template]
    ) -> tuple[Variant, ...]:
        has_template, has_variants = "template" in raw, "variants" in raw
        if has_template == has_variants:
            self.problem(f"{where}: needs exactly one of 'template:' or 'variants:'")
            return ()
        if has_template:
            variants = [Variant(DEFAULT_VARIANT, raw["template"], 1)]
            at = [f"{where}: template"]
        else:
            raw_variants = raw["variants"]
            if not isinstance(raw_variants, list) or not raw_variants:
                self.problem(
                    f"{where}: variants: expected a non-empty list of {{name, template, weight}}"
                )
                return ()
            variants, at = [], []
            names: set[str] = set()
            for i, item in enumerate(raw_variants):
                vwhere = f"{where}: variants[{i}]"
                if not isinstance(item, Mapping):
                    self.problem(f"{vwhere}: expected a mapping with name, template, weight")
                    continue
                self._unknown_fields(vwhere, item, _VARIANT_FIELDS)
                name, weight = item.get("name"), item.get("weight")
                if not isinstance(name, str) or not _ID.match(name):
                    self.problem(
                        f"{vwhere}.name: bad variant name {name!r} (use lower-case letters, digits and _)"
                    )
                elif name in names:
                    self.problem(f"{vwhere}.name: duplicate variant name '{name}'")
                else:
                    names.add(name)
                if not _is_number(weight) or weight <= 0:
                    self.problem(
                        f"{vwhere}.weight: weight must be a positive number, got {weight!r}"
                    )
                    weight = 1
                variants.append(Variant(str(name), item.get("template"), weight))
                at.append(f"{vwhere}.template")
        for variant, vwhere in zip(variants, at, strict=True):
            tid = variant.template
            if not isinstance(tid, str) or not _ID.match(tid):
                self.problem(f"{vwhere}: bad template id {tid!r}")
            elif tid not in templates and tid not in self.broken_templates:
                self.problem(
                    f"{vwhere}: template '{tid}' not found (no config/{TEMPLATES_DIR}/{tid}.yaml)"
                    f"{_suggest(tid, templates)}"
                )
        return tuple(variants)

    def _check_send_at(
        self, at: str, value: Any, fields: dict[str, _FieldType], event: str
    ) -> None:
        if not isinstance(value, str):
            self.problem(
                f"{at}: expected an event field name holding an ISO datetime, got {value!r}"
            )
            return
        if value.startswith("attributes.") and len(value) > len("attributes."):
            return
        if value not in fields:
            self.problem(
                f"{at}: no field '{value}' in event {event}{_suggest(value, fields)} (fields: {_join(fields)})"
            )
        elif "string" not in fields[value].kinds:
            self.problem(
                f"{at}: field '{value}' of event {event} is {fields[value].avro}, not an ISO datetime string"
            )

    def _check_event_refs(
        self,
        where: str,
        template_id: str,
        refs: _TemplateRefs,
        fields: dict[str, _FieldType],
        event: str,
    ) -> None:
        reported: set[str] = set()
        used_by = where.split(": ", 1)[1]
        for name, locale, line in refs.event_fields:
            if name in fields or name == "get" or name in reported:
                continue
            reported.add(name)
            self.problem(
                f"config/{TEMPLATES_DIR}/{template_id}.yaml: template {template_id}, locale {locale}, "
                f"line {line}: event.{name}: no field '{name}' in event {event}{_suggest(name, fields)} "
                f"(the template is used by {used_by})"
            )
        for name, use, locale, line in dict.fromkeys(refs.event_uses):
            problem = _use_problem("event", name, use, fields.get(name))
            if problem:
                self.problem(
                    f"config/{TEMPLATES_DIR}/{template_id}.yaml: template {template_id}, "
                    f"locale {locale}, line {line}: {problem} in event {event} "
                    f"(the template is used by {used_by})"
                )

    # -- templates -----------------------------------------------------------------------

    def _template(
        self,
        name: str,
        text: str,
        settings: RuleSettings,
        templates: dict[str, Template],
        refs: dict[str, _TemplateRefs],
    ) -> None:
        label = f"config/{name}"
        stem = Path(name).stem
        raw = self._yaml(label, text)
        if not isinstance(raw, Mapping):
            self.broken_templates.add(stem)
            if raw is None and text.strip() == "":
                self.problem(f"{label}: empty file")
            elif raw is not None:
                self.problem(f"{label}: expected a mapping with id, description, locales")
            return
        before = len(self.problems)
        self._unknown_fields(label, raw, _TEMPLATE_FIELDS)
        template_id = raw.get("id")
        if template_id != stem:
            self.problem(
                f"{label}: id {template_id!r} does not match the file name (expected '{stem}')"
            )
        if not _ID.match(stem):
            self.problem(
                f"{label}: bad template id '{stem}' (use lower-case letters, digits and _)"
            )
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.problem(f"{label}: description: expected a string")
        locales = raw.get("locales")
        if not isinstance(locales, Mapping) or not locales:
            self.problem(f"{label}: 'locales:' must map locale to text, e.g. ru: \"...\"")
            self.broken_templates.add(stem)
            return
        for required in settings.required_locales:
            if required not in locales:
                self.problem(
                    f"{label}: template {stem}: missing required locale '{required}' "
                    f"(required: {_join(settings.required_locales)})"
                )
        sources: dict[str, str] = {}
        compiled: dict[str, jinja2.Template] = {}
        template_refs = _TemplateRefs()
        for locale, source in locales.items():
            where = f"{label}: template {stem}, locale {locale}"
            if not isinstance(locale, str) or not _LOCALE.match(locale):
                self.problem(f"{label}: bad locale {locale!r} (e.g. ru, en, en-US)")
                continue
            if not isinstance(source, str) or not source.strip():
                self.problem(f"{where}: expected a non-empty text")
                continue
            try:
                ast = self.env.parse(source)
            except jinja2.TemplateSyntaxError as exc:
                self.problem(f"{where}, line {exc.lineno}: syntax error: {exc.message}")
                continue
            unsafe = check_template(ast)
            for line, message in unsafe:
                self.problem(f"{where}, line {line}: {message}")
            if not unsafe:
                try:
                    compiled[locale] = compile_source(self.env, stem, locale, source)
                except jinja2.TemplateSyntaxError as exc:
                    self.problem(f"{where}, line {exc.lineno}: syntax error: {exc.message}")
                    continue
            sources[locale] = source
            profile = self.schemas.fields.get(PROFILE_SCHEMA, {})
            for use in dict.fromkeys(field_uses(ast)):
                if use.root == "event":
                    template_refs.event_uses.append((use.field, use.use, locale, use.line))
                    continue
                kind = profile.get(use.field) if use.root == "customer" else _RULE_FIELD_TYPE
                problem = _use_problem(use.root, use.field, use.use, kind)
                if problem:
                    self.problem(f"{where}, line {use.line}: {problem}")
            try:
                undeclared = meta.find_undeclared_variables(ast) - CONTEXT_NAMES - JINJA_NAMES
            except jinja2.TemplateSyntaxError:  # an unknown filter, already reported
                undeclared = set()
            for unknown in sorted(undeclared):
                self.problem(
                    f"{where}, line {_first_line(ast, unknown)}: unknown variable '{unknown}'"
                    f"{_suggest(unknown, CONTEXT_NAMES)} "
                    f"(allowed: {_join(sorted(CONTEXT_NAMES))}; filters: {_join(HELPER_FILTERS)})"
                )
            for root, attr, line in _context_refs(ast):
                if root == "event":
                    template_refs.event_fields.append((attr, locale, line))
                elif root == "customer":
                    profile = self.schemas.fields.get(PROFILE_SCHEMA, {})
                    if profile and attr not in profile and attr != "get":
                        self.problem(
                            f"{where}, line {line}: customer.{attr}: no field '{attr}' in the customer "
                            f"profile{_suggest(attr, profile)} (fields: {_join(profile)})"
                        )
                elif root == "rule" and attr not in RULE_FIELDS:
                    self.problem(
                        f"{where}, line {line}: rule.{attr}: unknown (rule offers "
                        f"{_join(sorted(RULE_FIELDS))})"
                    )
        refs[stem] = template_refs
        if len(self.problems) > before:
            self.broken_templates.add(stem)
            return
        templates[stem] = Template(
            id=stem,
            description=str(description),
            locales=MappingProxyType(sources),
            compiled=MappingProxyType(compiled),
        )


_RULE_FIELD_TYPE = _FieldType(("string",), False, '"string" (rule)')


def _use_problem(root: str, name: str, use: str, kind: _FieldType | None) -> str | None:
    """Why looping over / printing `<root>.<name>` of type `kind` is refused, or None."""
    if kind is None:
        return None
    if use == "loop" and "string" in kind.kinds and not {"map", "array"} & set(kind.kinds):
        return (
            f"{root}.{name}: a loop over a text field iterates its characters "
            f"(field type {kind.avro})"
        )
    if use == "print" and {"map", "array"} & set(kind.kinds):
        return (
            f"{root}.{name}: prints a {'mapping' if 'map' in kind.kinds else 'list'} "
            f"({kind.avro}): its Python form would be sent; print one of its items"
        )
    return None


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _context_refs(ast: nodes.Template) -> Iterator[tuple[str, str, int]]:
    """(root, attribute, line) of every `event.x`, `event['x']`, `customer.x`, `rule.x`."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in CONTEXT_NAMES:
            continue
        if isinstance(node, nodes.Getattr):
            yield target.name, node.attr, node.lineno
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield target.name, node.arg.value, node.lineno


def _first_line(ast: nodes.Template, name: str) -> int:
    lines = [n.lineno for n in ast.find_all(nodes.Name) if n.name == name]
    return min(lines) if lines else 1
