"""The campaign worker: audience snapshot → paced promotion events → decision → rollout.

`start_campaign` (CLI `rassylka campaign start ID`) resolves the audience once in
ClickHouse (the segment minus the exclusions), gives every member a reproducible phase
and variant (`model.assign`: hold-out, test with a variant, or rollout), publishes that
snapshot to `campaigns.audience` and then a `start` command to `campaigns.control`. A
campaign is started once: a second `start` is refused, also when two come at the same
moment (`_commit_start`), so a restart never re-targets.

`CampaignRunner` (CLI `rassylka campaign worker`, one process) follows the commands and
fans each running campaign out at its pace, inside its sending window in each
recipient's local time, up to its budget. Each tick is one Kafka transaction holding the
`promotion` events it publishes *and* the campaign's new cursors on `campaigns.progress`:
after a SIGKILL the worker resumes from the last committed cursors, so every member gets
exactly one event. The event id is `campaign:<id>:<customer>`, so even a replayed event
makes the same request id and the sender's ledger sends nobody twice.

When the test phase is out and `test.evaluate_after` has passed, the worker counts the
test group's results from the fact topics (outcomes, receipts, clicks, conversions,
consent) and calls `decision.decide`; the decision and its inputs go to
`campaigns.decisions` and into the campaign's state; then the rollout phase goes out
with the winner (or stops, per `on_no_winner` and the guardrails).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from pipeline import avro, kafka_io, metrics, topics
from pipeline.campaigns.decision import DecisionRule, VariantResult, decide
from pipeline.campaigns.facts import reactions
from pipeline.campaigns.model import Campaign, assign, duration_s, split_variant
from pipeline.settings import Settings
from pipeline.state.store import read_partitions, read_to_end

log = logging.getLogger(__name__)

DEFAULT_ZONE = "Europe/Moscow"
TERMINAL = {"done", "cancelled", "stopped"}


class CampaignError(RuntimeError):
    """A campaign command that cannot be carried out (unknown, already started, ...)."""


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- commands
def read_latest(settings: Settings, name: str) -> dict[str, dict[str, Any]]:
    """The newest JSON value per key of a compacted catalog topic (tombstones removed)."""
    topic = settings.topic(name)
    return _newest(topic, read_partitions(settings.kafka_bootstrap, topic, [0]))


def _newest(topic: str, records: Iterable[tuple[int, bytes, bytes | None]],
            starts: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The newest JSON object per key of `records` ((partition, key, value)); a tombstone
    removes its key, a value that is not a JSON object is logged and skipped. `starts`,
    when given, gets the newest start command per key as well."""
    out: dict[str, dict[str, Any]] = {}
    for _p, key, value in records:
        if value is None:
            out.pop(key.decode(), None)
            if starts is not None:
                starts.pop(key.decode(), None)
        elif (record := _json_object(topic, key, value)) is not None:
            out[key.decode()] = record
            if starts is not None and record.get("command") == "start":
                starts[key.decode()] = record
    return out


START_FIELDS = ("snapshot", "members", "variants", "phases")
"""What a start command says about the campaign's audience. The control topic keeps only
the newest command per campaign, so every later command carries these forward: a worker
that starts after a pause or a resume still finds the audience to run."""


def send_command(settings: Settings, campaign_id: str, command: str, **extra: Any) -> None:
    """Publish a control command (pause, resume, cancel); the worker applies it."""
    carried: dict[str, Any] = {}
    if command != "start":
        newest = read_latest(settings, topics.CAMPAIGN_CONTROL).get(campaign_id) or {}
        carried = {k: newest[k] for k in START_FIELDS if k in newest}
    producer = kafka_io.producer(settings)
    value = {**carried, "command": command, "at_ms": now_ms(), **extra}
    producer.produce(settings.topic(topics.CAMPAIGN_CONTROL), key=campaign_id.encode(),
                     value=json.dumps(value).encode())
    if producer.flush(30):
        raise KafkaException("the control command was not acknowledged within 30 s")


def start_campaign(settings: Settings, campaign: Campaign, variants: tuple[str, ...],
                   members: list[tuple[str, str]]) -> dict[str, int]:
    """Freeze the audience `members` ((customer_id, time_zone) pairs) and start the campaign.

    Returns the members per phase. Raises CampaignError if it was started before."""
    commands = read_latest(settings, topics.CAMPAIGN_CONTROL)
    if campaign.id in commands:
        raise CampaignError(f"campaign {campaign.id} was already started "
                            f"({commands[campaign.id].get('command')}); a campaign is started once")
    snapshot = uuid.uuid4().hex
    producer = kafka_io.producer(settings, **{"linger.ms": 20})
    audience_topic = settings.topic(topics.CAMPAIGN_AUDIENCE)
    phases: Counter[str] = Counter()
    for customer_id, zone in sorted(set(members)):
        phase, variant = assign(campaign, variants, customer_id)
        phases[phase] += 1
        member = {"campaign_id": campaign.id, "snapshot": snapshot, "customer_id": customer_id,
                  "zone": zone or "", "phase": phase, "variant": variant}
        while True:
            try:
                producer.produce(audience_topic, key=f"{campaign.id}|{customer_id}".encode(),
                                 value=json.dumps(member).encode())
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        raise KafkaException("the audience snapshot was not acknowledged within 120 s")
    _commit_start(settings, campaign.id, snapshot=snapshot,
                  members=len({customer_id for customer_id, _zone in members}),
                  variants=list(variants), phases=dict(phases))
    return dict(phases)


def _commit_start(settings: Settings, campaign_id: str, **fields: Any) -> None:
    """Publish the campaign's start command unless a start is there already, even when
    another operator starts the same campaign at the same moment.

    Every start of a campaign uses one transactional id. Initialising it fences any other
    start of that campaign still under way (its commit then fails), and only after that is
    the control topic read; so of two concurrent starts at most one commits, and a start
    that commits found none before it
    (`test_campaigns.py::test_two_operators_starting_a_campaign_at_once_start_it_once`).
    The audience snapshot of the start that lost stays unreferenced: workers read only the
    snapshot the start command names."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                         "transactional.id": f"{settings.app_id}-campaign-start-{campaign_id}",
                         **kafka_io.TRANSACTIONAL_PRODUCER})
    producer.init_transactions(60)
    commands = read_latest(settings, topics.CAMPAIGN_CONTROL)
    if campaign_id in commands:
        raise CampaignError(f"campaign {campaign_id} was started meanwhile, by another start "
                            f"({commands[campaign_id].get('command')}); a campaign is started "
                            f"once: see `rassylka campaign status {campaign_id}`")
    value = {"command": "start", "at_ms": now_ms(), **fields}
    try:
        producer.begin_transaction()
        producer.produce(settings.topic(topics.CAMPAIGN_CONTROL), key=campaign_id.encode(),
                         value=json.dumps(value).encode())
        kafka_io.commit_transaction(producer)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.fatal():  # fenced: another start came after
            raise CampaignError(
                f"campaign {campaign_id}: another start of it began at the same moment, so "
                f"this one did not start it; see `rassylka campaign status {campaign_id}`"
            ) from exc
        raise


# -------------------------------------------------------------------- state
@dataclass
class Member:
    customer_id: str
    zone: str
    phase: str
    variant: str | None


@dataclass
class Running:
    """A started campaign in this worker: its snapshot by phase and zone, and its state."""

    campaign: Campaign
    variants: tuple[str, ...]
    by_phase: dict[str, dict[str, list[Member]]]
    state: dict[str, Any]
    size: int = 0  # members in the snapshot: `spread_hours` paces by it
    tokens: float = 0.0
    last_tick: float = field(default_factory=time.monotonic)

    def remaining(self, phase: str) -> int:
        cursors = self.state["cursors"].get(phase, {})
        return sum(len(group) - cursors.get(zone, 0)
                   for zone, group in self.by_phase.get(phase, {}).items())


def initial_state(campaign_id: str, command: dict[str, Any]) -> dict[str, Any]:
    return {"campaign_id": campaign_id, "status": "running", "phase": "test",
            "snapshot": command["snapshot"], "members": command.get("members"),
            "cursors": {}, "sent": {},
            "test_done_at_ms": None, "decision": None, "winner": None,
            "reason": None, "updated_at_ms": now_ms()}


class CampaignRunner:
    """One campaign worker process: `run()` until `stop()`."""

    def __init__(self, settings: Settings, campaigns: dict[str, Campaign], worker_id: str = "0",
                 tick_s: float = 0.1, learner: Any = None, follow_ups: Any = None,
                 health: metrics.Health | None = None) -> None:
        self.settings = settings
        self.health = health or metrics.Health()  # /healthz, /readyz (pipeline.metrics)
        self.learner = learner  # a BanditLearner: rules with strategy: bandit
        self.follow_ups = follow_ups  # FollowUps: rules with follow_up
        self.campaigns = campaigns
        self.worker_id = worker_id
        self.tick_s = tick_s
        self.running: dict[str, Running] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self.stopping = False
        self.producer: Producer | None = None
        self.control: Consumer | None = None
        self.promotion_topic = settings.topic(topics.PROMOTION)
        self.progress_topic = settings.topic(topics.CAMPAIGN_PROGRESS)
        # called every tick: swaps `campaigns` and `learner` when a config release takes
        # effect (a campaign already started keeps the definition it started with)
        self.reconfigure: Any = None

    def stop(self) -> None:
        self.stopping = True

    def _new_producer(self) -> Producer:
        producer = Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "transactional.id": f"{self.settings.app_id}-campaigns-{self.worker_id}",
            "linger.ms": 5,
            **kafka_io.TRANSACTIONAL_PRODUCER,
        })
        producer.init_transactions(60)
        return producer

    def run(self, until_idle_s: float | None = None) -> None:
        states = read_latest(self.settings, topics.CAMPAIGN_PROGRESS)
        self.producer = self._new_producer()
        # one consumer reads the commands so far and then follows: a campaign started
        # while this worker starts is neither missed nor applied twice
        self.control, self.commands = _follow(self.settings, topics.CAMPAIGN_CONTROL)
        for campaign_id, command in self.commands.items():
            self._apply(campaign_id, command, states.get(campaign_id))
        if self.follow_ups is not None:
            self.follow_ups.start()
        control_in = metrics.events_in(self.settings.topic(topics.CAMPAIGN_CONTROL))
        try:
            while not self.stopping:
                self.health.beat()
                for msg in self.control.consume(100, 0):
                    command = _command(msg)
                    if command is not None:
                        control_in.inc()
                        self._apply(msg.key().decode(), command, None)
                for run in list(self.running.values()):
                    self._tick(run)
                if self.reconfigure is not None:
                    self.reconfigure(self)
                if self.learner is not None:
                    self.learner.tick()
                if self.follow_ups is not None:
                    self.follow_ups.cycle()
                time.sleep(self.tick_s)  # each tick sends what the pace allows since the last
        finally:
            self.control.close()
            if self.follow_ups is not None:
                self.follow_ups.close()

    # ------------------------------------------------------------ commands
    def _apply(self, campaign_id: str, command: dict[str, Any], state: dict[str, Any] | None) -> None:
        """Apply the newest command of a campaign; `state` is its saved progress, if read.

        A campaign this worker does not run yet is loaded from any command that carries
        the start's audience (`START_FIELDS`): the start itself, or a later command when
        the worker starts after a pause or a resume. Before, such a campaign was never
        run again once its newest command was not the start."""
        run = self.running.get(campaign_id)
        kind = command.get("command")
        if run is None:
            if not command.get("snapshot"):
                if kind != "start":
                    log.error("campaign %s: %s without the start's audience; not run by this "
                              "worker", campaign_id, kind)
                return
            if kind != "start" and state is None:  # a live command: its progress so far
                state = read_latest(self.settings, topics.CAMPAIGN_PROGRESS).get(campaign_id)
            if (kind != "start" and state and state.get("snapshot") == command["snapshot"]
                    and state.get("status") in TERMINAL):
                return  # cancelled or over: its audience need not be read again
            run = self._load(campaign_id, command, state)
            if run is None or kind == "start":
                return
        if run.state["status"] not in TERMINAL:
            if kind == "pause" and run.state["status"] != "paused":
                run.state["resume_to"] = run.state["status"]
                self._save(run, "paused", [])
            elif kind == "resume" and run.state["status"] == "paused":
                self._save(run, run.state.pop("resume_to", "running"), [])
            elif kind == "cancel":
                self._save(run, "cancelled", [], reason="cancelled by an operator")

    def _load(self, campaign_id: str, command: dict[str, Any],
              state: dict[str, Any] | None) -> Running | None:
        """Run the campaign `command` started, from `state` when it belongs to the same
        audience snapshot; None when its definition is not in this worker's config."""
        campaign = self.campaigns.get(campaign_id)
        if campaign is None:
            log.error("campaign %s was started but config/campaigns/%s.yaml is not here",
                      campaign_id, campaign_id)
            return None
        snapshot, expected = command["snapshot"], command.get("members")
        if state and state.get("snapshot") and state["snapshot"] != snapshot:
            # Started twice at once (both starts passed the check before either landed):
            # go on with the snapshot this campaign has been sending from, not the newer.
            log.warning("campaign %s was started twice; it goes on with snapshot %s, the "
                        "one it has been sending from (not %s)", campaign_id,
                        state["snapshot"], snapshot)
            snapshot, expected = state["snapshot"], state.get("members")
        elif not (state and state.get("snapshot") == snapshot):
            state = initial_state(campaign_id, command)
        members = self._snapshot(campaign_id, snapshot)
        if isinstance(expected, int) and len(members) < expected:
            # Run with what is left and the cursors point at other members, or with none
            # and the campaign looks done: say so and leave it as it is instead.
            log.error("campaign %s: its audience snapshot on %s holds %d of its %d members "
                      "(deleted by the topic's retention?); not running it: start the "
                      "campaign again under a new id", campaign_id,
                      self.settings.topic(topics.CAMPAIGN_AUDIENCE), len(members), expected)
            return None
        by_phase: dict[str, dict[str, list[Member]]] = defaultdict(lambda: defaultdict(list))
        for member in sorted(members.values(), key=lambda m: m.customer_id):
            by_phase[member.phase][member.zone or DEFAULT_ZONE].append(member)
        run = self.running[campaign_id] = Running(campaign, tuple(command["variants"]),
                                                  by_phase, state, size=len(members))
        log.info("campaign %s: %d members, status %s", campaign_id, len(members),
                 state["status"])
        return run

    def _snapshot(self, campaign_id: str, snapshot: str) -> dict[str, Member]:
        members: dict[str, Member] = {}
        prefix = f"{campaign_id}|".encode()
        topic = self.settings.topic(topics.CAMPAIGN_AUDIENCE)
        for _p, key, value in read_partitions(self.settings.kafka_bootstrap, topic, [0]):
            if not key.startswith(prefix) or value is None:
                continue
            m = json.loads(value)
            if m.get("snapshot") == snapshot:
                members[m["customer_id"]] = Member(m["customer_id"], m["zone"], m["phase"],
                                                   m["variant"])
        return members

    # ---------------------------------------------------------------- ticks
    def _tick(self, run: Running) -> bool:
        """Advance one campaign; True when it published anything."""
        status = run.state["status"]
        c = run.campaign
        now = now_ms()
        if status in TERMINAL or status == "paused":
            return False
        if c.end_at and now >= _epoch_ms(c.end_at):
            self._save(run, "done", [], reason="the campaign's end time passed")
            return False
        if c.start_at and now < _epoch_ms(c.start_at):
            return False
        if status == "evaluating":
            if now >= run.state["test_done_at_ms"] + duration_s(c.test.evaluate_after) * 1000:
                self._evaluate(run)
            return False
        phase = run.state["phase"]
        if run.remaining(phase) == 0:
            if phase == "test":
                run.state["test_done_at_ms"] = now
                self._save(run, "evaluating", [])
            else:
                self._save(run, "done", [], reason="every member of the audience was sent to")
            return False
        elapsed = time.monotonic() - run.last_tick
        run.last_tick = time.monotonic()
        rate = c.pacing.rate_per_s(run.size)
        run.tokens = min(run.tokens + elapsed * rate, max(rate, 1.0))
        allowed = int(run.tokens)
        if c.budget.max_messages is not None:
            allowed = min(allowed, c.budget.max_messages - sum(run.state["sent"].values()))
            if allowed <= 0 and run.tokens >= 1:
                self._save(run, "done", [], reason="the budget (max_messages) is spent")
                return False
        if allowed <= 0:
            return False
        before = json.dumps(run.state)
        batch = self._next(run, phase, allowed, now)
        if not batch:
            return False
        run.tokens -= len(batch)
        if phase == "test" and not run.state.get("test_started_at_ms"):
            run.state["test_started_at_ms"] = now
        self._publish(run, phase, batch, now, before)
        return True

    def _next(self, run: Running, phase: str, allowed: int, now: int) -> list[Member]:
        """Up to `allowed` members of `phase` whose local time is in the sending window,
        taking from each open time zone in turn."""
        cursors = run.state["cursors"].setdefault(phase, {})
        window = run.campaign.window
        groups = [(zone, group) for zone, group in sorted(run.by_phase[phase].items())
                  if cursors.get(zone, 0) < len(group)
                  and (window is None or window.is_open(_local_minute(zone, now)))]
        out: list[Member] = []
        while groups and len(out) < allowed:
            for zone, group in list(groups):
                i = cursors.get(zone, 0)
                if i >= len(group) or len(out) >= allowed:
                    groups.remove((zone, group))
                    continue
                out.append(group[i])
                cursors[zone] = i + 1
        return out

    def _publish(self, run: Running, phase: str, batch: list[Member], now: int,
                 before: str) -> None:
        assert self.producer is not None
        c = run.campaign
        variant_of = run.state.get("winner")
        records = []
        for m in batch:
            # rollout: the winner; with none (on_no_winner: split), every variant its share
            variant = m.variant if phase == "test" else (
                variant_of or split_variant(c.id, run.variants, m.customer_id))
            event = {
                "event_id": f"campaign:{c.id}:{m.customer_id}",
                "customer_id": m.customer_id,
                "occurred_at_ms": now,
                "source": f"campaign:{c.id}",
                "attributes": {"campaign_rule": c.rule, "campaign_variant": variant or "",
                               "campaign_phase": phase},
                "campaign_id": c.id,
                "promo_code": _opt_str(c.promotion.get("promo_code")),
                "discount_percent": _opt_int(c.promotion.get("discount_percent")),
                "valid_until": _opt_str(c.promotion.get("valid_until")),
                "landing_url": _opt_str(c.promotion.get("landing_url")),
            }
            records.append((m.customer_id.encode(), avro.encode("promotion", event)))
        sent = run.state["sent"]
        sent[phase] = sent.get(phase, 0) + len(batch)
        self._save(run, run.state["status"], records, previous=before)


    def _save(self, run: Running, status: str, records: list[tuple[bytes, bytes]],
              reason: str | None = None, decision: dict[str, Any] | None = None,
              previous: str | None = None) -> None:
        """One transaction: the records, the campaign's new state (and its decision). If
        it fails, the state goes back to `previous` (default: as it was on entry)."""
        assert self.producer is not None
        previous = previous or json.dumps(run.state)
        run.state["status"] = status
        if reason:
            run.state["reason"] = reason
        run.state["updated_at_ms"] = now_ms()
        began = time.monotonic()
        try:
            self.producer.begin_transaction()
            for key, value in records:
                self.producer.produce(self.promotion_topic, key=key, value=value)
            self.producer.produce(self.progress_topic, key=run.campaign.id.encode(),
                                  value=json.dumps(run.state).encode())
            if decision is not None:
                self.producer.produce(self.settings.topic(topics.CAMPAIGN_DECISIONS),
                                      key=run.campaign.id.encode(), value=json.dumps(decision).encode())
            self.producer.commit_transaction(30)
            metrics.TRANSACTION_SECONDS.labels("campaigns").observe(time.monotonic() - began)
        except KafkaException as exc:
            log.warning("campaign %s: transaction failed (%s); trying again",
                        run.campaign.id, exc.args[0] if exc.args else exc)
            run.state = json.loads(previous)  # cursors back where the last commit left them
            try:
                self.producer = kafka_io.abort_or_renew(self.producer, self._new_producer,
                                                        f"campaign {run.campaign.id}")
            except KafkaException:
                pass  # the broker is away: the next transaction tries again
            time.sleep(1.0)

    # ------------------------------------------------------------ decision
    def _evaluate(self, run: Running) -> None:
        c = run.campaign
        results = test_results(self.settings, run)
        rule = DecisionRule(min_sample_per_variant=c.decision.min_sample_per_variant,
                            win_probability=c.decision.win_probability,
                            max_opt_out_rate=c.guardrails.max_opt_out_rate,
                            max_failure_rate=c.guardrails.max_failure_rate,
                            guardrail_min_sample=c.guardrails.min_sample)
        verdict = decide(results, rule, seed=int.from_bytes(c.id.encode()[:8], "big"), final=True)
        winner = verdict.winner
        status, reason = "running", verdict.reason
        if verdict.action == "stop_guardrail":
            status = "stopped"
        elif verdict.action == "no_winner":
            if c.on_no_winner == "stop":
                status = "stopped"
            elif c.on_no_winner == "best_mean":
                means = {v.variant: (v.successes + 1) / (v.targeted + 2) for v in results}
                winner = max(sorted(means), key=lambda k: means[k])
                reason = f"{verdict.reason}; on_no_winner best_mean: {winner}"
        record = {"campaign_id": c.id, "decided_at_ms": now_ms(), "action": verdict.action,
                  "winner": winner, "probabilities": verdict.probabilities, "reason": reason,
                  "metric": c.metric.kind, "inputs": verdict.inputs}
        run.state.update(decision=record, winner=winner, phase="rollout")
        self._save(run, status, [], reason=reason, decision=record)
        log.info("campaign %s decided: %s (%s)", c.id, verdict.action, reason)


def test_results(settings: Settings, run: Running) -> list[VariantResult]:
    """The test group's counts per variant, from the fact topics."""
    c = run.campaign
    group = {m.customer_id: m.variant for zone in run.by_phase.get("test", {}).values()
             for m in zone if m.variant}
    targeted = Counter(group.values())
    message_variant: dict[str, str] = {}
    failed: Counter[str] = Counter()
    phones: dict[str, str] = {}
    for msg in kafka_io.read_topic(settings, topics.OUTCOMES, None, 30, idle=1.0):
        r = msg.record
        if not r or r.get("campaign_id") != c.id or r["customer_id"] not in group:
            continue
        variant = group[r["customer_id"]]
        if r["status"] == "submitted" and r.get("message_id"):
            message_variant[r["message_id"]] = variant
            phones[r.get("phone") or ""] = variant
        elif r["status"] in ("rejected", "failed", "expired"):
            failed[variant] += 1
    seen = reactions(settings, message_variant, c.metric.kind)
    delivered, successes = seen.delivered, seen.successes
    failed.update(seen.failed)
    opt_outs: Counter[str] = Counter()
    for msg in kafka_io.read_topic(settings, topics.CONSENT, None, 30, idle=1.0):
        r = msg.record
        if r and r["status"] == "opt_out" and r.get("phone") in phones \
                and r["changed_at_ms"] >= (run.state.get("test_started_at_ms") or 0):
            opt_outs[phones[r["phone"]]] += 1
    return [VariantResult(v, targeted[v], delivered[v], min(successes[v], targeted[v]),
                          opt_outs[v], min(failed[v], targeted[v] - delivered[v]))
            for v in run.variants]


def _follow(settings: Settings, name: str) -> tuple[Consumer, dict[str, dict[str, Any]]]:
    """A consumer of a one-partition catalog topic, and the newest value per key it read
    up to the topic's end now; the consumer goes on right after what it read.

    Reading the values and then following from the end with a second consumer would lose
    a record published between the two (a campaign started while its worker starts)."""
    topic = settings.topic(name)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"campaigns-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    starts: dict[str, dict[str, Any]] = {}
    latest = _newest(topic, ((m.partition(), m.key(), m.value())
                             for batch in read_to_end(consumer, topic, [0]) for m in batch
                             if m.error() is None and m.key() is not None), starts)
    # commands written before they carried the start's audience: the newest start still
    # in the topic (not compacted away yet) gives it
    for key, command in latest.items():
        if not command.get("snapshot") and key in starts:
            latest[key] = {**{k: starts[key][k] for k in START_FIELDS if k in starts[key]},
                           **command}
    return consumer, latest


def _command(msg: Any) -> dict[str, Any] | None:
    """The JSON object a control record holds; None for a tombstone or an error."""
    if msg.error() is not None or msg.key() is None or msg.value() is None:
        return None
    return _json_object(msg.topic(), msg.key(), msg.value())


def _json_object(topic: str, key: bytes, value: bytes) -> dict[str, Any] | None:
    """`value` as a JSON object; None, logged, when it is not one (the reader goes on)."""
    try:
        record = json.loads(value)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        log.error("skipped a record of %s with key %r: not a JSON object (%.80r)", topic, key, value)
        return None
    return record


def _local_minute(zone: str, at_ms: int) -> int:
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo(DEFAULT_ZONE)
    local = datetime.fromtimestamp(at_ms / 1000, tz)
    return local.hour * 60 + local.minute


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
