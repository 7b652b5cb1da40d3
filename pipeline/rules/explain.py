"""`rassylka rules explain`: what the router and the sender would do with one event, per rule.

`explain()` is pure: given the rule set, one decoded event, the customer's profile, the
sender's policy and what is known of the number's consent, it says for every rule whether
it matches (else the first part that fails: event type, a `when:` condition with the value
the event has, a customer filter), the variant the customer gets, the text in every locale
of the template with its encoding, segments and cost, and for a matching rule what the
sender would decide now (number, consent, content, quiet hours in the recipient's local
time). It calls the router's and the sender's own functions (`explain_match`,
`build_request`, `decide` and the checks behind it), never copies of them, and changes
no state: dedup and frequency caps live in the sender's state and are not read.

The rest of the module reads the inputs (an event file, a profile file or the profiles
topic, consent and learned weights from Kafka) and prints the result as tables or JSON.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from pipeline import avro, topics
from pipeline.errors import ConfigError, RassylkaError
from pipeline.links import link_base, link_secret, shorten
from pipeline.router.core import PROFILE_DEFAULTS, SendAtError, build_request
from pipeline.rules.matching import Miss, explain_match, forced_variant, lookup, pick_variant
from pipeline.rules.model import Rule, RuleSet
from pipeline.rules.render import RenderError, render
from pipeline.sender.consent import ConsentState, apply_change, check_consent
from pipeline.sender.content import check_content
from pipeline.sender.core import Send, SenderPolicy, decide
from pipeline.sender.decision import Reject
from pipeline.sender.dedup import LedgerEntry
from pipeline.sender.expiry import Hold
from pipeline.sender.numbers import NumberInfo, normalise
from pipeline.sender.quiet_hours import check_quiet_hours, recipient_zones
from pipeline.sms.encoding import segment_count

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, str] = dict(topics.EVENT_TOPICS)
"""Event topic (catalog name) -> event type (its Avro contract)."""
_BASE_FIELDS = ("event_id", "customer_id", "occurred_at_ms")
_MISSING = "<missing>"
_ABSENT = lookup({}, "_")  # what `lookup` returns for a field the record does not have
NOT_READ = "not checked: needs the sender's state"


# ------------------------------------------------------------------------ records
@dataclass(frozen=True)
class LocaleText:
    """One locale of a rule's template, rendered for this event and customer."""

    locale: str
    text: str = ""
    encoding: str = ""
    segments: int = 0
    cost: float = 0.0
    transliterated: bool = False
    chosen: bool = False  # the locale the customer gets
    error: str | None = None  # render failure, or the content rule the text breaks


@dataclass(frozen=True)
class Check:
    """One sender check on a matching rule's request: `verdict` is pass, hold,
    suppressed, rejected, unknown or not checked."""

    name: str
    verdict: str
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class RuleExplanation:
    """Everything `explain` says about one rule."""

    rule_id: str
    event: str
    lane: str
    priority: int
    matched: bool
    miss: str | None = None  # Miss.part: event, campaign, follow_up, trigger, when, customer
    why: str = ""  # for people
    variant: str | None = None
    variant_basis: str = ""
    template_id: str | None = None
    texts: tuple[LocaleText, ...] = ()
    route_error: str | None = None  # the router's failure reason (render_error, ...)
    checks: tuple[Check, ...] = ()
    decision: str = ""  # what the sender would do now, in one line


@dataclass(frozen=True)
class Explanation:
    """The explanation of one event for one customer, rule by rule."""

    event_type: str
    event_id: str
    customer_id: str
    now_ms: int
    rules: tuple[RuleExplanation, ...]
    consent: str = ""  # where the consent came from, or why it is unknown
    notes: tuple[str, ...] = ()

    @property
    def matched(self) -> list[str]:
        return [r.rule_id for r in self.rules if r.matched]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"matched": self.matched}


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""Consent that could not be read (no broker): said so, and assumed absent by `decide`."""


class _ExplainState:
    """A StateView for `decide` holding only consent: no ledger, no caps (not read)."""

    def __init__(self, consent: ConsentState | None) -> None:
        self._consent = consent

    def consent(self, e164: str) -> ConsentState | None:
        return self._consent

    def ledger(self, request_id: str) -> LedgerEntry | None:
        return None

    def content_entry(self, key: str) -> LedgerEntry | None:
        return None

    def cap_state(self, e164: str, lane: str) -> None:
        return None


# ------------------------------------------------------------------- evaluation
def explain(
    ruleset: RuleSet,
    event_type: str,
    event: Mapping[str, Any],
    profile: Mapping[str, Any],
    policy: SenderPolicy,
    now_ms: int,
    consent: ConsentState | None | _Unknown = UNKNOWN,
    learned: Mapping[str, Mapping[str, float]] | None = None,
) -> Explanation:
    """Explain every rule of `ruleset` for `event` (of `event_type`) and `profile`.

    `consent` is the number's consent state (None: nothing on record, UNKNOWN: not read);
    `learned` the current weights of bandit rules. Pure apart from a quiet-hours warning
    log line for a profile without a time zone; never raises on odd data (a render error
    is reported on its rule, as the router would dead-letter it).
    """
    profile = PROFILE_DEFAULTS | dict(profile)
    by_type = [r for r in ruleset.rules if r.event == event_type]
    others = [r for r in ruleset.rules if r.event != event_type]
    rules = tuple(
        _explain_rule(ruleset, rule, event_type, event, profile, policy, now_ms, consent,
                      learned or {})
        for rule in [*by_type, *others]
    )
    if consent is UNKNOWN:
        consent_note = "unknown (not read from Kafka)"
    elif consent is None:
        consent_note = "nothing on record"
    else:
        consent_note = repr(consent)
    notes = ["dedup and frequency caps need the sender's state: not checked here"]
    if not any(r.matched for r in rules):
        notes.append("no rule matches: the router counts this event as "
                     f"no_rule:{event_type} and sends nothing")
    return Explanation(event_type, str(event.get("event_id", "")),
                       str(event.get("customer_id", "")), now_ms, rules, consent_note,
                       tuple(notes))


def _explain_rule(ruleset: RuleSet, rule: Rule, event_type: str, event: Mapping[str, Any],
                  profile: Mapping[str, Any], policy: SenderPolicy, now_ms: int,
                  consent: Any, learned: Mapping[str, Mapping[str, float]]) -> RuleExplanation:
    miss = explain_match(rule, event_type, event, profile)
    base = RuleExplanation(rule.id, rule.event, rule.lane, rule.priority, miss is None,
                           miss.part if miss else None, describe_miss(rule, miss, event, profile))
    if miss is not None and miss.part == "event":
        return base  # another event type: its template would not even render
    customer_id = str(event.get("customer_id") or profile.get("customer_id") or "")
    forced = forced_variant(rule, event)
    variant = forced or pick_variant(rule, customer_id, learned.get(rule.id))
    if forced is not None:
        basis = "assigned by the campaign"
    elif len(rule.variants) == 1:
        basis = "the rule's only template"
    elif rule.bandit is not None and learned.get(rule.id):
        basis = "stable per customer, learned (bandit) weights " + _weights(learned[rule.id])
    else:
        basis = "stable per customer, weights " + _weights({v.name: v.weight for v in rule.variants})
    texts, route_error, request = _texts(ruleset, rule, variant.template, event_type, event,
                                         profile, policy, now_ms, learned)
    if miss is not None:
        route_error = None  # the router never renders a rule that does not match
    checks: tuple[Check, ...] = ()
    decision = ""
    if miss is None and request is not None:
        checks, decision = sender_checks(request, policy, now_ms, consent)
    elif miss is None:
        decision = f"nothing reaches the sender: the router dead-letters it ({route_error})"
    return RuleExplanation(**(asdict(base) | {
        "variant": variant.name, "variant_basis": basis, "template_id": variant.template,
        "texts": texts, "route_error": route_error, "checks": checks, "decision": decision}))


def _weights(weights: Mapping[str, float]) -> str:
    total = sum(max(w, 0.0) for w in weights.values()) or 1.0
    return ", ".join(f"{name} {100 * max(w, 0.0) / total:.0f}%" for name, w in weights.items())


def describe_miss(rule: Rule, miss: Miss | None, event: Mapping[str, Any],
                  profile: Mapping[str, Any]) -> str:
    """Why `rule` does not match, for people ('matches' when it does)."""
    if miss is None:
        return "matches"
    if miss.part == "event":
        return f"listens to {miss.key} events"
    if miss.part == "campaign":
        return f"the event is a campaign message for rule {miss.key} only"
    if miss.part == "follow_up":
        return f"the event is a scheduled follow-up for rule {miss.key} only"
    if miss.part == "trigger":
        return "trigger: follow_up: renders only follow-ups another rule schedules"
    if miss.part == "when" and miss.condition is not None:
        c = miss.condition
        actual = lookup(event, c.path)
        shown = _MISSING if actual is _ABSENT else json.dumps(actual, ensure_ascii=False)
        return f"when: {c.path} {c.op} {json.dumps(c.value, ensure_ascii=False)}; the event has {shown}"
    flt = rule.customer
    segments = sorted(profile.get("segments") or ())
    if miss.key == "segments_any":
        return f"customer: segments_any {list(flt.segments_any)}; the customer is in {segments}"
    if miss.key == "segments_none":
        hit = sorted(set(segments) & set(flt.segments_none))
        return f"customer: segments_none {list(flt.segments_none)}; the customer is in {hit}"
    if miss.key == "locale_in":
        return f"customer: locale_in {list(flt.locale_in)}; the customer's locale is {profile.get('locale')!r}"
    key = miss.key.removeprefix("attributes.")
    condition = next((c for c in flt.attributes if c.path == key), None)
    attributes = profile.get("attributes") or {}
    actual = json.dumps(attributes[key], ensure_ascii=False) if key in attributes else _MISSING
    if condition is None:
        return f"customer: {miss.key}; the customer has {actual}"
    return (f"customer: attributes.{key} {condition.op} "
            f"{json.dumps(condition.value, ensure_ascii=False)}; the customer has {actual}")


def _texts(ruleset: RuleSet, rule: Rule, template_id: str, event_type: str,
           event: Mapping[str, Any], profile: Mapping[str, Any], policy: SenderPolicy,
           now_ms: int, learned: Mapping[str, Mapping[str, float]],
           ) -> tuple[tuple[LocaleText, ...], str | None, dict[str, Any] | None]:
    """Every locale of the template rendered (links shortened as the router does), and the
    request the router would build for the customer's own locale (None: it would fail)."""
    request: dict[str, Any] | None = None
    route_error: str | None = None
    try:
        request = build_request(ruleset, rule, event_type, event, profile, now_ms, learned)
    except (RenderError, SendAtError) as exc:
        route_error = f"{exc.reason}: {exc}"
    except Exception as exc:  # the router dead-letters these as route_error
        route_error = f"route_error: {exc.__class__.__name__}: {exc}"
    template = ruleset.templates.get(template_id)
    if template is None:
        return (), route_error or f"no template {template_id}", request
    message_id = request["request_id"] if request else "explain"
    out = []
    for locale in template.compiled or template.locales:
        try:
            rendered = render(template, event=event, customer=dict(profile, locale=locale),
                              rule=rule, default_locale=ruleset.settings.default_locale,
                              limits=ruleset.settings.render)
        except RenderError as exc:
            out.append(LocaleText(locale, error=f"{exc.reason}: {exc}"))
            continue
        text, _links = shorten(rendered.text, message_id, link_secret(), link_base())
        chosen = request is not None and request["locale"] == locale
        verdict = check_content(text, rule.lane, rule.sender_id, policy.content,
                                rule.allow_transliteration)
        if isinstance(verdict, Reject):
            size = segment_count(text)
            out.append(LocaleText(locale, text, size.encoding, size.segments,
                                  size.segments * policy.content.cost_per_segment, False, chosen,
                                  f"{verdict.reason}: {verdict.detail}"))
        else:
            out.append(LocaleText(locale, verdict.text_to_send, verdict.encoded.encoding,
                                  verdict.encoded.segments, verdict.cost, verdict.transliterated,
                                  chosen))
    return tuple(out), route_error, request


def sender_checks(request: Mapping[str, Any], policy: SenderPolicy, now_ms: int,
                  consent: Any = UNKNOWN) -> tuple[tuple[Check, ...], str]:
    """The sender's checks on `request` one by one, and what `decide` says now.

    Dedup and frequency caps are reported as not checked (they need the sender's state);
    `decide` itself runs with no earlier sends and `consent` (UNKNOWN counts as none).
    """
    lane = request["lane"]
    checks: list[Check] = []
    number = normalise(request["phone"], request["country"] or "RU", policy.allowed_regions)
    if isinstance(number, Reject):
        checks.append(Check("number", number.status, number.reason, number.detail))
    else:
        checks.append(Check("number", "pass", None, f"{number.e164} ({number.region}, "
                                                      f"{number.operator or 'operator unknown'})"))
    if consent is UNKNOWN:
        checks.append(Check("consent", "unknown", None,
                            "not read from Kafka; " + ("a marketing SMS needs an opt-in"
                                                       if lane == "marketing"
                                                       else "only a transactional opt-out stops it")))
    else:
        no = check_consent(lane, consent)
        checks.append(Check("consent", no.status if no else "pass", no.reason if no else None,
                            no.detail if no else (repr(consent) if consent else "nothing on record")))
    verdict = check_content(request["text"], lane, request["sender_id"], policy.content,
                            request["allow_transliteration"])
    if isinstance(verdict, Reject):
        checks.append(Check("content", verdict.status, verdict.reason, verdict.detail))
    else:
        checks.append(Check("content", "pass", None,
                            f"{verdict.encoded.segments} {verdict.encoded.encoding} segment(s), "
                            f"cost {verdict.cost:g}"
                            + (", transliterated" if verdict.transliterated else "")))
    checks.append(Check("dedup", "not checked", None, NOT_READ))
    if isinstance(number, NumberInfo):
        checks.append(quiet_hours_check(request, number, policy, now_ms))
    lane_caps = policy.caps.get(lane)
    if lane_caps is None:
        checks.append(Check("caps", "pass", None, f"no frequency caps on the {lane} lane"))
    else:
        limits = ", ".join(f"at most {c.max_count} per {_duration(c.window_s)}"
                           for c in lane_caps.caps)
        checks.append(Check("caps", "not checked", None, f"{NOT_READ} ({limits})"))
    state = _ExplainState(None if consent is UNKNOWN else consent)
    return tuple(checks), describe_decision(decide(request, policy, state, now_ms), now_ms)


def quiet_hours_check(request: Mapping[str, Any], number: NumberInfo, policy: SenderPolicy,
                      now_ms: int) -> Check:
    """Quiet hours for this recipient now, with the local time in each zone they can be in."""
    lane = request["lane"]
    window = policy.quiet_hours.get(lane)
    if window is None:
        return Check("quiet hours", "pass", None, f"no quiet hours on the {lane} lane")
    zones = recipient_zones(request.get("time_zone"),
                            policy.zones_by_country.get(number.region, number.time_zones),
                            request.get("customer_id")) or (window.default_zone,)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    local = ", ".join(f"{z.key} {now.astimezone(z):%H:%M}" for z in zones[:4])
    if len(zones) > 4:
        local += f" and {len(zones) - 4} more zones"
    quiet = f"quiet {_clock(window.start_min)}-{_clock(window.end_min)}"
    result = check_quiet_hours(lane, now_ms, zones, policy.quiet_hours)
    if isinstance(result, Hold):
        until = datetime.fromtimestamp(result.until_ms / 1000, UTC)
        return Check("quiet hours", "hold", result.reason,
                     f"local time {local}; {quiet}: held until {until.astimezone(zones[0]):%Y-%m-%d %H:%M} "
                     f"{zones[0].key}")
    if isinstance(result, Reject):
        return Check("quiet hours", result.status, result.reason, f"local time {local}; {result.detail}")
    return Check("quiet hours", "pass", None, f"local time {local}; {quiet}")


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_decision(decision: Send | Reject | Hold, now_ms: int) -> str:
    """`decide`'s answer in one line."""
    if isinstance(decision, Send):
        v = decision.verdict
        return (f"send to {decision.number.e164}: {v.encoded.segments} {v.encoded.encoding} "
                f"segment(s), cost {v.cost:g}")
    if isinstance(decision, Hold):
        wait_s = max(0, (decision.until_ms - now_ms) // 1000)
        until = datetime.fromtimestamp(decision.until_ms / 1000, UTC)
        return f"hold ({decision.reason}) until {until:%Y-%m-%d %H:%M} UTC, in {_duration_text(wait_s)}"
    return f"{decision.status} {decision.reason}: {decision.detail}"


def _duration_text(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


# ------------------------------------------------------------------------ inputs
def event_type_of(record: Mapping[str, Any], wanted: str | None = None) -> str:
    """The event type of `record`: `wanted` (an event type or an event topic), else the one
    type whose Avro fields fit the record's. ConfigError when none or several fit."""
    types = sorted(set(EVENT_TYPES.values()))
    if wanted:
        name = EVENT_TYPES.get(wanted, wanted)
        if name not in types:
            raise ConfigError([f"--type {wanted!r} is neither an event type nor an event topic"],
                              hint=f"event types: {', '.join(types)}")
        return name
    fits = []
    for name in types:
        fields = avro.registry().contract(name).schema["fields"]
        names = {f["name"] for f in fields}
        required = {f["name"] for f in fields if "default" not in f} - set(_BASE_FIELDS)
        if required <= set(record) and set(record) <= names:
            fits.append(name)
    if len(fits) != 1:
        raise ConfigError([f"cannot tell the event type from the fields {sorted(record)}: "
                           + (f"{', '.join(fits)} all fit" if fits else "no event contract fits")],
                          hint=f"say it with --type ({', '.join(types)})")
    return fits[0]


def load_event(path: Path, wanted_type: str | None, customer_id: str | None,
               now_ms: int) -> tuple[str, dict[str, Any]]:
    """(event type, record) from a JSON file, checked against its Avro contract and
    decoded back as the router would see it (defaults filled in). A missing event_id,
    occurred_at_ms or customer_id is filled in (customer_id from `customer_id`)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: not JSON: {exc}"]) from exc
    if not isinstance(record, dict):
        raise ConfigError([f"{path}: an event is a JSON object, not {type(record).__name__}"])
    event_type = event_type_of(record, wanted_type)
    record.setdefault("event_id", f"explain-{uuid.uuid4().hex[:12]}")
    record.setdefault("occurred_at_ms", now_ms)
    if customer_id and not record.get("customer_id"):
        record["customer_id"] = customer_id
    if not record.get("customer_id"):
        raise ConfigError([f"{path}: the event has no customer_id"],
                          hint="add one, or name the customer with --customer ID or --profile FILE")
    try:
        data = avro.encode(event_type, record)
    except ValueError as exc:
        raise ConfigError([f"{path}: not a valid {event_type} event: {exc}"]) from exc
    return event_type, avro.decode(event_type, data)


def load_profile(path: Path) -> dict[str, Any]:
    """A customer profile from a JSON file, checked against `customer_profile`."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: not JSON: {exc}"]) from exc
    try:
        return avro.decode("customer_profile", avro.encode("customer_profile", record))
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"{path}: not a valid customer_profile: {exc}"]) from exc


def read_profile(settings: Any, customer_id: str) -> dict[str, Any] | None:
    """The customer's newest profile on the compacted profiles topic (read to its end now),
    or None when the topic has none (or a tombstone)."""
    from pipeline.state.store import read_partitions

    key = customer_id.encode()
    latest: bytes | None = None
    for _p, k, value in read_partitions(settings.kafka_bootstrap, settings.topic(topics.PROFILES),
                                        _partitions(settings, topics.PROFILES)):
        if k == key:
            latest = value
    if latest is None:
        return None
    try:
        return avro.decode("customer_profile", latest)
    except avro.DecodeError as exc:
        log.warning("profile of %s does not decode: %s", customer_id, exc)
        return None


def read_consent(settings: Any, e164: str) -> ConsentState | None:
    """The number's consent folded from the compacted consent topic (None: no record)."""
    from pipeline.state.store import read_partitions

    prefix = f"{e164}|".encode()
    state: ConsentState | None = None
    for _p, key, value in read_partitions(settings.kafka_bootstrap, settings.topic(topics.CONSENT),
                                          _partitions(settings, topics.CONSENT)):
        if value is None or not key.startswith(prefix):
            continue
        try:
            state = apply_change(state, avro.decode("consent_change", value))
        except Exception as exc:  # the sender skips such records too
            log.warning("ignoring unreadable consent record: %s", exc)
    return state


def _partitions(settings: Any, name: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    topic = settings.topic(name)
    meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(topic, timeout=15)
    found = meta.topics.get(topic)
    if found is None or found.error is not None:
        raise ConfigError([f"topic {topic} does not exist on {settings.kafka_bootstrap}"],
                          hint="create the topics with `rassylka topics create`")
    return sorted(found.partitions)


# ------------------------------------------------------------------------ output
def print_explanation(result: Explanation, console: Any, verbose: bool = False) -> None:
    """Rich tables: one summary row per rule, then the texts and sender checks of each
    matching rule (`verbose`: the texts of every rule of the event's type too)."""
    from rich.table import Table

    when = datetime.fromtimestamp(result.now_ms / 1000, UTC)
    summary = Table(title=f"{result.event_type} {result.event_id} for customer "
                          f"{result.customer_id} at {when:%Y-%m-%d %H:%M:%S} UTC",
                    title_justify="left")
    for column in ("rule", "event", "lane", "prio", "matched", "why / what the sender would do"):
        summary.add_column(column, overflow="fold")
    for r in result.rules:
        mark = "[green]yes[/green]" if r.matched else "[red]no[/red]"
        summary.add_row(r.rule_id, r.event, r.lane, str(r.priority), mark,
                        r.decision if r.matched else r.why)
    console.print(summary)
    for r in result.rules:
        if r.variant is None or not (r.matched or verbose):
            continue
        table = Table(title=f"{r.rule_id}: {'matches' if r.matched else r.why}; variant "
                            f"{r.variant} ({r.variant_basis}), template {r.template_id}",
                      title_justify="left", show_lines=True)
        for column in ("locale", "encoding", "segments", "cost", "text"):
            table.add_column(column, overflow="fold")
        for t in r.texts:
            locale = f"{t.locale} *" if t.chosen else t.locale
            text = t.text + (f"\n[red]{t.error}[/red]" if t.error else "")
            table.add_row(locale, t.encoding + (" (translit)" if t.transliterated else ""),
                          str(t.segments or ""), f"{t.cost:g}" if t.text else "", text)
        console.print(table)
        if r.route_error:
            console.print(f"  [red]the router would dead-letter it: {r.route_error}[/red]",
                          highlight=False)
        if r.checks:
            checks = Table(title=f"{r.rule_id}: the sender now", title_justify="left")
            for column in ("check", "verdict", "reason", "detail"):
                checks.add_column(column, overflow="fold")
            for c in r.checks:
                colour = {"pass": "green", "hold": "yellow", "unknown": "yellow",
                          "not checked": "dim"}.get(c.verdict, "red")
                checks.add_row(c.name, f"[{colour}]{c.verdict}[/{colour}]", c.reason or "", c.detail)
            console.print(checks)
            console.print(f"  decision: [bold]{r.decision}[/bold]", highlight=False)
    console.print(f"consent: {result.consent}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


def to_json(result: Explanation) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=2)



# ------------------------------------------------------------------------ command
def explain_command(
    event_file: Path = typer.Option(..., "--event", help="The event as JSON (fields of its "
                                    "Avro contract; event_id and occurred_at_ms may be left out)."),
    customer: str = typer.Option(None, "--customer", help="Read this customer's profile from "
                                 "the profiles topic (default: the event's customer_id)."),
    profile_file: Path = typer.Option(None, "--profile", help="Take the profile from this JSON "
                                      "file instead of Kafka."),
    event_type: str = typer.Option(None, "--type", help="Event type or event topic (default: "
                                   "inferred from the event's fields)."),
    config_dir: Path = typer.Option(None, help="Folder with rules.yaml, templates/, limits.yaml "
                                    "and content.yaml (default: config/)."),
    at: str = typer.Option(None, "--at", help="Decide as of this ISO time with offset instead "
                           "of now (e.g. 2026-12-01T23:30+03:00, for quiet hours)."),
    offline: bool = typer.Option(False, "--offline", help="Read nothing from Kafka: needs "
                                 "--profile; consent is reported unknown."),
    all_rules: bool = typer.Option(False, "--all", help="Also render the texts of the rules "
                                   "that do not match."),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """Show every rule for one event and customer: matched or why not, the variant, the text
    per locale (encoding, segments, cost) and what the sender would decide now."""
    import sys
    from dataclasses import replace

    from rich.console import Console

    from pipeline.cli import check_rules, rules_error, wait_for_kafka
    from pipeline.kafka_io import ensure_reachable
    from pipeline.rules.loader import load_ruleset
    from pipeline.sender.setup import load_policy
    from pipeline.settings import Settings

    if fmt not in ("table", "json"):
        raise typer.BadParameter("table or json", param_hint="--format")
    if profile_file is None and offline:
        raise typer.BadParameter("--offline needs --profile FILE", param_hint="--offline")
    if profile_file is not None and customer:
        raise typer.BadParameter("give --customer or --profile, not both", param_hint="--profile")
    now_ms = _when(at)
    settings = Settings.from_env()
    if config_dir is not None:
        settings = replace(settings, config_dir=config_dir)
    check_rules(settings)
    try:
        ruleset = load_ruleset(settings.config_dir)
    except ConfigError as exc:
        raise rules_error(settings.config_dir, exc.problems) from exc
    policy, _limits = load_policy(settings.config_dir)
    profile = load_profile(profile_file) if profile_file is not None else None
    kind, event = load_event(event_file, event_type,
                             customer or (profile or {}).get("customer_id"), now_ms)
    online = not offline
    if profile is None:
        wait_for_kafka(settings)
        wanted = customer or event["customer_id"]
        profile = read_profile(settings, wanted)
        if profile is None:
            raise ConfigError([f"no profile for customer {wanted!r} on "
                               f"{settings.topic(topics.PROFILES)}: the router would "
                               "dead-letter this event as unknown_customer"],
                              hint="publish the profile first, or pass one with --profile FILE")
    elif online:
        try:
            ensure_reachable(settings.kafka_bootstrap, 2.0)
        except RassylkaError:
            online = False
    consent: Any = UNKNOWN
    learned: dict[str, dict[str, float]] = {}
    if online:
        number = normalise(str(profile.get("phone") or ""), profile.get("country") or "RU",
                           policy.allowed_regions)
        if isinstance(number, NumberInfo):
            consent = read_consent(settings, number.e164)
        if any(r.bandit is not None for r in ruleset.rules):
            from pipeline.campaigns.learning import current_weights

            learned = {rule_id: {str(k): float(v) for k, v in record["weights"].items()}
                       for rule_id, record in current_weights(settings).items()}
    result = explain(ruleset, kind, event, profile, policy, now_ms, consent, learned)
    if fmt == "json":
        typer.echo(to_json(result))
        return
    print_explanation(result, Console(width=None if sys.stdout.isatty() else 160), all_rules)


def _when(at: str | None) -> int:
    if not at:
        return int(time.time() * 1000)
    try:
        moment = datetime.fromisoformat(at)
    except ValueError as exc:
        raise typer.BadParameter(f"{at!r} is not an ISO time", param_hint="--at") from exc
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{at!r} has no UTC offset", param_hint="--at")
    return int(moment.timestamp() * 1000)

__all__ = [
    "UNKNOWN",
    "Check",
    "Explanation",
    "LocaleText",
    "RuleExplanation",
    "describe_miss",
    "event_type_of",
    "explain",
    "explain_command",
    "load_event",
    "load_profile",
    "print_explanation",
    "read_consent",
    "read_profile",
    "sender_checks",
    "to_json",
]
