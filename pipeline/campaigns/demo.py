"""The campaign in `make demo`: simulated customers in two segments, `rassylka campaign
plan`, a test phase in which they prefer one variant, the automatic decision with its
numbers, the rollout, and the funnel by phase and variant next to the ground truth.

`pipeline.demo.run_demo` calls, in this order:

1. `demo_config`, before any stage starts: the demo's copy of `config/` with the campaign
   `demo_sale`, its segments, and marketing quiet hours lifted (every stage reads it);
2. `publish_customers`, next to the demo's own customers: ~3,000 profiles and consents;
3. once the rest of the demo is done and its sink is stopped, `plan_and_start`: the CLI's
   `campaign plan` and `campaign start` in child processes, which open the embedded
   ClickHouse the sink has just let go of (chDB lets one process hold a store at a time,
   and a process keeps it until it exits);
4. with a new sink running, `run_campaign`: the campaign worker sends the test group,
   simulated customers react through the real redirect service, the worker decides and
   rolls out, the rollout's recipients react too;
5. at the very end, after the last sink stopped, `print_funnel`: ClickHouse's funnel by
   phase and variant (`pipeline.campaigns.funnel`) next to what the customers did.

The demo process itself never opens chDB before step 5.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline import avro, kafka_io, topics
from pipeline.campaigns.model import CAMPAIGNS_DIR, duration_s, load_campaigns
from pipeline.campaigns.runner import TERMINAL, read_latest
from pipeline.procs import settings_env, stop
from pipeline.samples import make_profile, order_event
from pipeline.settings import ROOT, Settings
from pipeline.simulate import _CODE, GroundTruth, click_link

CAMPAIGN_ID = "demo_sale"
CLICK_P = {"a": 0.08, "b": 0.24}  # the simulated customers prefer b
PAY_P = 0.3  # of those who click, the share who then pay an order
CUSTOMERS = 3300  # 1,500 in each segment, 300 in neither
NO_CONSENT_EVERY = 10  # every tenth customer never opted in to marketing
FIRST_NUMBER = 79_251_000_000  # +7 925 100-00-00 on: numbers no other demo customer has

SEGMENTS = {
    "petersburg": {
        "description": "Demo: customers in St Petersburg and its region.",
        "where": {"region": ["RU-SPE", "RU-LEN"]},
    },
    "moscow_loyal": {
        "description": "Demo: loyal customers in Moscow.",
        "where": {"all": [{"region": "RU-MOW"}, {"tag": "loyal"}]},
    },
    "demo_audience": {
        "description": "Demo: the campaign demo_sale's audience, either of the two.",
        "where": {"any": [{"segment": "petersburg"}, {"segment": "moscow_loyal"}]},
    },
}

CAMPAIGN = """\
# The demo's campaign (written by pipeline/campaigns/demo.py into .run/demo/config):
# sized for ~3,000 simulated customers and a run of about a minute, not for production.
id: demo_sale
description: Demo sale for St Petersburg and loyal Muscovites, two texts tested first.
audience:
  segment: demo_audience
rule: promotion_discount
variants: [a, b]
promotion:
  promo_code: DEMO20
  discount_percent: 20
  landing_url: "https://shop.example.ru/sale"
pacing: {per_minute: 12000}
test: {fraction: 0.3, holdout: 0.1, evaluate_after: 25s}
metric: {kind: click, attribution: 1d}
decision: {min_sample_per_variant: 150, win_probability: 0.95}
guardrails: {max_opt_out_rate: 0.02, max_failure_rate: 0.2, min_sample: 150}
on_no_winner: best_mean
"""


# ---------------------------------------------------------------- config and customers
def demo_config(source: Path, target: Path) -> Path:
    """A fresh copy of `source` at `target` with the campaign `demo_sale`, its segments added
    to segments.yaml, and no marketing quiet hours (so the demo runs at any hour)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    limits_path = target / "limits.yaml"
    limits = yaml.safe_load(limits_path.read_text(encoding="utf-8")) or {}
    (limits.get("quiet_hours") or {}).pop("marketing", None)
    limits_path.write_text("# The demo's copy of config/limits.yaml (pipeline/campaigns/demo.py):\n"
                           "# marketing quiet hours removed, so the demo runs at any hour.\n"
                           + yaml.safe_dump(limits, allow_unicode=True, sort_keys=False),
                           encoding="utf-8")
    segments_path = target / "segments.yaml"
    segments = (yaml.safe_load(segments_path.read_text(encoding="utf-8"))
                if segments_path.is_file() else None) or {}
    segments.setdefault("segments", {}).update(SEGMENTS)
    segments_path.write_text(yaml.safe_dump(segments, allow_unicode=True, sort_keys=False),
                             encoding="utf-8")
    (target / CAMPAIGNS_DIR).mkdir(exist_ok=True)
    (target / CAMPAIGNS_DIR / f"{CAMPAIGN_ID}.yaml").write_text(CAMPAIGN, encoding="utf-8")
    return target


@dataclass(frozen=True)
class Customers:
    """The campaign's simulated customers: profiles, who is in the two segments, who opted in."""

    profiles: list[dict[str, Any]]
    audience: frozenset[str]
    opted_in: frozenset[str]


def make_customers(seed: int = 9) -> Customers:
    """Of every 11 customers, 5 live in St Petersburg, 5 are loyal Muscovites and one is in
    neither segment (a Muscovite without the tag, or in Kazan)."""
    rng = random.Random(seed)
    profiles, audience, opted_in = [], set(), set()
    for i in range(CUSTOMERS):
        profile = make_profile(rng, i)
        tags = [t for t in profile["segments"] if t != "loyal"]
        kind = i % 11
        if kind < 5:
            region, city = "RU-SPE", "Санкт-Петербург"
        elif kind < 10:
            region, city, tags = "RU-MOW", "Москва", [*tags, "loyal"]
        else:
            region, city = ("RU-MOW", "Москва") if i % 2 else ("RU-TA", "Казань")
        customer_id = f"camp-{i:05d}"
        profiles.append(profile | {
            "customer_id": customer_id, "phone": f"+{FIRST_NUMBER + i}",
            "time_zone": "Europe/Moscow", "segments": tags,
            "attributes": profile["attributes"] | {"region": region, "city": city}})
        if kind < 10:
            audience.add(customer_id)
        if i % NO_CONSENT_EVERY != NO_CONSENT_EVERY - 1:
            opted_in.add(customer_id)
    return Customers(profiles, frozenset(audience), frozenset(opted_in))


def publish_customers(settings: Settings) -> Customers:
    """Publish the campaign's customers and their marketing consent (most opted in)."""
    customers = make_customers()
    kafka_io.publish(settings, topics.PROFILES,
                     ((p["customer_id"], p) for p in customers.profiles), "customer_profile")
    changed = int(time.time() * 1000) - 86_400_000
    kafka_io.publish(settings, topics.CONSENT, [
        (f"{p['phone']}|marketing", {
            "phone": p["phone"], "scope": "marketing", "status": "opt_in", "source": "web_form",
            "changed_at_ms": changed, "customer_id": p["customer_id"],
            "evidence": "checkout checkbox"})
        for p in customers.profiles if p["customer_id"] in customers.opted_in], "consent_change")
    return customers


# ---------------------------------------------------------------- plan and start
def rassylka(settings: Settings, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`rassylka <args>` in a child process with `settings` (its config, store, topics)."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          env=settings_env(settings), capture_output=True, text=True,
                          timeout=timeout)


def plan_and_start(settings: Settings, console: Console) -> bool:
    """`rassylka campaign plan demo_sale`, then `start`, printed; False if either failed.
    Called while no sink holds the demo's embedded ClickHouse: both read the audience."""
    for command in ("plan", "start"):
        run = rassylka(settings, "campaign", command, CAMPAIGN_ID)
        console.print(f"[bold]$ rassylka campaign {command} {CAMPAIGN_ID}[/bold]")
        console.print(Text(run.stdout.rstrip()))
        if run.returncode != 0:
            console.print(Text(run.stderr.rstrip()[-2000:], style="red"))
            return False
    return True


# ---------------------------------------------------------------- following the campaign
class Facts:
    """The campaign's requests and outcomes, and every receipt, read as they arrive."""

    def __init__(self, settings: Settings) -> None:
        self.kinds = {settings.topic(topics.REQUESTS_MARKETING): "request",
                      settings.topic(topics.OUTCOMES): "outcome",
                      settings.topic(topics.RECEIPTS): "receipt"}
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"demo-campaign-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "isolation.level": "read_committed"})
        meta = self.consumer.list_topics(timeout=10)
        self.consumer.assign([TopicPartition(name, p, 0) for name in self.kinds
                              for p in meta.topics[name].partitions])
        self.requests: dict[str, dict[str, Any]] = {}  # request id → request
        self.outcomes: dict[str, dict[str, Any]] = {}  # customer id → outcome
        self.receipts: dict[str, list[str]] = {}  # message id → receipt states

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for msg in self.consumer.consume(1000, min(left, 0.2)):
                if msg.error() or msg.value() is None:
                    continue
                try:
                    _schema, r = avro.decode_any(msg.value())
                except avro.DecodeError:
                    continue  # not ours to judge: the sink dead-letters it
                kind = self.kinds[msg.topic()]
                if kind == "receipt":
                    self.receipts.setdefault(r["message_id"], []).append(r["state"])
                elif r.get("campaign_id") == CAMPAIGN_ID:
                    if kind == "request":
                        self.requests[r["request_id"]] = r
                    else:
                        self.outcomes[r["customer_id"]] = r

    def delivered(self, outcome: dict[str, Any]) -> bool:
        return "DELIVRD" in self.receipts.get(outcome["message_id"] or "", ())

    def settled(self, customers: set[str]) -> bool:
        """Every one of `customers` has an outcome, and every part sent has its receipt."""
        for customer in customers:
            o = self.outcomes.get(customer)
            if o is None:
                return False
            if o["status"] == "submitted" and \
                    len(self.receipts.get(o["message_id"], ())) < len(o["gateway_message_ids"]):
                return False
        return True

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Reactions:
    """What the simulated recipients did: clicks on delivered SMS (through the real redirect
    service, with the variant's probability), and orders paid by some who clicked."""

    settings: Settings
    redirect_port: int
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    seen: set[str] = field(default_factory=set)  # message ids read by their recipient
    clicked: set[str] = field(default_factory=set)  # message ids
    paid: dict[str, tuple[str, int]] = field(default_factory=dict)  # message id → order, amount
    waiting: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (pay at, outcome)

    def react(self, facts: Facts) -> None:
        """Recipients of newly delivered SMS click, or not; payers pay a second later."""
        for o in facts.outcomes.values():
            request = facts.requests.get(o["request_id"])
            if o["status"] != "submitted" or o["message_id"] in self.seen or request is None \
                    or not facts.delivered(o):
                continue
            self.seen.add(o["message_id"])
            codes = _CODE.findall(request["text"])
            if not codes or self.rng.random() >= CLICK_P.get(o["variant"], 0.0):
                continue
            status = click_link(self.redirect_port, codes[0])
            if status != 302:
                raise RuntimeError(f"redirect service answered {status} for a valid link")
            self.clicked.add(o["message_id"])
            if self.rng.random() < PAY_P:
                # clicks reach attribution before the orders do (real customers are slower)
                self.waiting.append((time.monotonic() + 1.0, o))

    def pay(self, everyone: bool = False) -> None:
        """Publish the orders that are due (all of them with `everyone`)."""
        if everyone and self.waiting:
            time.sleep(max(0.0, max(due for due, _o in self.waiting) - time.monotonic()))
        now = time.monotonic()
        due = [o for at, o in self.waiting if at <= now]
        self.waiting = [(at, o) for at, o in self.waiting if at > now]
        orders = []
        for o in due:
            order = order_event(self.rng, o["customer_id"], "paid", int(time.time() * 1000))
            order["order_id"] = f"DEMO-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:10]}"
            self.paid[o["message_id"]] = (order["order_id"], order["amount_minor"])
            orders.append((o["customer_id"], order | {"previous_status": "created"}))
        if orders:
            kafka_io.publish(self.settings, topics.ORDER_STATUS, orders, "order_status_changed")


@dataclass
class Cell:
    """Ground truth of one (phase, variant) of the campaign."""

    targeted: int = 0
    submitted: int = 0
    delivered: int = 0
    clicked: int = 0
    converted: int = 0
    revenue_minor: int = 0
    cost: float = 0.0


@dataclass
class CampaignRun:
    """How the campaign went: the frozen audience, its final state, what customers did."""

    members: dict[str, tuple[str, str]]  # customer id → (phase, variant; '' until decided)
    state: dict[str, Any]
    truth: dict[tuple[str, str], Cell]
    reactions: Reactions
    problems: list[str]

    def add_to(self, truth: GroundTruth) -> None:
        """Add the customers' clicks and orders to the demo's overall ground truth (its
        sent, delivered and cost come from every outcome: `pipeline.demo.settle_truth`)."""
        truth.clicked |= self.reactions.clicked
        truth.paid_orders.update(dict(self.reactions.paid.values()))


def run_campaign(settings: Settings, console: Console, status: Any,
                 start_worker: Callable[[], subprocess.Popen[bytes]], redirect_port: int,
                 customers: Customers) -> CampaignRun:
    """Follow the started campaign to its end with a campaign worker (`start_worker`) while
    simulated customers react; every wait is bounded and a problem is recorded, not raised."""
    campaign = load_campaigns(settings.config_dir)[CAMPAIGN_ID]
    members = _snapshot(settings)
    problems: list[str] = []
    phases = Counter(phase for phase, _v in members.values())
    same = set(members) == customers.audience
    console.log(f"audience frozen: {len(members):,} members ({_counts(phases)}); the "
                f"simulation put {len(customers.audience):,} customers in the two segments "
                + ("[green]✓[/green]" if same else "[red]✗[/red]"))
    if not same:
        problems.append(f"the segment query found {len(members)} members, "
                        f"the simulation made {len(customers.audience)}")
    test = {c for c, (phase, _v) in members.items() if phase == "test"}
    rollout = {c for c, (phase, _v) in members.items() if phase == "rollout"}
    worker = start_worker()
    facts = Facts(settings)
    people = Reactions(settings, redirect_port)
    state: dict[str, Any] = {}
    try:
        def progress(what: str) -> str:
            sent = Counter(o["variant"] for o in facts.outcomes.values() if o["status"] == "submitted")
            clicks = Counter(facts.outcomes[c]["variant"] for c in members
                             if c in facts.outcomes and facts.outcomes[c]["message_id"] in people.clicked)
            return (f"[bold]campaign {CAMPAIGN_ID}: {what}[/bold] — sent "
                    f"{_counts(sent) or 0}; clicked {_counts(clicks) or 0}")

        ok = _follow(facts, people, status, 90, lambda: facts.settled(test),
                     lambda: progress(f"test phase, {len(test)} members"), worker)
        people.pay(everyone=True)
        if not ok:
            problems.append("the test group's outcomes and receipts did not all arrive in 90 s")
        console.log(f"test phase sent and read: {_test_summary(members, facts, people)}")
        wait = duration_s(campaign.test.evaluate_after) + 60

        def decided() -> bool:
            nonlocal state
            state = read_latest(settings, topics.CAMPAIGN_PROGRESS).get(CAMPAIGN_ID) or {}
            return bool(state.get("decision")) or state.get("status") in TERMINAL

        if not _follow(facts, people, status, wait, decided, lambda: progress(
                f"the worker decides {campaign.test.evaluate_after} after the test phase"), worker):
            problems.append(f"no decision within {wait} s")
        _print_decision(settings, console, state, members, facts, people)

        def finished() -> bool:
            return decided() and state.get("status") in TERMINAL and (
                state.get("status") != "done" or facts.settled(rollout))

        if not _follow(facts, people, status, 120, finished,
                       lambda: progress(f"rollout to {len(rollout):,} members, "
                                        f"status {state.get('status')}"), worker):
            problems.append("the rollout did not finish within 120 s")
        people.pay(everyone=True)
        console.log(f"campaign {CAMPAIGN_ID} {state.get('status')}: sent "
                    f"{_counts(Counter(state.get('sent') or {}))}; simulated customers clicked "
                    f"{len(people.clicked)} and paid {len(people.paid)} orders")
        status.update("[bold]attribution credits the campaign's orders ...")
        orders = {order for order, _amount in people.paid.values()}
        credited = kafka_io.read_topic(settings, topics.CONVERSIONS, lambda m: orders <= {
            x.record["order_id"] for x in m if x.record}, 90)
        if not orders <= {x.record["order_id"] for x in credited if x.record}:
            problems.append("attribution did not credit every paid order within 90 s")
        facts.poll(2.0)  # anything late (a receipt after its message's first DELIVRD)
    finally:
        if worker.poll() is not None:
            problems.append(f"the campaign worker exited ({worker.returncode}); see its log "
                            f"(campaign-*.log in the demo's folder)")
        stop(worker)
        facts.close()
    if state.get("status") != "done" or (state.get("decision") or {}).get("action") != "rollout":
        problems.append(f"the campaign ended {state.get('status')}, "
                        f"decision {(state.get('decision') or {}).get('action')}")
    return CampaignRun(members, state, _truth(members, facts, people), people, problems)


def _follow(facts: Facts, people: Reactions, status: Any, timeout: float,
            done: Callable[[], bool], describe: Callable[[], str],
            worker: subprocess.Popen[bytes]) -> bool:
    """Read facts, let customers react and pay, show progress, until `done()`; False at
    `timeout`, or at once when the campaign worker has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        facts.poll(1.0)
        people.react(facts)
        people.pay()
        status.update(describe())
        if done():
            return True
    return False


def _snapshot(settings: Settings) -> dict[str, tuple[str, str]]:
    """The audience `campaign start` froze: customer id → (phase, variant or '')."""
    out: dict[str, tuple[str, str]] = {}
    for m in kafka_io.read_topic(settings, topics.CAMPAIGN_AUDIENCE, None, 30, idle=1.5):
        member = json.loads(m.value or b"null")
        if member and (m.key or b"").startswith(f"{CAMPAIGN_ID}|".encode()):
            out[member["customer_id"]] = (member["phase"], member["variant"] or "")
    return out


def _truth(members: dict[str, tuple[str, str]], facts: Facts,
           people: Reactions) -> dict[tuple[str, str], Cell]:
    """Ground truth per (phase, variant); rollout members count under the variant they got."""
    cells: dict[tuple[str, str], Cell] = {}
    for customer, (phase, variant) in sorted(members.items()):
        o = facts.outcomes.get(customer)
        cell = cells.setdefault((phase, variant or (o["variant"] if o else "")), Cell())
        cell.targeted += 1
        if o is None or o["status"] != "submitted":
            continue
        cell.submitted += 1
        cell.cost += o["cost"]
        cell.delivered += facts.delivered(o)
        cell.clicked += o["message_id"] in people.clicked
        if o["message_id"] in people.paid:
            cell.converted += 1
            cell.revenue_minor += people.paid[o["message_id"]][1]
    return cells


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items()))


def _test_summary(members: dict[str, tuple[str, str]], facts: Facts, people: Reactions) -> str:
    parts = []
    for variant in sorted(CLICK_P):
        group = [facts.outcomes[c] for c, (phase, v) in members.items()
                 if phase == "test" and v == variant and c in facts.outcomes]
        delivered = [o for o in group if o["status"] == "submitted" and facts.delivered(o)]
        clicked = sum(o["message_id"] in people.clicked for o in delivered)
        parts.append(f"{variant}: {len(delivered)} delivered, {clicked} clicked "
                     f"(customers click {CLICK_P[variant]:.0%} of delivered {variant})")
    return "; ".join(parts)


def _print_decision(settings: Settings, console: Console, state: dict[str, Any],
                    members: dict[str, tuple[str, str]], facts: Facts, people: Reactions) -> None:
    """`rassylka campaign status demo_sale` (the decision and its numbers), and the clicks
    it counted next to the clicks the simulated test group made."""
    run = rassylka(settings, "campaign", "status", CAMPAIGN_ID, timeout=60)
    console.print(f"[bold]$ rassylka campaign status {CAMPAIGN_ID}[/bold]")
    console.print(Text((run.stdout or run.stderr).rstrip()))
    decision = state.get("decision") or {}
    counted = {v: x.get("successes") for v, x in (decision.get("inputs") or {}).get("variants", {}).items()}
    made = Counter(facts.outcomes[c]["variant"] for c, (phase, _v) in members.items()
                   if phase == "test" and c in facts.outcomes
                   and facts.outcomes[c]["message_id"] in people.clicked)
    console.print(f"the decision counted clicks {counted}; the simulated test group made "
                  f"{dict(sorted(made.items()))}", highlight=False)


# ---------------------------------------------------------------- the final funnel
FIGURES = ("targeted", "submitted", "delivered", "clicked", "converted", "revenue", "cost")


def print_funnel(console: Console, run: CampaignRun, rows: list[dict[str, Any]]) -> bool:
    """The simulation's ground truth by phase and variant, then ClickHouse's funnel
    (`campaign_funnel` rows) with ✓ where each figure equals it; True when all do."""
    truth = Table(title=f"Campaign {CAMPAIGN_ID}: what the simulated customers did (ground truth)")
    report = Table(title=f"Campaign {CAMPAIGN_ID} by phase and variant (ClickHouse)",
                   caption="✓: equals the ground truth above; ✗ shows it after the ≠")
    for table in (truth, report):
        for column in ("phase", "variant", *FIGURES[:5], "revenue, ₽", "cost, ₽"):
            table.add_column(column, justify="left" if column in ("phase", "variant") else "right")
    got = {(r["phase"], r["variant"] or ""): r for r in rows}
    ok = set(got) == set(run.truth)
    for key in sorted(set(run.truth) | set(got), key=_phase_order):
        want = _figures(run.truth.get(key))
        have = _row_figures(got.get(key))
        label = (key[0], key[1] or "—")  # the holdout has no variant
        truth.add_row(*label, *map(_show, want))
        cells = []
        for w, h in zip(want, have, strict=True):
            ok &= w == h
            cells.append(f"{_show(h)} [green]✓[/green]" if w == h
                         else f"[red]{_show(h)} ≠ {_show(w)} ✗[/red]")
        report.add_row(*label, *cells)
    console.print(truth)
    console.print(report)
    return ok


def _show(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _phase_order(key: tuple[str, str]) -> tuple[int, str]:
    return ({"test": 0, "holdout": 1, "rollout": 2}.get(key[0], 3), key[1])


def _figures(cell: Cell | None) -> list[Any]:
    c = cell or Cell()
    return [c.targeted, c.submitted, c.delivered, c.clicked, c.converted,
            round(c.revenue_minor / 100, 2), round(c.cost, 2)]


def _row_figures(row: dict[str, Any] | None) -> list[Any]:
    r = row or {}
    return [int(r.get("targeted", 0)), int(r.get("submitted", 0)), int(r.get("delivered", 0)),
            int(r.get("clicked", 0)), int(r.get("converted", 0)),
            round(int(r.get("revenue_minor", 0)) / 100, 2), round(float(r.get("cost", 0)), 2)]
