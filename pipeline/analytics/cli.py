"""Analytics commands: `rassylka analytics migrate|query`, `rassylka report`, `rassylka sink`.

Mounted by `pipeline.cli`. Heavy imports (the ClickHouse driver, chDB, Kafka) happen
inside the commands so that `rassylka --help` stays fast. Every command reads its
settings from the environment (`CLICKHOUSE_URL`, `KAFKA_BOOTSTRAP`, ...).

With the embedded chDB engine only one process can hold the data folder: stop the sink
before querying it from another process (a ClickHouse server has no such limit).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import sys
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from pipeline.settings import Settings

analytics_cli = typer.Typer(
    help="Analytics in ClickHouse: schema migrations and ad-hoc SQL.", no_args_is_help=True
)
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class OutputFormat(StrEnum):
    """How results are printed: a table for people, CSV or JSON for programs."""

    table = "table"
    csv = "csv"
    json = "json"


def open_client(migrate_first: bool) -> Any:
    """The ClickHouse client of this deployment; exits 1 with a message when unreachable."""
    from connectors.clickhouse import ClickHouseLocked, connect, migrate, redact
    from pipeline.errors import RassylkaError

    url = Settings.from_env().clickhouse_url
    try:
        client = connect(url)
        if migrate_first:
            migrate(client)
    except ClickHouseLocked:
        raise  # names the folder and what to do; printed by the CLI boundary
    except RassylkaError as exc:
        err_console.print(f"[red]ClickHouse at {redact(url)}: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    return client


@analytics_cli.command("migrate")
def migrate_command(
    database: str = typer.Option("rassylka", help="Target database."),
) -> None:
    """Apply the ClickHouse migrations of infra/clickhouse/ not applied yet (idempotent)."""
    from connectors.clickhouse import migrate, redact

    client = open_client(migrate_first=False)
    try:
        applied = migrate(client, database)
    finally:
        client.close()
    if applied:
        for name in applied:
            console.print(f"[green]✓[/green] applied {name}", highlight=False)
    else:
        console.print(f"schema of {database} on {redact(client.url)} is up to date",
                      highlight=False)


@analytics_cli.command("query")
def query_command(
    sql: str = typer.Argument(..., help="One SQL statement, e.g. SELECT count() FROM rassylka.messages"),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, csv or json."),
) -> None:
    """Run one SQL query against the analytics store and print its rows."""
    from pipeline.errors import RassylkaError

    client = open_client(migrate_first=False)
    try:
        rows = client.query(sql)
    except RassylkaError as exc:
        err_console.print(f"[red]query failed: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    _print_rows(rows, fmt, title=None)


def report_command(
    rule: list[str] = typer.Option(None, "--rule", help="Only these rules (repeatable)."),
    campaign: list[str] = typer.Option(None, "--campaign", help="Only these campaigns (repeatable)."),
    variant: list[str] = typer.Option(None, "--variant", help="Only these template variants (repeatable)."),
    since: str = typer.Option(None, help="First day, inclusive (YYYY-MM-DD)."),
    until: str = typer.Option(None, help="Last day, inclusive (YYYY-MM-DD)."),
    by: list[str] = typer.Option(
        None, "--by", help="Group by: day, lane, rule, campaign, variant, operator, region "
        "(repeatable or comma-separated)."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, csv or json."),
) -> None:
    """Print the funnel: sent → delivered → clicked → converted, rates, revenue and cost.

    Says on stderr which store it read (stdout stays the report, for CSV and JSON), and how
    to read the demo's store when this one has no messages and the demo's has.
    """
    from connectors.clickhouse import redact
    from pipeline.analytics.report import empty_store_hint, funnel
    from pipeline.errors import RassylkaError
    from pipeline.settings import DEMO_DIR

    group_by = [name.strip() for item in by or [] for name in item.split(",") if name.strip()]
    filters = {
        name: values
        for name, values in (("rule", rule), ("campaign", campaign), ("variant", variant))
        if values
    }
    for label, day in (("--since", since), ("--until", until)):
        if day is not None:
            try:
                dt.date.fromisoformat(day)
            except ValueError as exc:
                raise typer.BadParameter(f"{day!r} is not a YYYY-MM-DD day", param_hint=label) from exc
    url = redact(Settings.from_env().clickhouse_url)
    err_console.print(f"reading {url} (CLICKHOUSE_URL selects another store)", highlight=False,
                      soft_wrap=True)
    client = open_client(migrate_first=True)
    try:
        rows = funnel(client, group_by, filters, since, until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from exc
    except RassylkaError as exc:
        err_console.print(f"[red]report failed: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    demo_store = DEMO_DIR / "clickhouse"
    hint = empty_store_hint(url, rows, f"chdb://{demo_store}" if demo_store.is_dir() else None)
    if hint:
        err_console.print(hint, highlight=False, soft_wrap=True)
    _print_rows(rows, fmt, title=_title(filters, since, until))


def sink_command(
    batch_rows: int = typer.Option(5_000, help="Flush after this many rows..."),
    batch_age: float = typer.Option(1.0, help="...or this many seconds after the first one."),
    stats_interval: float = typer.Option(10.0, help="Seconds between progress log lines."),
    session_timeout: float = typer.Option(
        10.0, help="Seconds after which a crashed worker's partitions go to the others (≥ 6)."
    ),
    fault_file: Path = typer.Option(
        None, envvar="RASSYLKA_CH_FAULT_FILE",
        help="Testing: ClickHouse writes fail while this file exists.",
    ),
    loglevel: str = typer.Option("info", help="Python log level."),
    metrics_port: int = typer.Option(0, envvar="RASSYLKA_METRICS_PORT",
                                     help="Serve /metrics, /healthz and /readyz on this port "
                                          "(0: off)."),
) -> None:
    """Run an analytics sink worker: fact topics -> ClickHouse, until SIGTERM."""
    from pipeline import metrics
    from pipeline.analytics.sink import SinkConfig, run_sink

    logging.getLogger().setLevel(loglevel.upper())
    config = SinkConfig(
        max_rows=batch_rows,
        max_age_s=batch_age,
        stats_interval_s=stats_interval,
        session_timeout_s=session_timeout,
        fault_file=fault_file,
    )
    from pipeline.cli import wait_for_kafka
    from pipeline.topics import CATALOG, create_topics, wait_until_ready

    settings = Settings.from_env()
    health = metrics.Health()
    metrics.serve(metrics_port, health)
    wait_for_kafka(settings)
    create_topics(settings)
    wait_until_ready(settings, [settings.topic(spec.name) for spec in CATALOG])
    stats = run_sink(settings, config, health)
    console.print(f"sink stopped: {stats.summary()}", highlight=False)


def _title(filters: dict[str, list[str]], since: str | None, until: str | None) -> str:
    parts = [f"{name}={','.join(values)}" for name, values in filters.items()]
    if since or until:
        parts.append(f"{since or '…'} to {until or '…'}")
    return "Funnel" + (f" ({'; '.join(parts)})" if parts else "")


def _print_rows(rows: list[dict[str, Any]], fmt: OutputFormat, title: str | None) -> None:
    from pipeline.analytics.report import render_table, to_csv

    if fmt is OutputFormat.json:
        typer.echo(json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows],
                              ensure_ascii=False))
    elif fmt is OutputFormat.csv:
        typer.echo(to_csv([{k: _plain(v) for k, v in row.items()} for row in rows]), nl=False)
    else:
        console.print(render_table(rows, title=title))


def _plain(value: Any) -> Any:
    """A JSON- and CSV-friendly form of a ClickHouse value."""
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
