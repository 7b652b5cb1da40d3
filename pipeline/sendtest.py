"""`rassylka send-test`: one real SMS of a rule to an operator's own number, marked as a test.

The command renders the rule's template (with a sample event that satisfies the rule's
`when:` unless `--event` gives one), builds the notification request the router would,
publishes it to the lane's requests topic and waits (bounded) for its outcome: the SMS goes
through the real sender, its checks and the configured gateway route.

A test send is marked in the fields that reach analytics, without a schema change:
`campaign_id` and `customer_id` are `_send_test` (no configured campaign can have that id:
campaign ids start with a letter or a digit) and `variant` is `test:<variant>` (never a
rule's variant name, so A/B funnels and bandit weights leave it out). `rassylka report
--campaign _send_test` counts test sends; `--by campaign` shows them on their own row.

Lanes: a test send takes the rule's own lane, so the number gets exactly what a customer
would: on the marketing lane that needs a marketing opt-in for the number, quiet hours and
the frequency caps. `--transactional` sends it on the transactional lane instead (no
marketing consent, quiet hours or caps; an explicit transactional opt-out still stops it;
content rules other than the marketing footer still apply).
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from pipeline import avro, topics
from pipeline.rules.matching import event_matches
from pipeline.rules.model import Rule, RuleSet
from pipeline.samples import order_event, payment_event, promotion_event
from pipeline.settings import Settings

TEST_MARK = "_send_test"
"""campaign_id and customer_id of every test send."""
VARIANT_PREFIX = "test:"
LANE_TOPICS = {"transactional": topics.REQUESTS_TRANSACTIONAL,
               "marketing": topics.REQUESTS_MARKETING}


def is_test(record: Mapping[str, Any]) -> bool:
    """True for a notification request or send outcome made by `rassylka send-test`."""
    return record.get("campaign_id") == TEST_MARK


def sample_event(rule: Rule, now_ms: int, seed: int | None = None) -> dict[str, Any]:
    """A sample event of the rule's type that satisfies what it can of the rule's `when:`
    (eq and in take their value, exists a placeholder, gt/gte/lt/lte a number just past the
    bound). The caller checks `event_matches` for what it could not satisfy."""
    rng = random.Random(seed)
    if rule.event == "order_status_changed":
        status = next((c.value for c in rule.when if c.path == "status" and c.op == "eq"), "shipped")
        event = order_event(rng, TEST_MARK, str(status), now_ms)
    elif rule.event == "payment_due":
        event = payment_event(rng, TEST_MARK, now_ms)
    elif rule.event == "promotion":
        event = promotion_event(rng, TEST_MARK, now_ms, TEST_MARK)
    else:
        starts = datetime.fromtimestamp(now_ms / 1000, UTC) + timedelta(days=1)
        event = {"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "customer_id": TEST_MARK,
                 "occurred_at_ms": now_ms, "source": "send-test", "attributes": {},
                 "notice_id": "N-TEST", "service": "Личный кабинет",
                 "starts_at": starts.isoformat(timespec="minutes"),
                 "ends_at": (starts + timedelta(hours=2)).isoformat(timespec="minutes"),
                 "details": None}
    event["event_id"] = f"send-test-{uuid.uuid4().hex}"
    for c in rule.when:
        target = event["attributes"] if c.path.startswith("attributes.") else event
        key = c.path.removeprefix("attributes.")
        as_text = target is event["attributes"]
        value: Any = None
        if c.op == "eq":
            value = c.value
        elif c.op == "in" and c.value:
            value = c.value[0]
        elif c.op == "exists" and c.value and target.get(key) is None:
            value = "sample"
        elif c.op in ("gt", "gte", "lt", "lte") and isinstance(c.value, (int, float)):
            value = c.value + (1 if c.op in ("gt", "gte") else -1)
        if value is not None:
            target[key] = str(value) if as_text else value
    return event


@dataclass(frozen=True)
class TestSend:
    """A built test request and what to say about it."""

    request: dict[str, Any]
    topic: str  # catalog name of the lane's requests topic
    warnings: tuple[str, ...]


def build_test(ruleset: RuleSet, rule_id: str, to: str, now_ms: int, *, locale: str | None = None,
               event: Mapping[str, Any] | None = None, country: str = "RU",
               time_zone: str | None = None, first_name: str | None = None,
               transactional: bool = False) -> TestSend:
    """The marked test request for rule `rule_id` to number `to` (KeyError: no such rule).

    Raises RenderError / SendAtError like the router would; pure apart from the clock-free
    inputs it is given.
    """
    from pipeline.router.core import build_request

    rule = ruleset.rule(rule_id)
    warnings: list[str] = []
    if event is None:
        event = sample_event(rule, now_ms)
    event = dict(event, customer_id=TEST_MARK, event_id=f"send-test-{uuid.uuid4().hex}")
    if rule.event == "promotion":
        event["campaign_id"] = TEST_MARK
        event["attributes"] = {k: v for k, v in (event.get("attributes") or {}).items()
                               if k not in ("campaign_rule", "campaign_variant")}
    if not event_matches(rule, event):
        warnings.append(f"the event does not satisfy the `when:` of {rule.id}; "
                        "the text is rendered anyway")
    profile = {"customer_id": TEST_MARK, "phone": to, "country": country,
               "locale": locale or ruleset.settings.default_locale, "time_zone": time_zone,
               "first_name": first_name, "last_name": None, "segments": [], "attributes": {}}
    request = build_request(ruleset, rule, rule.event, event, profile, now_ms)
    if locale and request["locale"] != locale:
        warnings.append(f"template {request['template_id']} has no locale {locale!r}: "
                        f"rendered in {request['locale']}")
    request.update(campaign_id=TEST_MARK, variant=VARIANT_PREFIX + request["variant"],
                   dedup_by_content=False, send_at_ms=None)
    if transactional and rule.lane != "transactional":
        request["lane"] = "transactional"
        warnings.append(f"sent on the transactional lane, not {rule.lane}: no marketing "
                        "consent, quiet hours or frequency caps")
    return TestSend(request, LANE_TOPICS[request["lane"]], tuple(warnings))


def publish_and_wait(settings: Settings, test: TestSend, timeout: float) -> dict[str, Any] | None:
    """Publish the test request and return its outcome (None: none within `timeout` s)."""
    from confluent_kafka import Consumer, TopicPartition

    from pipeline import kafka_io
    from pipeline.state.store import watermarks

    outcomes = settings.topic(topics.OUTCOMES)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"send-test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": False})
    try:
        meta = consumer.list_topics(outcomes, timeout=15).topics.get(outcomes)
        partitions = sorted(meta.partitions) if meta is not None and meta.error is None else []
        if not partitions:
            from pipeline.errors import ConfigError

            raise ConfigError([f"topic {outcomes} does not exist on {settings.kafka_bootstrap}"],
                              hint="create the topics with `rassylka topics create`")
        starts = [TopicPartition(outcomes, p, watermarks(consumer, outcomes, p)[1])
                  for p in partitions]
        kafka_io.publish(settings, test.topic, [(test.request["customer_id"], test.request)],
                         "notification_request")
        consumer.assign(starts)
        key = test.request["request_id"].encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None and msg.key() == key and msg.value() is not None:
                    return avro.decode("send_outcome", msg.value())
        return None
    finally:
        consumer.close()


def send_test_command(
    to: str = typer.Option(..., "--to", help="The number to send to (your own), e.g. +79161234567."),
    rule_id: str = typer.Option(..., "--rule", help="Rule id from rules.yaml."),
    locale: str = typer.Option(None, "--locale", help="Template locale (default: the rule set's default)."),
    event_file: Path = typer.Option(None, "--event", help="Render with this event (JSON) "
                                    "instead of a sample one."),
    transactional: bool = typer.Option(False, "--transactional", help="Send on the "
                                       "transactional lane: no marketing consent, quiet "
                                       "hours or frequency caps."),
    first_name: str = typer.Option(None, "--name", help="customer.first_name in the template."),
    time_zone: str = typer.Option(None, "--time-zone", help="The recipient's IANA zone, for "
                                  "quiet hours (default: from the number)."),
    wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for the outcome."),
    config_dir: Path = typer.Option(None, help="Folder with rules.yaml and templates/ "
                                    "(default: config/)."),
) -> None:
    """Send one real test SMS of a rule through the sender and the configured route, marked
    as a test in analytics (campaign _send_test), and print its outcome. Exit 1 unless it
    ends submitted."""
    from dataclasses import replace

    from rich.console import Console

    from pipeline.cli import check_rules, rules_error, wait_for_kafka
    from pipeline.errors import ConfigError
    from pipeline.rules.explain import load_event, read_consent, sender_checks
    from pipeline.rules.loader import load_ruleset
    from pipeline.rules.render import RenderError
    from pipeline.sender.numbers import NumberInfo, normalise
    from pipeline.sender.setup import load_policy

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    settings = Settings.from_env()
    if config_dir is not None:
        settings = replace(settings, config_dir=config_dir)
    check_rules(settings)
    try:
        ruleset = load_ruleset(settings.config_dir)
    except ConfigError as exc:
        raise rules_error(settings.config_dir, exc.problems) from exc
    try:
        rule = ruleset.rule(rule_id)
    except KeyError:
        raise typer.BadParameter(f"no rule {rule_id!r}; rules: "
                                 f"{', '.join(r.id for r in ruleset.rules)}",
                                 param_hint="--rule") from None
    now_ms = int(time.time() * 1000)
    event = load_event(event_file, rule.event, TEST_MARK, now_ms)[1] if event_file else None
    try:
        test = build_test(ruleset, rule_id, to, now_ms, locale=locale, event=event,
                          time_zone=time_zone, first_name=first_name, transactional=transactional)
    except RenderError as exc:
        raise ConfigError([f"rule {rule_id}: {exc.reason}: {exc}"]) from exc
    request = test.request
    for warning in test.warnings:
        console.print(f"[yellow]note:[/yellow] {warning}")
    policy, _limits = load_policy(settings.config_dir)
    wait_for_kafka(settings)
    number = normalise(to, "RU", policy.allowed_regions)
    consent = read_consent(settings, number.e164) if isinstance(number, NumberInfo) else None
    _checks, expected = sender_checks(request, policy, now_ms, consent)
    console.print(f"rule {rule.id}, template {request['template_id']} ({request['locale']}), "
                  f"{request['lane']} lane, request {request['request_id']}")
    console.print(f"text: {request['text']}")
    console.print(f"the sender should: {expected} (unless dedup or caps say otherwise)")
    outcome = publish_and_wait(settings, test, wait)
    if outcome is None:
        console.print(f"[red]no outcome within {wait:.0f} s[/red]: is a sender running? A held "
                      f"request (quiet hours) has its outcome when the hold ends; the request "
                      f"is on {settings.topic(test.topic)}")
        raise typer.Exit(1)
    colour = "green" if outcome["status"] == "submitted" else "red"
    reason = f" {outcome['reason']}: {outcome['detail']}" if outcome.get("reason") else ""
    console.print(f"outcome: [{colour}]{outcome['status']}[/{colour}]{reason}")
    console.print(f"message id {outcome['message_id']}, gateway {outcome.get('gateway') or '-'} "
                  f"ids {', '.join(outcome.get('gateway_message_ids') or []) or '-'}, "
                  f"{outcome['segments']} {outcome.get('encoding') or ''} segment(s), "
                  f"cost {outcome['cost']:g}")
    console.print(f"marked as a test: campaign_id {outcome.get('campaign_id')}, variant "
                  f"{outcome['variant']} (`rassylka report --campaign {TEST_MARK}`)")
    if outcome["status"] != "submitted":
        raise typer.Exit(1)


__all__ = ["TEST_MARK", "build_test", "is_test", "publish_and_wait", "sample_event",
           "send_test_command"]
