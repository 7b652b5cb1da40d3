"""Load and validate `config/rules.yaml` and `config/templates/*.yaml` into a `RuleSet`.

Validation runs in two passes and collects every problem before giving up, so ops can fix
a whole config in one go. First the typed models of `pipeline.rules.schema` check each
file's structure (fields, types, enums, ranges, formats). Then the checks a model cannot
make on its own: condition fields against the Avro contract of the event
(`schemas/<event>.avsc`), template references (`event.x`, `customer.x`) against the
contracts of the events that use the template and of the customer profile, templates
named by rules, variants against each other, follow-up targets, bandit options, and the
Jinja code of every template (`template_check`, the sandbox's limits).

Every problem starts with the YAML file and line, then the path of the field:
`config/rules.yaml:42: rules[3] (order_shipped): when.status: unknown operator 'equals' ...`.

The same code validates a config folder (`load_ruleset`, `validate`) and a bundle of file
texts received at run time (`load_bundle`), e.g. from the `config.rules` topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes
from pydantic import BaseModel, ValidationError

from pipeline.avro import SCHEMA_DIR
from pipeline.errors import ConfigError
from pipeline.rules.model import (
    DEFAULT_VARIANT,
    EVENT_TYPES,
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
from pipeline.rules.schema import (
    ID,
    LOCALE,
    BanditModel,
    RuleModel,
    RulesFile,
    SettingsModel,
    TemplateFile,
    is_number,
    model_problems,
    parse_duration,
    suggest,
)
from pipeline.rules.template_check import JINJA_NAMES, check_template, field_uses

__all__ = ["load_bundle", "load_ruleset", "parse_duration", "read_bundle", "validate"]

log = logging.getLogger(__name__)

RULES_FILE = "rules.yaml"
TEMPLATES_DIR = "templates"
PROFILE_SCHEMA = "customer_profile"

_SCALAR_KINDS = ("string", "int", "float", "bool")
_FALLBACK_SETTINGS = RuleSettings(("ru", "en"), "ru", "INFO", 86400, 86400)


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


# ---------------------------------------------------------------------------- YAML


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
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

YamlPath = tuple[Any, ...]
"""Where a value sits in a YAML document: mapping keys and list indexes, e.g.
('rules', 3, 'when', 'status'); pydantic's `loc` has the same form."""


@dataclass
class _Doc:
    """One parsed YAML file: its label (`config/...`), data, and where each value starts."""

    label: str
    data: Any
    lines: dict[YamlPath, int]  # path -> 1-based line of its key (or list item)
    scalars: dict[YamlPath, tuple[str | None, int]]  # path -> (style, line) of a scalar value

    def line(self, path: YamlPath) -> int:
        """The line of `path`, or of its nearest ancestor in the file."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def text_line(self, path: YamlPath, line_in_text: int) -> int:
        """The file line of line `line_in_text` of the scalar at `path`: exact for `|`
        blocks; for folded and flow scalars (lines joined) the line the text starts on."""
        style, start = self.scalars.get(path, (None, self.line(path)))
        if style == "|":
            return start + line_in_text
        return start + 1 if style == ">" else start


def _index_nodes(node: yaml.Node | None, path: YamlPath, doc: _Doc, depth: int = 0) -> None:
    if node is None or depth > 64:  # deeper is an alias loop, or no config of ours
        return
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                inner = (*path, key.value)
                doc.lines.setdefault(inner, key.start_mark.line + 1)
                _index_nodes(value, inner, doc, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            inner = (*path, index)
            doc.lines.setdefault(inner, item.start_mark.line + 1)
            _index_nodes(item, inner, doc, depth + 1)
    else:
        doc.scalars[path] = (node.style, node.start_mark.line + 1)


def _parse_yaml(label: str, text: str) -> _Doc:
    """The data of `text` with the line of every path; raises yaml.YAMLError."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    doc = _Doc(label, data, {(): 1}, {})
    _index_nodes(node, (), doc)
    return doc


def _path_text(path: YamlPath, rules: Any = None) -> str:
    """`rules[3] (order_shipped): when.status` for ('rules', 3, 'when', 'status')."""
    head = ""
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        item = rules[path[1]] if isinstance(rules, list) and path[1] < len(rules) else None
        rule_id = item.get("id") if isinstance(item, Mapping) else None
        head = f"rules[{path[1]}]" + (f" ({rule_id})" if isinstance(rule_id, str) else "")
        path = path[2:]
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"{head}: {text}" if head and text else head or text


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
    """Where a template reads `event.<field>`: (field, locale, line in the file, line in
    the text); and where it loops over or prints one: (field, 'loop' or 'print', ...)."""

    event_fields: list[tuple[str, str, int, int]] = field(default_factory=list)
    event_uses: list[tuple[str, str, str, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Checked:
    """What the second pass parsed for one rule: its conditions (the models keep them as
    plain mappings; their meaning depends on the event's Avro fields)."""

    when: tuple[Condition, ...] = ()
    attributes: tuple[Condition, ...] = ()
    unless_when: tuple[Condition, ...] = ()


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Builder:
    """One validation pass; `problems` lists every message, by file and line."""

    def __init__(self, schemas: _Schemas) -> None:
        self.schemas = schemas
        self.found: list[tuple[str, int, str]] = []  # (file, line, message)
        self.env = build_environment()
        self.broken_templates: set[str] = set()  # exist but invalid: rules need not say "not found"
        self.rules_data: Any = None  # the `rules:` list as read, for rule ids in messages
        self.template_docs: dict[str, _Doc] = {}

    @property
    def problems(self) -> list[str]:
        return [text for _, _, text in sorted(self.found, key=lambda f: (f[0], f[1]))]

    def problem(self, doc: _Doc, path: YamlPath, message: str, line: int | None = None) -> None:
        """Record `message` about the value at `path` of `doc` (at `line` when given)."""
        line = line or doc.line(path)
        where = _path_text(path, self.rules_data if doc.label.endswith(RULES_FILE) else None)
        self.found.append((doc.label, line, f"{doc.label}:{line}: {where}: {message}"
                           if where else f"{doc.label}:{line}: {message}"))

    def build(self, texts: Mapping[str, str]) -> RuleSet | None:
        for name in (*EVENT_TYPES, PROFILE_SCHEMA):
            if name not in self.schemas.fields:
                self.found.append(("schemas", 0, f"schemas/{name}.avsc: not found in "
                                                 f"{self.schemas.schema_dir}"))
        rules_label = f"config/{RULES_FILE}"
        if RULES_FILE not in texts:
            self.found.append((rules_label, 0, f"{rules_label}: file not found"))
            return None
        doc = self._yaml(rules_label, texts[RULES_FILE])
        if doc is None:
            return None  # line-numbered YAML error: anything more would be noise
        self.rules_data = doc.data.get("rules") if isinstance(doc.data, Mapping) else None
        model = self._model(doc, RulesFile)
        if not isinstance(doc.data, Mapping):
            return None
        settings = self._settings(doc, model)

        templates: dict[str, Template] = {}
        refs: dict[str, _TemplateRefs] = {}
        for name in sorted(texts):
            if name.startswith(f"{TEMPLATES_DIR}/"):
                self._template(name, texts[name], settings, templates, refs)

        checked = self._check_rules(doc, templates, refs)
        if self.found or model is None:
            return None
        rules = [
            self._rule(rule, checked[index], settings)
            for index, rule in enumerate(model.rules)
            if rule.enabled
        ]
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

    def _yaml(self, label: str, text: str) -> _Doc | None:
        try:
            return _parse_yaml(label, text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            column = f" at column {mark.column + 1}" if mark else ""
            self.found.append((label, line, f"{label}:{line}: YAML error{column}: "
                                            f"{exc.problem or exc.context}"))
        except yaml.YAMLError as exc:
            self.found.append((label, 1, f"{label}:1: YAML error: {exc}"))
        return None

    def _model(self, doc: _Doc, model: type[BaseModel]) -> Any:
        """First pass: `doc` through its typed model; None (and problems) when it does not fit."""
        try:
            return model.model_validate(doc.data)
        except ValidationError as exc:
            for path, message, where in model_problems(model, exc):
                self.problem(doc, path, message, line=doc.line(where))
            return None

    # -- settings ----------------------------------------------------------------------

    def _settings(self, doc: _Doc, model: RulesFile | None) -> RuleSettings:
        raw = doc.data.get("settings")
        raw = raw if isinstance(raw, Mapping) else {}
        locales = raw.get("required_locales")
        usable = isinstance(locales, list) and bool(locales) and all(
            isinstance(x, str) and LOCALE.match(x) for x in locales
        )
        default_locale = raw.get("default_locale")
        if usable and isinstance(default_locale, str) and default_locale not in locales:
            self.problem(doc, ("settings", "default_locale"),
                         f"{default_locale!r} is not one of required_locales ({_join(locales)})")
        settings: SettingsModel | None = model.settings if model is not None else None
        if settings is None:
            try:
                settings = SettingsModel.model_validate(doc.data.get("settings"))
            except ValidationError:  # already reported: go on checking with defaults
                return replace(_FALLBACK_SETTINGS, required_locales=tuple(locales)
                               if usable else _FALLBACK_SETTINGS.required_locales)
        render = settings.render
        return RuleSettings(
            required_locales=tuple(settings.required_locales),
            default_locale=settings.default_locale,
            default_sender_id=settings.default_sender_id,
            default_ttl_s=settings.default_ttl,
            default_dedup_window_s=settings.default_dedup_window,
            render=RenderLimits(render.timeout_ms, render.max_chars) if render else RenderLimits(),
        )

    # -- conditions --------------------------------------------------------------------

    def _conditions(
        self, doc: _Doc, where: YamlPath, raw: Any, fields: dict[str, _FieldType] | None,
        event: str | None,
    ) -> tuple[Condition, ...]:
        """Parse a condition mapping; `fields` None means a free-form attributes map."""
        if not isinstance(raw, Mapping):
            return ()  # None, or not a mapping: the model said so
        conditions: list[Condition] = []
        for path, spec in raw.items():
            at = (*where, path)
            ftype = self._condition_field(doc, at, str(path), fields, event)
            if isinstance(spec, Mapping):
                if not spec:
                    self.problem(doc, at, f"empty condition (operators: {_join(OPERATORS)})")
                operators = spec.items()
            elif isinstance(spec, list):
                self.problem(doc, at, f"a list needs an operator, e.g. {{in: {spec!r}}}")
                continue
            else:
                operators = [("eq", spec)]
            for op, value in operators:
                if op not in OPERATORS:
                    self.problem(doc, at, f"unknown operator '{op}'{suggest(str(op), OPERATORS)} "
                                          f"(operators: {_join(OPERATORS)})",
                                 line=doc.line((*at, op)))
                    continue
                if ftype is not None:
                    at_op = (*at, op) if isinstance(spec, Mapping) else at
                    self._check_operand(doc, at_op, op, value, ftype)
                conditions.append(Condition(path=str(path), op=str(op), value=_freeze(value)))
        return tuple(conditions)

    def _condition_field(
        self, doc: _Doc, at: YamlPath, path: str, fields: dict[str, _FieldType] | None,
        event: str | None,
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
            self.problem(doc, at, "'attributes' is a map; write a condition on attributes.<key>")
            return None
        if path in fields:
            return fields[path]
        self.problem(doc, at, f"no field '{path}' in event {event}{suggest(path, fields)} "
                              f"(fields: {_join(fields)}, or attributes.<key>)")
        return None

    def _check_operand(self, doc: _Doc, at: YamlPath, op: str, value: Any, ftype: _FieldType) -> None:
        if op == "exists":
            if not isinstance(value, bool):
                self.problem(doc, at, f"exists takes true or false, got {value!r}")
            return
        if not any(k in _SCALAR_KINDS for k in ftype.kinds):
            self.problem(doc, at, f"cannot test a field of type {ftype.avro} with '{op}' "
                                  "(only exists)")
            return
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.problem(doc, at, f"{op} takes a non-empty list, got {value!r}")
                return
            for item in value:
                self._check_scalar(doc, at, op, item, ftype)
            return
        if op == "regex":
            if "string" not in ftype.kinds:
                self.problem(doc, at, f"regex needs a string field, this one is {ftype.avro}")
            if not isinstance(value, str):
                self.problem(doc, at, f"regex takes a string pattern, got {value!r}")
                return
            try:
                re.compile(value)
            except re.error as exc:
                self.problem(doc, at, f"bad regex {value!r}: {exc}")
            return
        if op in ("gt", "gte", "lt", "lte") and value is None:
            self.problem(doc, at, f"{op} cannot compare with null")
            return
        self._check_scalar(doc, at, op, value, ftype)

    def _check_scalar(self, doc: _Doc, at: YamlPath, op: str, value: Any, ftype: _FieldType) -> None:
        if value is None:
            if not ftype.nullable:
                self.problem(doc, at, f"{op} null can never hold, the field is never null "
                                      f"({ftype.avro})")
            return
        attribute = ftype is _ATTRIBUTE_TYPE
        fits = (
            (
                "string" in ftype.kinds
                and (isinstance(value, str) or (attribute and isinstance(value, int | float)))
            )
            or ("int" in ftype.kinds and _is_int(value))
            or ("float" in ftype.kinds and is_number(value))
            or ("bool" in ftype.kinds and isinstance(value, bool))
        )
        if not fits:
            hint = (
                " (quote it: YAML reads yes/no/on/off as booleans)"
                if isinstance(value, bool)
                else ""
            )
            self.problem(doc, at, f"{value!r} does not fit a field of type {ftype.avro}{hint}")

    # -- rules: second pass ------------------------------------------------------------

    def _check_rules(
        self, doc: _Doc, templates: dict[str, Template], refs: dict[str, _TemplateRefs]
    ) -> dict[int, _Checked]:
        """What the models cannot check of each rule; the conditions, by rule index."""
        raw_rules = doc.data.get("rules")
        if not isinstance(raw_rules, list):
            return {}
        checked: dict[int, _Checked] = {}
        first_index: dict[str, int] = {}
        for index, raw in enumerate(raw_rules):
            if not isinstance(raw, Mapping):
                continue
            rule_id = raw.get("id")
            if isinstance(rule_id, str) and rule_id in first_index:
                first = first_index[rule_id]
                self.problem(doc, ("rules", index), f"duplicate id '{rule_id}' (first at "
                             f"rules[{first}], line {doc.line(('rules', first))})")
            elif isinstance(rule_id, str):
                first_index[rule_id] = index
            checked[index] = self._check_rule(doc, ("rules", index), raw, templates, refs)
        self._check_follow_up_targets(doc, raw_rules)
        return checked

    def _check_rule(
        self,
        doc: _Doc,
        where: YamlPath,
        raw: Mapping[str, Any],
        templates: dict[str, Template],
        refs: dict[str, _TemplateRefs],
    ) -> _Checked:
        event = raw.get("event")
        fields = self.schemas.fields.get(event) if event in EVENT_TYPES else None
        when = self._conditions(doc, (*where, "when"), raw.get("when"), fields, event) \
            if fields is not None else ()
        customer = raw.get("customer")
        attributes = self._conditions(doc, (*where, "customer", "attributes"),
                                      customer.get("attributes"), None, None) \
            if isinstance(customer, Mapping) else ()
        used = self._check_variants(doc, where, raw, templates)
        send_at = raw.get("send_at")
        if isinstance(send_at, str) and fields is not None:
            self._check_send_at(doc, (*where, "send_at"), send_at, fields, str(event))
        self._check_bandit(doc, where, raw)
        unless_when = self._check_follow_up(doc, (*where, "follow_up"), raw.get("follow_up"),
                                            fields, str(event))
        if fields is not None:
            for template_id in dict.fromkeys(used):
                if template_id in refs:
                    self._check_event_refs(where, template_id, refs[template_id], fields,
                                           str(event))
        return _Checked(when=when, attributes=attributes, unless_when=unless_when)

    def _check_variants(
        self, doc: _Doc, where: YamlPath, raw: Mapping[str, Any], templates: dict[str, Template]
    ) -> list[str]:
        """Exactly one of template/variants, unique variant names, templates that exist;
        the ids of the templates the rule names."""
        has_template, has_variants = "template" in raw, "variants" in raw
        if has_template == has_variants:
            self.problem(doc, where, "needs exactly one of 'template:' or 'variants:'")
            return []
        named: list[tuple[YamlPath, Any]] = []
        if has_template:
            named.append(((*where, "template"), raw["template"]))
        elif isinstance(raw["variants"], list):
            names: set[str] = set()
            for i, item in enumerate(raw["variants"]):
                if not isinstance(item, Mapping):
                    continue
                name = item.get("name")
                if isinstance(name, str) and ID.match(name):
                    if name in names:
                        self.problem(doc, (*where, "variants", i, "name"),
                                     f"duplicate variant name '{name}'")
                    names.add(name)
                named.append(((*where, "variants", i, "template"), item.get("template")))
        used = []
        for at, template_id in named:
            if not isinstance(template_id, str) or not ID.match(template_id):
                continue  # the model said so
            used.append(template_id)
            if template_id not in templates and template_id not in self.broken_templates:
                self.problem(doc, at, f"template '{template_id}' not found (no config/"
                                      f"{TEMPLATES_DIR}/{template_id}.yaml)"
                                      f"{suggest(template_id, templates)}")
        return used

    def _check_bandit(self, doc: _Doc, where: YamlPath, raw: Mapping[str, Any]) -> None:
        """`bandit:` only with `strategy: bandit`, which needs two variants, each keeping
        `min_share` below an equal share."""
        strategy = raw.get("strategy", "fixed")
        if strategy == "fixed" and "bandit" in raw:
            self.problem(doc, (*where, "bandit"), "only with strategy: bandit")
        if strategy != "bandit":
            return
        variants = raw.get("variants")
        count = len(variants) if isinstance(variants, list) and "template" not in raw else 1
        if count < 2:
            self.problem(doc, (*where, "strategy"), "bandit needs at least two variants")
        options = raw.get("bandit")
        share = options.get("min_share") if isinstance(options, Mapping) else None
        if is_number(share) and 0 < share < 1 and share >= 1 / count:
            self.problem(doc, (*where, "bandit", "min_share"),
                         f"a number above 0 and below 1/variants ({1 / count:.2f}), got {share!r}")

    def _check_follow_up(
        self, doc: _Doc, where: YamlPath, raw: Any, fields: dict[str, _FieldType] | None,
        event: str,
    ) -> tuple[Condition, ...]:
        """What cancels a follow-up, checked against the events' fields; its conditions."""
        if not isinstance(raw, Mapping):
            return ()
        unless = raw.get("unless") or {}
        if not isinstance(unless, Mapping):
            return ()
        at = (*where, "unless") if "unless" in raw else where
        cancel_event = unless.get("event")
        when: tuple[Condition, ...] = ()
        if cancel_event is not None:
            if cancel_event not in EVENT_TYPES:
                return ()  # the model said so
            cancel_fields = self.schemas.fields.get(cancel_event)
            if cancel_fields is not None:
                when = self._conditions(doc, (*at, "when"), unless.get("when"), cancel_fields,
                                        cancel_event)
            raw_match = unless.get("match") or []
            match = [raw_match] if isinstance(raw_match, str) else raw_match
            for name in match if isinstance(match, list) else ():
                for kind, known in ((event, fields), (cancel_event, cancel_fields)):
                    if isinstance(name, str) and known is not None and name not in known:
                        self.problem(doc, (*at, "match"), f"{kind} has no field {name!r}")
        elif "when" in unless or "match" in unless:
            self.problem(doc, at, "'when' and 'match' need 'event'")
        elif unless.get("clicked") is not True:
            self.problem(doc, at, "say what cancels it (event, or clicked: true)")
        return when

    def _check_follow_up_targets(self, doc: _Doc, raw_rules: list[Any]) -> None:
        """Each follow-up names an enabled rule with `trigger: follow_up` for the same event."""
        enabled = {
            raw.get("id"): raw
            for raw in raw_rules
            if isinstance(raw, Mapping) and raw.get("enabled", True) is True
        }
        for index, raw in enumerate(raw_rules):
            follow_up = raw.get("follow_up") if isinstance(raw, Mapping) else None
            if raw.get("id") not in enabled or not isinstance(follow_up, Mapping):
                continue
            name = follow_up.get("rule")
            if not isinstance(name, str):
                continue
            target = enabled.get(name)
            at = ("rules", index, "follow_up", "rule")
            if target is None:
                self.problem(doc, at, f"no (enabled) rule {name!r}")
            elif (target.get("trigger", "event") != "follow_up"
                  or target.get("event") != raw.get("event")):
                self.problem(doc, at, f"rule {name} must say trigger: follow_up and be "
                                      f"for event {raw.get('event')}")

    def _check_send_at(
        self, doc: _Doc, at: YamlPath, value: str, fields: dict[str, _FieldType], event: str
    ) -> None:
        if value.startswith("attributes.") and len(value) > len("attributes."):
            return
        if value not in fields:
            self.problem(doc, at, f"no field '{value}' in event {event}{suggest(value, fields)} "
                                  f"(fields: {_join(fields)})")
        elif "string" not in fields[value].kinds:
            self.problem(doc, at, f"field '{value}' of event {event} is {fields[value].avro}, "
                                  "not an ISO datetime string")

    def _check_event_refs(
        self,
        where: YamlPath,
        template_id: str,
        refs: _TemplateRefs,
        fields: dict[str, _FieldType],
        event: str,
    ) -> None:
        doc = self.template_docs[template_id]
        used_by = _path_text(where, self.rules_data)
        reported: set[str] = set()
        for name, locale, line, text_line in refs.event_fields:
            if name in fields or name == "get" or name in reported:
                continue
            reported.add(name)
            self.problem(
                doc, (),
                f"template {template_id}, locale {locale}, line {text_line}: event.{name}: "
                f"no field '{name}' in event {event}{suggest(name, fields)} "
                f"(the template is used by {used_by})",
                line=line,
            )
        for name, use, locale, line, text_line in dict.fromkeys(refs.event_uses):
            problem = _use_problem("event", name, use, fields.get(name))
            if problem:
                self.problem(
                    doc, (),
                    f"template {template_id}, locale {locale}, line {text_line}: {problem} in "
                    f"event {event} (the template is used by {used_by})",
                    line=line,
                )

    # -- rules: records ----------------------------------------------------------------

    def _rule(self, rule: RuleModel, checked: _Checked, settings: RuleSettings) -> Rule:
        """The record of a rule both passes found valid."""
        if rule.template is not None:
            variants: tuple[Variant, ...] = (Variant(DEFAULT_VARIANT, rule.template, 1),)
        else:
            variants = tuple(Variant(v.name, v.template, v.weight) for v in rule.variants)
        customer = rule.customer
        bandit = None
        if rule.strategy == "bandit":
            options = rule.bandit or BanditModel()
            bandit = Bandit(metric=options.metric, min_share=options.min_share,
                            every_s=options.every)
        follow_up = None
        if rule.follow_up is not None:
            unless = rule.follow_up.unless
            follow_up = FollowUp(
                after_s=rule.follow_up.after,
                rule=rule.follow_up.rule,
                unless_event=unless.event if unless else None,
                unless_when=checked.unless_when,
                match=tuple(unless.match or ()) if unless else (),
                unless_clicked=bool(unless and unless.clicked),
            )
        return Rule(
            id=rule.id,
            event=rule.event,
            when=checked.when,
            customer=CustomerFilter(
                segments_any=tuple(customer.segments_any or ()),
                segments_none=tuple(customer.segments_none or ()),
                attributes=checked.attributes,
                locale_in=tuple(customer.locale_in or ()),
            ) if customer else CustomerFilter(),
            variants=variants,
            lane=rule.lane,
            priority=rule.priority,
            ttl_s=settings.default_ttl_s if rule.ttl is None else rule.ttl,
            dedup_window_s=settings.default_dedup_window_s
            if rule.dedup_window is None else rule.dedup_window,
            dedup_by_content=rule.dedup_by_content,
            sender_id=settings.default_sender_id if rule.sender_id is None else rule.sender_id,
            allow_transliteration=rule.allow_transliteration,
            send_at=rule.send_at,
            bandit=bandit,
            follow_up=follow_up,
            trigger=rule.trigger,
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
        before = len(self.found)
        doc = self._yaml(label, text)
        if doc is None or doc.data is None:
            self.broken_templates.add(stem)
            if doc is not None:
                self.problem(doc, (), "empty file")
            return
        self.template_docs[stem] = doc
        model = self._model(doc, TemplateFile)
        raw = doc.data
        if not isinstance(raw, Mapping):
            self.broken_templates.add(stem)
            return
        template_id = raw.get("id")
        if isinstance(template_id, str) and template_id != stem:
            self.problem(doc, (), f"id {template_id!r} does not match the file name "
                                  f"(expected '{stem}')", line=doc.line(("id",)))
        if not ID.match(stem):
            self.problem(doc, (), f"bad template id '{stem}' (use lower-case letters, digits "
                                  "and _)")
        locales = raw.get("locales")
        if not isinstance(locales, Mapping) or not locales:
            self.broken_templates.add(stem)
            return
        for required in settings.required_locales:
            if required not in locales:
                self.problem(doc, (), f"template {stem}: missing required locale "
                             f"'{required}' (required: {_join(settings.required_locales)})",
                             line=doc.line(("locales",)))
        sources: dict[str, str] = {}
        compiled: dict[str, jinja2.Template] = {}
        template_refs = _TemplateRefs()
        profile = self.schemas.fields.get(PROFILE_SCHEMA, {})
        for locale, source in locales.items():
            if not isinstance(locale, str) or not LOCALE.match(locale):
                continue  # the model said so
            if not isinstance(source, str) or not source.strip():
                continue
            path = ("locales", locale)

            def report(text_line: int, message: str, locale: str = locale,
                       path: YamlPath = path) -> None:
                self.problem(doc, (), f"template {stem}, locale {locale}, line {text_line}: "
                                      f"{message}", line=doc.text_line(path, text_line))

            try:
                ast = self.env.parse(source)
            except jinja2.TemplateSyntaxError as exc:
                report(exc.lineno, f"syntax error: {exc.message}")
                continue
            unsafe = check_template(ast)
            for line, message in unsafe:
                report(line, message)
            if not unsafe:
                try:
                    compiled[locale] = compile_source(self.env, stem, locale, source)
                except jinja2.TemplateSyntaxError as exc:
                    report(exc.lineno, f"syntax error: {exc.message}")
                    continue
            sources[locale] = source
            for use in dict.fromkeys(field_uses(ast)):
                if use.root == "event":
                    template_refs.event_uses.append(
                        (use.field, use.use, locale, doc.text_line(path, use.line), use.line))
                    continue
                kind = profile.get(use.field) if use.root == "customer" else _RULE_FIELD_TYPE
                problem = _use_problem(use.root, use.field, use.use, kind)
                if problem:
                    report(use.line, problem)
            try:
                undeclared = meta.find_undeclared_variables(ast) - CONTEXT_NAMES - JINJA_NAMES
            except jinja2.TemplateSyntaxError:  # an unknown filter, already reported
                undeclared = set()
            for unknown in sorted(undeclared):
                report(_first_line(ast, unknown),
                       f"unknown variable '{unknown}'{suggest(unknown, CONTEXT_NAMES)} "
                       f"(allowed: {_join(sorted(CONTEXT_NAMES))}; "
                       f"filters: {_join(HELPER_FILTERS)})")
            for root, attr, line in _context_refs(ast):
                if root == "event":
                    template_refs.event_fields.append(
                        (attr, locale, doc.text_line(path, line), line))
                elif root == "customer":
                    if profile and attr not in profile and attr != "get":
                        report(line, f"customer.{attr}: no field '{attr}' in the customer "
                                     f"profile{suggest(attr, profile)} (fields: {_join(profile)})")
                elif root == "rule" and attr not in RULE_FIELDS:
                    report(line, f"rule.{attr}: unknown (rule offers {_join(sorted(RULE_FIELDS))})")
        refs[stem] = template_refs
        if len(self.found) > before or model is None:
            self.broken_templates.add(stem)
            return
        templates[stem] = Template(
            id=stem,
            description=model.description,
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
