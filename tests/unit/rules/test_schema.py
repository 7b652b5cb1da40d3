"""The typed models of rules.yaml and templates: committed JSON Schemas never drift from
them, every shipped config file fits them, and problems name the file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.rules.loader import load_bundle
from pipeline.rules.schema import (
    RULES_SCHEMA,
    TEMPLATE_SCHEMA,
    RulesFile,
    TemplateFile,
    json_schemas,
)
from pipeline.settings import ROOT

CONFIG_DIRS = [ROOT / "config", ROOT / "tests" / "fixtures" / "config"]
RULE_FILES = [d / "rules.yaml" for d in CONFIG_DIRS]
TEMPLATE_FILES = sorted(p for d in CONFIG_DIRS for p in (d / "templates").glob("*.yaml"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_committed_json_schemas_are_what_the_models_generate():
    for name, text in json_schemas().items():
        committed = ROOT / "config" / "schema" / name
        assert committed.is_file(), f"run `rassylka config schema` to write {committed}"
        assert committed.read_text(encoding="utf-8") == text, (
            f"{committed} is stale: run `rassylka config schema`"
        )


def test_shipped_files_point_editors_at_the_schema():
    assert (ROOT / "config" / "rules.yaml").read_text(encoding="utf-8").startswith(
        f"# yaml-language-server: $schema=./schema/{RULES_SCHEMA}\n"
    )
    for path in (ROOT / "config" / "templates").glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith(
            f"# yaml-language-server: $schema=../schema/{TEMPLATE_SCHEMA}\n"
        ), path


@pytest.mark.parametrize("path", RULE_FILES, ids=_name)
def test_every_rules_file_fits_the_model(path: Path):
    RulesFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=_name)
def test_every_template_file_fits_the_model(path: Path):
    TemplateFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_every_file_fits_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")  # not a dependency: the models above suffice
    schemas = {name: json.loads(text) for name, text in json_schemas().items()}
    for path in RULE_FILES + TEMPLATE_FILES:
        schema = schemas[RULES_SCHEMA if path.name == "rules.yaml" else TEMPLATE_SCHEMA]
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)


RULES = """\
# yaml-language-server: $schema=./schema/rules.schema.json
settings:
  required_locales: [ru, en]
  default_locale: ru
  default_sender_id: SHOPRU
  default_ttl: 24h
  default_dedup_window: 24h

rules:
  - id: order_shipped
    event: order_status_changed
    when: {status: shipped}
    template: order_shipped
    lane: transactional

  # a comment, then a rule with several problems
  - id: order_paid
    event: order_status_changed
    when:
      status:
        equals: paid
    template: order_shipped
    lane: transactional
    ttl: soon
    dedup_by_contnet: true
"""

TEMPLATE = """\
# yaml-language-server: $schema=../schema/template.schema.json
id: order_shipped
description: test
locales:
  ru: "Заказ {{ event.order_id }} в пути"
  en: |
    Hello,
    your order {{ event.order_id }
    has shipped.
"""


def test_problems_name_file_line_and_field_path():
    with pytest.raises(ConfigError) as info:
        load_bundle({"rules.yaml": RULES, "templates/order_shipped.yaml": TEMPLATE})
    assert info.value.problems == [
        "config/rules.yaml:21: rules[1] (order_paid): when.status: unknown operator 'equals' "
        "(operators: eq, ne, in, not_in, gt, gte, lt, lte, exists, regex)",
        "config/rules.yaml:24: rules[1] (order_paid): ttl: bad duration 'soon' "
        "(use a positive number and unit: 30s, 15m, 6h, 2d)",
        "config/rules.yaml:25: rules[1] (order_paid): unknown field 'dedup_by_contnet' "
        "(did you mean 'dedup_by_content'?)",
        # a `|` block keeps its lines: line 2 of the text is line 8 of the file
        "config/templates/order_shipped.yaml:8: template order_shipped, locale en, line 2: "
        "syntax error: unexpected '}'",
    ]


def test_the_valid_part_loads_as_before():
    rules = RULES.split("  # a comment")[0]
    template = TEMPLATE.replace("{{ event.order_id }\n", "{{ event.order_id }}\n")
    ruleset = load_bundle({"rules.yaml": rules, "templates/order_shipped.yaml": template})
    (rule,) = ruleset.rules
    assert rule.ttl_s == 86400 and rule.sender_id == "SHOPRU" and rule.priority == 0
    assert rule.when[0].path == "status" and rule.when[0].op == "eq"
    assert ruleset.templates["order_shipped"].description == "test"
