"""`make demo`: the pipeline on sample data against the real broker, printed as tables.

Starts an SMSC simulator (real SMPP), a router and a sender worker in a fresh topic
namespace, publishes customers, consents, events and a few bad inputs, lets a customer
reply STOP, and prints what happened to every request. Then it runs a campaign on a few
thousand simulated customers (`pipeline.campaigns.demo`): plan, test, the automatic
decision, the rollout, and its funnel by phase and variant.

Everything it writes stays under `.run/demo/` (`settings.DEMO_DIR`): worker logs, its copy
of the configuration `.run/demo/config` (with the demo's campaign, and without marketing
quiet hours), and its own embedded ClickHouse folder `.run/demo/clickhouse`; both are
wiped at each run, so the demo never mixes with `.run/clickhouse`, the default store of
`rassylka sink` and `rassylka report`. Embedded ClickHouse lets one process hold a store
at a time: the sink holds it while it runs, the campaign's `plan` and `start` between two
sinks, and the demo process itself only at the very end, to read the report.
The redirect service runs with `--dev`: links are signed with the public development
secret unless RASSYLKA_LINK_SECRET is set.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import urllib.request
import uuid
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline import demo_doors as doors_demo
from pipeline import kafka_io, progress, topics
from pipeline.campaigns import demo as campaign_demo
from pipeline.kafka_io import Received
from pipeline.offsets import wait_committed_to_end
from pipeline.procs import free_port, start_simulator, start_stage, stop
from pipeline.samples import demo_samples, promotion_event
from pipeline.sender.decision import Reject
from pipeline.sender.numbers import normalise
from pipeline.settings import DEMO_DIR, Settings
from pipeline.simulate import GroundTruth, simulate
from pipeline.topics import create_topics


def _wait(settings: Settings, topic: str, count: int, timeout: float, full_name: bool = False) -> list[Received]:
    cfg = replace(settings, topic_prefix="") if full_name else settings
    return kafka_io.read_topic(cfg, topic, lambda msgs: len(msgs) >= count, timeout)


def _mo(control: int, source: str, text: str) -> None:
    body = json.dumps({"from": source, "to": "SHOPRU", "text": text}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{control}/mo", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=15).close()


def run_demo(base: Settings, console: Console) -> int:
    """Run the demo in a fresh topic namespace; returns the process exit code."""
    tag = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    log_dir = DEMO_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    clickhouse_dir = log_dir / "clickhouse"
    if base.clickhouse_url.startswith("chdb://"):
        shutil.rmtree(clickhouse_dir, ignore_errors=True)
        base = replace(base, clickhouse_url=f"chdb://{clickhouse_dir}")
    config_dir = campaign_demo.demo_config(base.config_dir, log_dir / "config")
    settings = replace(base, topic_prefix=f"demo{tag}.", app_id=f"demo{tag}", config_dir=config_dir)
    samples = demo_samples()
    procs: list[subprocess.Popen[bytes]] = []
    doors = doors_demo.Doors()
    doors_ok = False

    def stage(args: list[str], name: str) -> subprocess.Popen[bytes]:
        proc = start_stage(settings, args, log_dir / f"{name}-{tag}.log")
        procs.append(proc)
        return proc

    try:
        with progress.status(console, "[bold]creating topics ...") as status:
            create_topics(settings)
            console.log(f"topics created with prefix [cyan]{settings.topic_prefix}[/cyan] "
                        f"on {settings.kafka_bootstrap}")
            console.log(f"quiet hours lifted in the demo's copy of config/ ({config_dir}) "
                        f"so it runs at any hour")
            status.update("[bold]starting the SMSC simulator (SMPP) ...")
            sim, port, control = start_simulator(log_dir, "--latency-ms", "5-30",
                                                 "--receipt-delay-ms", "200-1500", "--seed", "7")
            procs.append(sim)
            console.log(f"SMSC simulator listening on 127.0.0.1:{port} (SMPP 3.4)")
            status.update("[bold]starting the router and sender workers ...")
            procs.append(start_stage(settings, ["router", "--loglevel", "info"],
                                     log_dir / f"router-{tag}.log"))
            procs.append(start_stage(settings, ["sender"], log_dir / f"sender-{tag}.log",
                                     {"RASSYLKA_SMPP_PORT": str(port)}))
            status.update("[bold]starting click redirect, attribution and analytics sink ...")
            redirect_port = free_port()
            procs.append(start_stage(settings, ["redirect", "--dev", "--host", "127.0.0.1",
                                                "--port", str(redirect_port)],
                                     log_dir / f"redirect-{tag}.log"))
            procs.append(start_stage(settings, ["attribution"], log_dir / f"attribution-{tag}.log"))
            sink = stage(["sink"], "sink")
            status.update(f"[bold]publishing {len(samples.profiles)} customer profiles and consents ...")
            kafka_io.publish(settings, topics.PROFILES,
                             ((p["customer_id"], p) for p in samples.profiles), "customer_profile")
            numbers = {p["customer_id"]: normalise(p["phone"], p["country"], frozenset({"RU"}))
                       for p in samples.profiles}
            opted_in = [cid for i, cid in enumerate(numbers) if i % 4 != 3]
            now = int(time.time() * 1000)
            kafka_io.publish(settings, topics.CONSENT, [
                (f"{numbers[cid].e164}|marketing", {
                    "phone": numbers[cid].e164, "scope": "marketing", "status": "opt_in",
                    "source": "web_form", "changed_at_ms": now - 86_400_000,
                    "customer_id": cid, "evidence": "checkout checkbox"})
                for cid in opted_in if not isinstance(numbers[cid], Reject)], "consent_change")
            customers = campaign_demo.publish_customers(settings)
            read = wait_committed_to_end(settings, "router", topics.PROFILES, 60)
            console.log(f"router {'has read' if read else 'has NOT yet read'} all "
                        f"{len(samples.profiles)} profiles; "
                        f"{len(opted_in)} customers opted in to marketing "
                        f"(and {len(customers.profiles):,} more customers for the campaign, "
                        f"{len(customers.opted_in):,} opted in)")
            status.update("[bold]starting the HTTP API and the database outbox ...")
            api_port = free_port()
            api_key = doors_demo.start_api(settings, stage, api_port)
            doors_demo.open_outbox(settings, stage, doors_demo.outbox_customers(
                customers.profiles, customers.audience), doors)
            status.update(f"[bold]publishing {len(samples.events)} events and {len(samples.bad)} bad inputs ...")
            to_api, direct = doors_demo.split_for_api(samples.events)
            by_topic: dict[str, list[Any]] = {}
            for topic, record in direct:
                by_topic.setdefault(topic, []).append((record["customer_id"], record))
                doors.kafka.add(record["event_id"])
            for topic, items in by_topic.items():
                kafka_io.publish(settings, topic, items, topics.EVENT_TOPICS[topic])
            doors.api.update(doors_demo.post_events(api_port, api_key, to_api))
            for topic, key, value, _reason in samples.bad:
                kafka_io.publish(settings, topic, [(key, value)])
            doors_demo.wait_outbox_events(settings, doors)
            console.log(f"events published: {len(doors.kafka)} to Kafka, {len(doors.api)} through "
                        f"the HTTP API (202 after the broker stored them), {len(doors.outbox)} from "
                        f"{doors.outbox_rows} outbox rows via Debezium and `rassylka outbox`")
            status.update("[bold]waiting for the router: requests and dead letters ...")
            dead = _unique_dead_letters(_wait(settings, topics.DEAD_LETTERS, len(samples.bad), 60))
            requests = (
                kafka_io.read_topic(settings, topics.REQUESTS_TRANSACTIONAL, None, 30, idle=3.0)
                + kafka_io.read_topic(settings, topics.REQUESTS_MARKETING, None, 30, idle=1.0)
            )
            console.log(f"router produced {len(requests)} requests")
            status.update("[bold]waiting for the sender: outcomes and delivery receipts ...")
            outcomes = kafka_io.read_topic(settings, topics.OUTCOMES, None, 60, idle=4.0)
            kafka_io.read_topic(settings, topics.RECEIPTS,
                                lambda m: len(m) >= sum(len(o.record["gateway_message_ids"])
                                                        for o in outcomes), 20)
            receipts = kafka_io.read_topic(settings, topics.RECEIPTS, None, 10, idle=1.0)
            console.log(f"sender decided {len(outcomes)} requests; {len(receipts)} receipts arrived")
            stop_demo = _stop_reply(settings, console, status, control, numbers, outcomes, requests)
            status.update("[bold]customers read their SMS: some click, some pay ...")
            _wait_redirect_ready(redirect_port)
            truth = simulate(settings, redirect_port, requests, outcomes, receipts)
            console.log(f"simulated customers: {len(truth.clicked)} clicked, "
                        f"{len(truth.paid_orders)} paid an order")
            conversions = kafka_io.read_topic(settings, topics.CONVERSIONS,
                                              lambda m: len(m) >= len(truth.paid_orders), 120)
            if len(conversions) < len(truth.paid_orders):
                console.print(f"[red]attribution credited {len(conversions)} of "
                              f"{len(truth.paid_orders)} paid orders within 120 s; "
                              f"see {log_dir}/attribution-{tag}.log[/red]")
            console.log(f"attribution credited {len(conversions)} conversions")
            _print_requests(console, requests, outcomes, receipts)
            doors_ok = doors_demo.print_doors(console, doors, requests, outcomes)
            _print_dead_letters(console, dead)
            if stop_demo:
                _print_stop(console, *stop_demo)
            console.rule(f"Campaign {campaign_demo.CAMPAIGN_ID}")
            status.update("[bold]the sink stores the customers, then lets go of ClickHouse ...")
            wait_sink_drained(settings, 90)
            stop(sink)
            status.update("[bold]campaign plan and start read the audience in ClickHouse ...")
            started = campaign_demo.plan_and_start(settings, console)
            sink = stage(["sink"], "sink")
            campaign = None
            if started:
                campaign = campaign_demo.run_campaign(
                    settings, console, status, lambda: stage(["campaign", "worker"], "campaign"),
                    redirect_port, customers)
                campaign.add_to(truth)
            status.update("[bold]waiting for the pipeline to settle and the sink to store everything ...")
            final_outcomes = kafka_io.read_topic(settings, topics.OUTCOMES, None, 60, idle=4.0)
            final_receipts = kafka_io.read_topic(settings, topics.RECEIPTS, None, 30, idle=3.0)
            settle_truth(truth, final_outcomes, final_receipts)
            wait_sink_drained(settings, 90)
            stop(sink)
            rows = report_rows(settings, campaign_demo.CAMPAIGN_ID)
        from pipeline.analytics.report import render_table

        console.print(render_table(rows["by_variant"], title="Funnel by rule and variant (ClickHouse)"))
        matches = _print_truth(console, truth, rows["total"][0] if rows["total"] else {})
        campaign_ok = campaign is not None and not campaign.problems
        if campaign is not None:
            campaign_ok &= campaign_demo.print_funnel(console, campaign, rows["campaign"])
            for problem in campaign.problems:
                console.print(f"[red]campaign {campaign_demo.CAMPAIGN_ID}: {problem}[/red]")
        console.print(f"Query it yourself: CLICKHOUSE_URL=chdb://{clickhouse_dir} "
                      f".venv/bin/rassylka report --by rule_id --by variant  (or: campaign report "
                      f"{campaign_demo.CAMPAIGN_ID})", highlight=False)
        expected = {reason for *_, reason in samples.bad}
        got = {m.record["reason"] for m in dead if m.record}
        submitted = [o for o in outcomes if o.record["status"] == "submitted"]
        if not requests or not submitted or not expected <= got or not matches or not campaign_ok \
                or not doors_ok:
            console.print(f"[red]demo incomplete: {len(requests)} requests, {len(submitted)} sent, "
                          f"dead-letter reasons {got}, campaign "
                          f"{'as simulated' if campaign_ok else 'NOT as simulated'}[/red]")
            return 1
        assert campaign is not None
        console.print(f"[green]demo done[/green]: {len(requests)} SMS rendered, {len(submitted)} "
                      f"submitted over SMPP, {len(dead)} bad inputs dead-lettered with their reasons; "
                      f"campaign {campaign_demo.CAMPAIGN_ID} rolled out "
                      f"{campaign.state.get('winner')} to "
                      f"{sum(1 for p, _v in campaign.members.values() if p == 'rollout'):,} "
                      f"members. Logs: {log_dir}")
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)
        doors.close()  # the demo's connector, replication slot and ERP database


def _stop_reply(settings: Settings, console: Console, status: Any, control: int,
                numbers: dict[str, Any], outcomes: list[Received],
                requests: list[Received]) -> tuple[str, str, dict[str, Any], dict[str, Any]] | None:
    """A customer who got a promotion replies СТОП; their next promotion is suppressed."""
    promo_customers = {r.record["customer_id"] for r in requests if r.record["lane"] == "marketing"}
    sent = [o.record for o in outcomes
            if o.record["status"] == "submitted" and o.record["customer_id"] in promo_customers]
    if not sent:
        return None
    customer = sent[0]["customer_id"]
    e164 = numbers[customer].e164
    status.update(f"[bold]customer {customer} replies 'СТОП' ...")
    _mo(control, e164, "СТОП")
    change = kafka_io.read_topic(settings, topics.CONSENT, lambda m: any(
        x.record and x.record["phone"] == e164 and x.record["status"] == "opt_out" for x in m), 30)
    opt_out = next(x.record for x in change if x.record and x.record["status"] == "opt_out")
    event = promotion_event(random.Random(99), customer, int(time.time() * 1000), "black-friday-2")
    kafka_io.publish(settings, topics.PROMOTION, [(customer, event)], "promotion")
    after = kafka_io.read_topic(settings, topics.OUTCOMES, lambda m: any(
        x.record and x.record["customer_id"] == customer and x.record["campaign_id"] == "black-friday-2"
        for x in m), 40)
    outcome = next(x.record for x in after if x.record and x.record["campaign_id"] == "black-friday-2")
    console.log(f"STOP from {customer}: consent changed, next promotion {outcome['status']} "
                f"({outcome['reason']})")
    return customer, e164, opt_out, outcome


def _print_requests(console: Console, requests: list[Received], outcomes: list[Received],
                    receipts: list[Received]) -> None:
    by_request = {o.record["request_id"]: o.record for o in outcomes}
    states: dict[str, list[str]] = {}
    for r in receipts:
        states.setdefault(r.record["message_id"], []).append(r.record["state"])
    table = Table(title="Notification requests → outcome → delivery", show_lines=True, expand=True)
    for column, kwargs in (("customer", {}), ("rule / variant / locale", {}), ("lane", {}),
                           ("text", {"ratio": 1}), ("outcome", {}), ("delivery", {})):
        table.add_column(column, **kwargs)
    for m in sorted(requests, key=lambda m: (m.record["lane"], m.record["customer_id"])):
        r = m.record
        o = by_request.get(r["request_id"])
        if o is None:
            outcome = "[yellow]held[/yellow]\nquiet hours or schedule"
        elif o["status"] == "submitted":
            outcome = f"[green]submitted[/green]\n{o['segments']}×{o['encoding']}, {o['cost']:.2f} ₽"
        else:
            outcome = f"[red]{o['status']}[/red]\n{o['reason']}"
        delivery = ", ".join(sorted(set(states.get(r["request_id"], [])))) or "-"
        table.add_row(r["customer_id"], f"{r['rule_id']}\n{r['variant']} / {r['locale']}", r["lane"],
                      r["text"], outcome, delivery)
    console.print(table)


def _print_dead_letters(console: Console, dead: list[Received]) -> None:
    table = Table(title="Dead letters", show_lines=True, expand=True)
    for column in ("topic @ offset", "reason", "error", "original bytes"):
        table.add_column(column)
    for m in dead:
        r = m.record
        raw = (r["value"] or b"")[:24]
        table.add_row(f"{r['source_topic']} @ {r['source_offset']}", r["reason"], r["error"][:120],
                      repr(raw) + ("…" if len(r["value"] or b"") > 24 else ""))
    console.print(table)


def _print_stop(console: Console, customer: str, e164: str, change: dict[str, Any],
                outcome: dict[str, Any]) -> None:
    table = Table(title="A STOP reply opts the number out", show_lines=True)
    for column in ("customer", "number", "consent change", "next promotion"):
        table.add_column(column)
    masked = e164[:5] + "*" * (len(e164) - 7) + e164[-2:]
    table.add_row(customer, masked,
                  f"{change['scope']}: {change['status']} (source {change['source']}, '{change['evidence']}')",
                  f"{outcome['status']}: {outcome['reason']}")
    console.print(table)


def _wait_redirect_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the redirect service did not become ready")


def settle_truth(truth: GroundTruth, outcomes: list[Received], receipts: list[Received]) -> None:
    """Sent, delivered and cost as the gateway saw them once the pipeline is quiet."""
    submitted = [o.record for o in outcomes if o.record and o.record["status"] == "submitted"]
    truth.sent = len(submitted)
    truth.cost = sum(o["cost"] for o in submitted)
    sent_ids = {o["message_id"] for o in submitted}
    truth.delivered = len({r.record["message_id"] for r in receipts
                           if r.record and r.record["state"] == "DELIVRD"
                           and r.record["message_id"] in sent_ids})


def wait_sink_drained(settings: Settings, timeout: float) -> None:
    """Until the sink's group has committed past the last record of every topic it stores.

    Transactional topics end with commit markers, which a consumer never commits past
    when nothing follows them, so the target is the last *record* of each partition.
    """
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.analytics.sink import SOURCE_TOPICS

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"{settings.app_id}-sink", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "enable.partition.eof": False})
    try:
        target = _last_records(consumer, [settings.topic(name) for name in SOURCE_TOPICS])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = consumer.committed([TopicPartition(t, p) for t, p in target], timeout=10)
            if all(tp.offset >= target[(tp.topic, tp.partition)] for tp in committed):
                return
            time.sleep(0.5)
    finally:
        consumer.close()
    raise RuntimeError("the analytics sink did not catch up in time")


def _last_records(consumer: Any, names: list[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) → offset after its last record, read to the end (never commits)."""
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(timeout=10)
    ends = {}
    for name in names:
        for p in meta.topics[name].partitions if name in meta.topics else ():
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            if high > low:
                ends[(name, p)] = high
    target: dict[tuple[str, int], int] = {}
    consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
    deadline, last_new = time.monotonic() + 60, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_new < 3.0:
        for msg in consumer.consume(5000, 0.5):
            last_new = time.monotonic()
            if not msg.error():
                target[(msg.topic(), msg.partition())] = msg.offset() + 1
        positions = consumer.position([TopicPartition(t, p) for t, p in ends])
        if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in positions):
            break  # past every record (and the transaction markers after them)
    consumer.unassign()
    return target


def report_rows(settings: Settings, campaign_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The funnel from ClickHouse: in total, by rule and variant, and (with `campaign_id`)
    the campaign's by phase and variant."""
    from connectors.clickhouse import connect
    from pipeline.analytics.report import funnel

    client = connect(settings.clickhouse_url)
    rows = {"total": funnel(client), "by_variant": funnel(client, ["rule_id", "variant"])}
    if campaign_id is not None:
        from pipeline.campaigns.funnel import campaign_funnel

        rows["campaign"] = campaign_funnel(client, campaign_id)
    return rows


def _print_truth(console: Console, truth: GroundTruth, total: dict[str, Any]) -> bool:
    """Ground truth next to the report; True when every figure matches."""
    pairs = [
        ("sent", truth.sent, total.get("sent")),
        ("delivered", truth.delivered, total.get("delivered")),
        ("clicked", len(truth.clicked), total.get("clicked")),
        ("converted", len(truth.paid_orders), total.get("converted")),
        ("revenue, ₽", round(truth.revenue_minor / 100, 2), round(float(total.get("revenue", 0)), 2)),
        ("cost, ₽", round(truth.cost, 2), round(float(total.get("cost", 0)), 2)),
    ]
    table = Table(title="Ground truth of the simulation vs the ClickHouse report")
    for column in ("figure", "simulation", "report", ""):
        table.add_column(column)
    ok = True
    for name, want, got in pairs:
        same = want == got
        ok &= same
        table.add_row(name, str(want), str(got), "[green]✓[/green]" if same else "[red]✗[/red]")
    console.print(table)
    return ok


def _unique_dead_letters(dead: list[Received]) -> list[Received]:
    """One row per failed input: the router is at-least-once, so a replay after a rebalance
    can dead-letter the same input twice; (topic, partition, offset) identifies it."""
    seen: dict[tuple[str, int, int], Received] = {}
    for m in dead:
        r = m.record
        seen.setdefault((r["source_topic"], r["source_partition"], r["source_offset"]), m)
    return list(seen.values())
