"""Loading and validating rules.yaml and templates: every kind of problem, precisely worded,
each starting with the file and line (`config/rules.yaml:19: rules[0] (order_shipped): ...`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.rules.loader import load_bundle, load_ruleset, parse_duration, read_bundle, validate
from pipeline.rules.model import RenderLimits
from pipeline.settings import ROOT

SETTINGS = {
    "required_locales": ["ru", "en"],
    "default_locale": "ru",
    "default_sender_id": "SHOPRU",
    "default_ttl": "24h",
    "default_dedup_window": "24h",
}


def shipped_rule() -> dict:
    return {
        "id": "order_shipped",
        "event": "order_status_changed",
        "when": {"status": "shipped", "amount_minor": {"gte": 100000}},
        "template": "order_shipped",
        "lane": "transactional",
        "priority": 10,
        "ttl": "6h",
    }


def shipped_template() -> dict:
    return {
        "id": "order_shipped",
        "description": "test",
        "locales": {
            "ru": "{{ customer.first_name or 'Здравствуйте' }}, заказ {{ event.order_id }} в пути",
            "en": "{{ customer.first_name or 'Hello' }}, order {{ event.order_id }} shipped",
        },
    }


def bundle(
    rules: list[dict] | None = None, templates: list[dict] | None = None, settings=None
) -> dict:
    files = {
        "rules.yaml": yaml.safe_dump(
            {
                "settings": settings or SETTINGS,
                "rules": rules if rules is not None else [shipped_rule()],
            },
            allow_unicode=True,
            sort_keys=False,
        )
    }
    for template in templates if templates is not None else [shipped_template()]:
        files[f"templates/{template['id']}.yaml"] = yaml.safe_dump(template, allow_unicode=True)
    return files


def problems_of(files: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_bundle(files)
    assert info.value.reason == "config_error"
    return info.value.problems


def test_shipped_config_validates_with_zero_problems():
    assert validate(ROOT / "config") == []
    ruleset = load_ruleset(ROOT / "config")
    assert {"order_shipped", "payment_due_reminder", "promotion_discount"} <= {
        r.id for r in ruleset.rules
    }
    promo = ruleset.rule("promotion_discount")
    assert promo.lane == "marketing" and promo.ttl_s == 2 * 86400 and len(promo.variants) == 2
    for rule in ruleset.rules:
        if rule.event != "promotion":
            assert rule.lane == "transactional"
    payment = ruleset.rule("payment_due_reminder")
    assert payment.priority == max(r.priority for r in ruleset.rules)
    # every template is compiled once, in every required locale
    for template in ruleset.templates.values():
        assert set(template.compiled) >= {"ru", "en"}
    for tid in ("promo_discount_a", "promo_discount_b"):
        assert ruleset.templates[tid].locales["ru"].rstrip().endswith("Отписка: STOP")
        assert ruleset.templates[tid].locales["en"].rstrip().endswith("Reply STOP to opt out")


def test_minimal_bundle_loads_and_defaults_apply():
    ruleset = load_bundle(bundle())
    rule = ruleset.rule("order_shipped")
    assert rule.ttl_s == 6 * 3600
    assert rule.dedup_window_s == 86400
    assert rule.sender_id == "SHOPRU"
    assert rule.variants[0].name == "default" and rule.variants[0].template == "order_shipped"
    assert ruleset.rules_for("order_status_changed") == (rule,)
    assert len(ruleset.version) == 12


def test_read_bundle_then_load_bundle_equals_load_ruleset():
    files = read_bundle(ROOT / "config")
    assert "rules.yaml" in files and "templates/order_shipped.yaml" in files
    assert load_bundle(files).version == load_ruleset(ROOT / "config").version


def test_unknown_rule_field_is_named_with_suggestion():
    rule = shipped_rule()
    rule["tempalte"] = rule.pop("template")
    problems = problems_of(bundle([rule]))
    assert (
        "config/rules.yaml:19: rules[0] (order_shipped): unknown field 'tempalte' (did you mean 'template'?)"
        in problems
    )


def test_rule_index_is_reported():
    second = shipped_rule() | {"id": "order_shipped_vip", "tempalte": "order_shipped"}
    del second["template"]
    problems = problems_of(bundle([shipped_rule(), second]))
    assert any(
        p.startswith("config/rules.yaml:29: rules[1] (order_shipped_vip): unknown field 'tempalte'")
        for p in problems
    )


def test_condition_on_unknown_event_field_lists_fields():
    rule = shipped_rule()
    rule["when"] = {"stauts": "shipped"}
    (problem,) = problems_of(bundle([rule]))
    assert problem.startswith(
        "config/rules.yaml:13: rules[0] (order_shipped): when.stauts: no field 'stauts' in event "
        "order_status_changed (did you mean 'status'?) (fields: event_id, customer_id,"
    )
    assert "tracking_url" in problem and "attributes.<key>" in problem


def test_attribute_conditions_are_allowed_but_bare_attributes_is_not():
    rule = shipped_rule()
    rule["when"] = {"attributes.channel": "app", "attributes": {"exists": True}}
    (problem,) = problems_of(bundle([rule]))
    assert (
        "when.attributes: 'attributes' is a map; write a condition on attributes.<key>" in problem
    )


def test_unknown_operator():
    rule = shipped_rule()
    rule["when"] = {"amount_minor": {"gtee": 5}}
    (problem,) = problems_of(bundle([rule]))
    assert "when.amount_minor: unknown operator 'gtee' (did you mean 'gte'?)" in problem
    assert "operators: eq, ne, in, not_in, gt, gte, lt, lte, exists, regex" in problem


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (
            {"amount_minor": {"gte": "1000"}},
            "when.amount_minor.gte: '1000' does not fit a field of type \"long\"",
        ),
        ({"status": True}, 'when.status: True does not fit a field of type "string" (quote it'),
        ({"status": {"in": []}}, "when.status.in: in takes a non-empty list"),
        ({"status": ["a", "b"]}, "when.status: a list needs an operator, e.g. {in: ['a', 'b']}"),
        ({"status": {"regex": "(unclosed"}}, "when.status.regex: bad regex '(unclosed'"),
        (
            {"tracking_url": {"exists": "yes"}},
            "when.tracking_url.exists: exists takes true or false",
        ),
        ({"status": None}, "when.status: eq null can never hold"),
        ({"attributes.tier": {"gt": None}}, "when.attributes.tier.gt: gt cannot compare with null"),
    ],
)
def test_condition_values_are_checked_against_the_schema(when, expected):
    rule = shipped_rule()
    rule["when"] = when
    problems = problems_of(bundle([rule]))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("bad", ["6 hours", "0m", "6H", 360, "-1d", ""])
def test_bad_duration(bad):
    rule = shipped_rule()
    rule["ttl"] = bad
    (problem,) = problems_of(bundle([rule]))
    assert problem == (
        f"config/rules.yaml:19: rules[0] (order_shipped): ttl: bad duration {bad!r} "
        "(use a positive number and unit: 30s, 15m, 6h, 2d)"
    )


def test_parse_duration():
    assert parse_duration("30s") == 30
    assert parse_duration("15m") == 900
    assert parse_duration("6h") == 21600
    assert parse_duration("2d") == 172800
    assert parse_duration("2w") is None
    assert parse_duration(30) is None


def test_duplicate_id():
    problems = problems_of(bundle([shipped_rule(), shipped_rule()]))
    assert (
        "config/rules.yaml:20: rules[1] (order_shipped): duplicate id 'order_shipped' "
        "(first at rules[0], line 10)"
        in problems
    )


def test_unknown_lane_and_event():
    rule = shipped_rule() | {"lane": "promo", "event": "order_changed"}
    problems = problems_of(bundle([rule]))
    assert any("rules[0] (order_shipped): lane: unknown lane 'promo'" in p for p in problems)
    assert any(
        "rules[0] (order_shipped): event: unknown event 'order_changed' (did you mean 'order_status_changed'?)"
        in p
        for p in problems
    )


def test_bad_id_sender_priority_and_flags():
    rule = shipped_rule() | {
        "id": "Order-Shipped",
        "sender_id": "MY SHOP LIMITED",
        "priority": "high",
        "dedup_by_content": "no",
    }
    problems = problems_of(bundle([rule]))
    text = "\n".join(problems)
    assert "bad id 'Order-Shipped'" in text
    assert "sender_id: bad sender id 'MY SHOP LIMITED' (alphanumeric, at most 11 characters" in text
    assert "priority: expected an integer, got 'high'" in text
    assert "dedup_by_content: expected true or false, got 'no'" in text


def test_weights_must_be_positive_and_variant_names_unique():
    rule = shipped_rule()
    del rule["template"]
    rule["variants"] = [
        {"name": "a", "template": "order_shipped", "weight": 0},
        {"name": "a", "template": "order_shipped", "weight": -3},
        {"name": "c", "template": "order_shipped", "weight": "70%"},
    ]
    problems = problems_of(bundle([rule]))
    assert (
        "config/rules.yaml:22: rules[0] (order_shipped): variants[0].weight: weight must be a positive number, got 0"
        in problems
    )
    assert (
        "config/rules.yaml:23: rules[0] (order_shipped): variants[1].name: duplicate variant name 'a'"
        in problems
    )
    assert (
        "config/rules.yaml:25: rules[0] (order_shipped): variants[1].weight: weight must be a positive number, got -3"
        in problems
    )
    assert (
        "config/rules.yaml:28: rules[0] (order_shipped): variants[2].weight: weight must be a positive number, got '70%'"
        in problems
    )


def test_template_and_variants_are_exclusive():
    rule = shipped_rule() | {"variants": [{"name": "a", "template": "order_shipped", "weight": 1}]}
    problems = problems_of(bundle([rule]))
    assert (
        "config/rules.yaml:10: rules[0] (order_shipped): needs exactly one of 'template:' or 'variants:'"
        in problems
    )


def test_template_not_found():
    rule = shipped_rule() | {"template": "order_shiped"}
    (problem,) = problems_of(bundle([rule]))
    assert problem == (
        "config/rules.yaml:16: rules[0] (order_shipped): template: template 'order_shiped' not found "
        "(no config/templates/order_shiped.yaml) (did you mean 'order_shipped'?)"
    )


def test_template_missing_required_locale():
    template = shipped_template()
    del template["locales"]["en"]
    problems = problems_of(bundle(templates=[template]))
    assert (
        "config/templates/order_shipped.yaml:3: template order_shipped: missing required locale 'en' "
        "(required: ru, en)" in problems
    )


def test_template_syntax_error_names_template_locale_and_line():
    template = shipped_template()
    template["locales"]["en"] = "Hello,\nyour order {{ event.order_id }\nshipped"
    problems = problems_of(bundle(templates=[template]))
    (problem,) = [p for p in problems if "syntax error" in p]
    assert problem.startswith(
        "config/templates/order_shipped.yaml:4: template order_shipped, locale en, line 2: syntax error:"
    )


def test_unknown_filter_is_refused():
    template = shipped_template()
    template["locales"]["ru"] = "{{ event.amount_minor | rubles }}"
    problems = problems_of(bundle(templates=[template]))
    assert any(
        "locale ru, line 1: filter 'rubles' is not allowed (filters: abs, capitalize," in p
        for p in problems
    ), problems


def test_template_unknown_variable():
    template = shipped_template()
    template["locales"]["ru"] = "Заказ {{ event.order_id }}\n{{ evnt.tracking_url }} {{ now }}"
    problems = problems_of(bundle(templates=[template]))
    assert (
        "config/templates/order_shipped.yaml:5: template order_shipped, locale ru, line 2: unknown variable "
        "'evnt' (did you mean 'event'?) (allowed: customer, event, rule; filters: money, date, datetime)"
        in problems
    )
    assert any("unknown variable 'now'" in p for p in problems)


def test_template_field_references_are_checked_against_schemas():
    template = shipped_template()
    template["locales"]["ru"] = "{{ customer.firstname }} {{ event.trackingurl }} {{ rule.secret }}"
    problems = problems_of(bundle(templates=[template]))
    text = "\n".join(problems)
    assert (
        "template order_shipped, locale ru, line 1: customer.firstname: no field 'firstname' in the "
        "customer profile (did you mean 'first_name'?)" in text
    )
    assert (
        "template order_shipped, locale ru, line 1: event.trackingurl: no field 'trackingurl' in event "
        "order_status_changed (did you mean 'tracking_url'?) (the template is used by rules[0] (order_shipped))"
        in text
    )
    assert "rule.secret: unknown (rule offers id, lane, priority, sender_id)" in text


def test_template_id_must_match_file_name():
    files = bundle()
    files["templates/order_shipped.yaml"] = files["templates/order_shipped.yaml"].replace(
        "id: order_shipped", "id: shipped"
    )
    problems = problems_of(files)
    assert (
        "config/templates/order_shipped.yaml:2: id 'shipped' does not match the file name (expected 'order_shipped')"
        in problems
    )


def test_yaml_errors_and_duplicate_keys_have_line_numbers():
    files = bundle()
    files["rules.yaml"] = files["rules.yaml"] + "  - id: [unclosed\n"
    (problem,) = problems_of(files)
    assert problem.startswith("config/rules.yaml:20: YAML error at column 3:")

    files = bundle()
    files["templates/order_shipped.yaml"] = (
        "id: order_shipped\nid: again\nlocales: {ru: a, en: b}\n"
    )
    (problem,) = problems_of(files)
    assert (
        problem
        == "config/templates/order_shipped.yaml:2: YAML error at column 1: duplicate key 'id'"
    )


def test_settings_are_validated():
    settings = SETTINGS | {"default_locale": "de", "default_ttl": "forever", "colour": "red"}
    problems = problems_of(bundle(settings=settings))
    text = "\n".join(problems)
    assert "config/rules.yaml:9: settings: unknown field 'colour'" in text
    assert "config/rules.yaml:5: settings.default_locale: 'de' is not one of required_locales (ru, en)" in text
    assert "config/rules.yaml:7: settings.default_ttl: bad duration 'forever'" in text


def test_send_at_must_name_a_string_field():
    problems = problems_of(bundle([shipped_rule() | {"send_at": "amount_minor"}]))
    assert problems == [
        "config/rules.yaml:20: rules[0] (order_shipped): send_at: field 'amount_minor' of event "
        'order_status_changed is "long", not an ISO datetime string'
    ]
    problems = problems_of(bundle([shipped_rule() | {"send_at": "ship_at"}]))
    assert problems[0].startswith(
        "config/rules.yaml:20: rules[0] (order_shipped): send_at: no field 'ship_at'"
    )
    assert load_bundle(bundle([shipped_rule() | {"send_at": "attributes.ship_at"}]))


def test_customer_filter_is_validated():
    rule = shipped_rule() | {
        "customer": {
            "segment_any": ["vip"],
            "locale_in": "ru",
            "attributes": {"tier": {"oneof": ["a"]}},
        }
    }
    problems = problems_of(bundle([rule]))
    text = "\n".join(problems)
    assert ":21: rules[0] (order_shipped): customer: unknown field 'segment_any' (did you mean 'segments_any'?)" in text
    assert ":23: rules[0] (order_shipped): customer.locale_in: expected a list of strings, got 'ru'" in text
    assert ":26: rules[0] (order_shipped): customer.attributes.tier: unknown operator 'oneof'" in text


def test_all_problems_are_collected_at_once(tmp_path: Path):
    rule = shipped_rule() | {"lane": "fast", "ttl": "soon", "template": "missing"}
    rule["when"] = {"stauts": "x"}
    template = shipped_template()
    del template["locales"]["en"]
    for name, text in bundle([rule], [template]).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    problems = validate(tmp_path)
    assert len(problems) == 5, problems
    with pytest.raises(ConfigError) as info:
        load_ruleset(tmp_path)
    assert info.value.problems == problems


def test_missing_rules_file(tmp_path: Path):
    assert validate(tmp_path) == ["config/rules.yaml: file not found"]


def test_disabled_rule_is_validated_but_not_loaded():
    ruleset = load_bundle(bundle([shipped_rule() | {"enabled": False}]))
    assert ruleset.rules == ()
    problems = problems_of(bundle([shipped_rule() | {"enabled": False, "lane": "x"}]))
    assert any("unknown lane 'x'" in p for p in problems)


# ---------------------------------------------------------------------------- hostile templates
# `rules validate` refuses what would stall the router, build huge values or send Jinja
# and Python internals as SMS text, naming the file, template, locale and line.

HOSTILE = [
    (
        "{% for a in event.order_id %}{% for b in event.order_id %}"
        "{% for c in event.order_id %}{% endfor %}{% endfor %}{% endfor %}",
        ["loops nested 3 deep (at most 2): too slow to render",
         "event.order_id: a loop over a text field iterates its characters"],
    ),
    ('{{ "%02000000d" % 1 }}', ["the %-format field '%02000000d' is 2,000,000 characters wide"]),
    ('{{ "%099999999d" % 1 }}', ["is 99,999,999 characters wide (limit 100)"]),
    ('{{ "%099999999d"|format(1) }}', ["is 99,999,999 characters wide (limit 100)"]),
    ("{{ '{:099999999}'.format(1) }}", ["is 99,999,999 characters wide (limit 100)"]),
    ("{{ '{!r}'.format(event) }}", ["!r in a format prints a Python representation"]),
    ("{{ self }}", ["'self' is Jinja's template object"]),
    ("{{ 'x' ~ self.__class__ }}", ["'self' is Jinja's template object",
                                     "attribute '__class__' is Python-internal"]),
    ("{% for x in event.attributes %}{{ loop }}{{ loop.__class__ }}{{ loop.cycle('a') }}"
     "{% endfor %}",
     ["use 'loop' only as loop.<field>", "attribute '__class__' is Python-internal",
      "loop.cycle is not available"]),
    ("{{ cycler('a') }}{{ joiner() }}{{ namespace() }}{{ lipsum() }}{{ range(10 ** 9)|join }}",
     ["'cycler' is a Jinja built-in", "'joiner' is a Jinja built-in",
      "'namespace' is a Jinja built-in", "'lipsum' is a Jinja built-in",
      "'range' is a Jinja built-in"]),
    ("{{ event }}", ["prints the whole 'event'"]),
    ("{{ event.attributes }}", ["event.attributes: prints a mapping"]),
    ("{{ customer.segments }}", ["customer.segments: prints a list"]),
    ("{% for c in customer.first_name %}{% endfor %}",
     ["customer.first_name: a loop over a text field iterates its characters"]),
    ("{{ 'x' * 100000000 }}", ["repetition builds 100,000,000 characters"]),
    ("{{ 10 ** 100000 }}", ["power 100000 exceeds 64"]),
    ("{{ event.order_id.center(99) }}", ["calling .center() is not allowed"]),
    ("{{ event.order_id|center(99) }}", ["filter 'center' is not allowed"]),
    ("{{ event|pprint }}", ["filter 'pprint' is not allowed"]),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", ["{% macro %} is not allowed"]),
    ("{% for x in event.attributes recursive %}{{ loop(x) }}{% endfor %}",
     ["recursive loops are not allowed"]),
]


@pytest.mark.parametrize(("source", "expected"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_templates_are_refused_with_file_locale_and_line(source, expected):
    template = shipped_template()
    template["locales"]["en"] = "Order {{ event.order_id }} shipped.\n" + source
    started = time.monotonic()
    problems = problems_of(bundle(templates=[template]))
    assert time.monotonic() - started < 2.0  # nothing is built or run while validating
    # a quoted scalar: the file line is where the text starts; the template line is exact
    where = "config/templates/order_shipped.yaml:4: template order_shipped, locale en, line 2: "
    for text in expected:
        assert any(p.startswith(where) and text in p for p in problems), (text, problems)


def test_a_loop_over_an_event_text_field_names_the_rule():
    template = shipped_template()
    template["locales"]["ru"] = "{% for c in event.status %}{{ c }}{% endfor %}"
    problems = problems_of(bundle(templates=[template]))
    assert (
        "config/templates/order_shipped.yaml:5: template order_shipped, locale ru, line 1: "
        "event.status: a loop over a text field iterates its characters (field type "
    ) in problems[0]
    assert problems[0].endswith("(the template is used by rules[0] (order_shipped))")


def test_rules_validate_command_refuses_the_reported_templates(tmp_path: Path):
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    path = config / "templates" / "order_shipped.yaml"
    template = yaml.safe_load(path.read_text(encoding="utf-8"))
    template["locales"]["ru"] = (
        "{% for a in event.order_id %}{% for b in event.order_id %}{% for c in event.order_id %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    )
    template["locales"]["en"] = 'Order\n{{ "%02000000d" % 1 }}\n{{ self }}'
    path.write_text(yaml.safe_dump(template, allow_unicode=True), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "rules", "validate", "--config-dir", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    out = " ".join(done.stdout.split())
    assert done.returncode == 1, out
    for text in (
        "template order_shipped, locale ru, line 1: loops nested 3 deep",
        "template order_shipped, locale en, line 2: the %-format field '%02000000d'",
        "template order_shipped, locale en, line 3: 'self' is Jinja's template object",
    ):
        assert text in out, out


def test_render_limits_are_settings_with_defaults():
    assert load_bundle(bundle()).settings.render == RenderLimits(timeout_ms=50, max_chars=1000)
    tuned = SETTINGS | {"render": {"timeout_ms": 20, "max_chars": 480}}
    assert load_bundle(bundle(settings=tuned)).settings.render == RenderLimits(20, 480)
    bad = SETTINGS | {"render": {"timeout_ms": 0, "max_chars": "lots", "depth": 3}}
    text = "\n".join(problems_of(bundle(settings=bad)))
    assert "config/rules.yaml:12: settings.render: unknown field 'depth'" in text
    assert "config/rules.yaml:10: settings.render.timeout_ms: expected a whole number from 1 to 5,000, got 0" in text
    assert "config/rules.yaml:11: settings.render.max_chars: expected a whole number from 1 to 100,000, got 'lots'" in text


def _two_variants(**extra) -> dict:
    rule = shipped_rule() | extra
    rule.pop("template")
    rule["variants"] = [{"name": "a", "template": "order_shipped", "weight": 1},
                        {"name": "b", "template": "order_shipped", "weight": 1}]
    return rule


def test_strategy_bandit_loads_with_its_options_and_fixed_is_the_default():
    ruleset = load_bundle(bundle([_two_variants(strategy="bandit",
                                                bandit={"metric": "conversion", "every": "30m"})]))
    rule = ruleset.rules[0]
    assert rule.bandit is not None and rule.bandit.metric == "conversion"
    assert rule.bandit.every_s == 1800 and rule.bandit.min_share == 0.05
    assert load_bundle(bundle([_two_variants()])).rules[0].bandit is None


@pytest.mark.parametrize("extra, expected", [
    ({"strategy": "greedy"}, "strategy: unknown strategy 'greedy' (known: fixed, bandit)"),
    ({"bandit": {"metric": "click"}}, "only with strategy: bandit"),
    ({"strategy": "bandit", "bandit": {"metric": "opens"}}, "bandit.metric"),
    ({"strategy": "bandit", "bandit": {"min_share": 0.6}}, "bandit.min_share"),
    ({"strategy": "bandit", "bandit": {"often": "1h"}}, "unknown field 'often'"),
    ({"strategy": "bandit", "bandit": {"every": "soon"}}, "bandit.every"),
])
def test_bad_bandit_options_are_named(extra, expected):
    problems = problems_of(bundle([_two_variants(**extra)]))
    assert any(expected in p for p in problems), problems


def test_a_bandit_needs_two_variants():
    problems = problems_of(bundle([shipped_rule() | {"strategy": "bandit"}]))
    assert any("at least two variants" in p for p in problems), problems


def _overdue_rule() -> dict:
    return {"id": "order_late", "event": "order_status_changed", "trigger": "follow_up",
            "template": "order_shipped", "lane": "transactional"}


def test_follow_up_loads_and_the_follow_up_rule_only_renders_follow_ups():
    rule = shipped_rule() | {"follow_up": {"after": "3d", "rule": "order_late", "unless": {
        "event": "order_status_changed", "when": {"status": "delivered"}, "match": "order_id"}}}
    ruleset = load_bundle(bundle([rule, _overdue_rule()]))
    first, late = ruleset.rules if ruleset.rules[0].id == "order_shipped" else ruleset.rules[::-1]
    assert first.follow_up is not None and first.follow_up.after_s == 3 * 86400
    assert first.follow_up.match == ("order_id",) and first.follow_up.unless_when
    assert late.trigger == "follow_up"


@pytest.mark.parametrize("follow_up, expected", [
    ({"rule": "order_late", "unless": {"clicked": True}}, "missing field 'after'"),
    ({"after": "1d", "rule": "nope", "unless": {"clicked": True}}, "no (enabled) rule 'nope'"),
    ({"after": "1d", "rule": "order_late"}, "say what cancels it"),
    ({"after": "1d", "rule": "order_late", "unless": {"event": "order_status_changed",
                                                      "match": ["invoice_id"]}}, "no field 'invoice_id'"),
    ({"after": "1d", "rule": "order_late", "unless": {"event": "nope"}}, "unknown event 'nope'"),
    ({"after": "1d", "rule": "order_late", "unless": {"clicked": True}, "when": {}}, "unknown field 'when'"),
])
def test_bad_follow_ups_are_named(follow_up, expected):
    problems = problems_of(bundle([shipped_rule() | {"follow_up": follow_up}, _overdue_rule()]))
    assert any(expected in p for p in problems), problems


def test_the_follow_up_rule_must_say_trigger_follow_up():
    late = _overdue_rule()
    late.pop("trigger")
    rule = shipped_rule() | {"follow_up": {"after": "1d", "rule": "order_late",
                                           "unless": {"clicked": True}}}
    problems = problems_of(bundle([rule, late]))
    assert any("must say trigger: follow_up" in p for p in problems), problems
