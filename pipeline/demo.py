"""`make demo`: the pipeline on sample data against the real broker, printed as tables."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline import kafka_io, topics
from pipeline.kafka_io import Received
from pipeline.procs import start_stage, stop
from pipeline.samples import demo_samples
from pipeline.settings import ROOT, Settings
from pipeline.topics import create_topics


def _wait(settings: Settings, topic: str, count: int, timeout: float, full_name: bool = False) -> list[Received]:
    cfg = replace(settings, topic_prefix="") if full_name else settings
    return kafka_io.read_topic(cfg, topic, lambda msgs: len(msgs) >= count, timeout)


def run_demo(base: Settings, console: Console) -> int:
    """Run the demo in a fresh topic namespace; returns the process exit code."""
    tag = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    settings = replace(base, topic_prefix=f"demo{tag}.", app_id=f"demo{tag}")
    log_dir = ROOT / ".run" / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    samples = demo_samples()
    procs = []
    try:
        with console.status("[bold]creating topics ...") as status:
            create_topics(settings)
            console.log(f"topics created with prefix [cyan]{settings.topic_prefix}[/cyan] "
                        f"on {settings.kafka_bootstrap}")
            status.update("[bold]starting the router worker (Faust) ...")
            procs.append(start_stage(settings, ["router", "--loglevel", "warn"],
                                     log_dir / f"router-{tag}.log"))
            status.update(f"[bold]publishing {len(samples.profiles)} customer profiles ...")
            kafka_io.publish(settings, topics.PROFILES,
                             ((p["customer_id"], p) for p in samples.profiles), "customer_profile")
            changelog = f"{settings.app_id}-router-profiles-changelog"
            loaded = _wait(settings, changelog, len(samples.profiles), 60, full_name=True)
            console.log(f"router table holds {len(loaded)} profiles (from its changelog)")
            status.update(f"[bold]publishing {len(samples.events)} events and {len(samples.bad)} bad inputs ...")
            by_topic: dict[str, list] = {}
            for topic, record in samples.events:
                by_topic.setdefault(topic, []).append((record["customer_id"], record))
            for topic, items in by_topic.items():
                kafka_io.publish(settings, topic, items, topics.EVENT_TOPICS[topic])
            for topic, key, value, _reason in samples.bad:
                kafka_io.publish(settings, topic, [(key, value)])
            console.log("events published")
            status.update("[bold]waiting for notification requests and dead letters ...")
            dead = _wait(settings, topics.DEAD_LETTERS, len(samples.bad), 60)
            requests = (
                kafka_io.read_topic(settings, topics.REQUESTS_TRANSACTIONAL, None, 30, idle=3.0)
                + kafka_io.read_topic(settings, topics.REQUESTS_MARKETING, None, 30, idle=1.0)
            )
        _print_requests(console, requests)
        _print_dead_letters(console, dead)
        expected = {reason for *_, reason in samples.bad}
        got = {m.record["reason"] for m in dead if m.record}
        if not requests or not expected <= got:
            console.print(f"[red]demo incomplete: {len(requests)} requests, dead-letter reasons {got}[/red]")
            return 1
        console.print(f"[green]demo done[/green]: {len(requests)} SMS rendered, "
                      f"{len(dead)} bad inputs dead-lettered with their reasons. Logs: {log_dir}")
        return 0
    finally:
        for proc in procs:
            stop(proc)


def _print_requests(console: Console, requests: list[Received]) -> None:
    table = Table(title="Notification requests (router output)", show_lines=True, expand=True)
    for column, kwargs in (("customer", {}), ("rule / variant", {}), ("lane", {}), ("loc", {}),
                           ("text", {"ratio": 1})):
        table.add_column(column, **kwargs)
    for m in sorted(requests, key=lambda m: (m.record["lane"], m.record["customer_id"])):
        r = m.record
        table.add_row(r["customer_id"], f"{r['rule_id']}\n{r['variant']}", r["lane"], r["locale"], r["text"])
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


__all__ = ["run_demo", "Path"]
