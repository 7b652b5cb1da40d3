"""The `rassylka` command line: topics, rules, workers, demo, analytics, benchmark.

This is the boundary where errors meet people: `main` catches the project's errors
(`pipeline.errors`) and Kafka client errors and prints one or two lines — what failed,
the address or file, what to do — with a non-zero exit; `--debug` (or RASSYLKA_DEBUG=1)
shows the traceback instead. Every command that talks to Kafka first waits a few seconds
for the broker (`kafka_io.ensure_reachable`), so a broker that is down is one clear line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from pipeline.console import print_version
from pipeline.errors import ConfigError
from pipeline.settings import ROOT, Settings

app = typer.Typer(help="Rassylka: event-driven SMS notifications on Kafka.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
topics_cli = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)
rules_cli = typer.Typer(help="Notification rules and templates under config/.", no_args_is_help=True)
app.add_typer(topics_cli, name="topics")
app.add_typer(rules_cli, name="rules")

console = Console(width=None if sys.stdout.isatty() else 160)


_debug = {"on": False}
METRICS_PORT_HELP = ("Serve /metrics, /healthz and /readyz on this port (0: off); "
                     "RASSYLKA_METRICS_HOST picks the address (default 0.0.0.0).")


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", envvar="RASSYLKA_DEBUG",
                               help="Show tracebacks instead of one-line errors."),
    _version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                  help="Print the installed version and exit."),
    log_format: str = typer.Option("text", "--log-format", envvar="RASSYLKA_LOG_FORMAT",
                                   help="Log lines as text or json (one object per line)."),
) -> None:
    _debug["on"] = debug
    if log_format != "text":  # main() set up text lines
        from pipeline.metrics import use_log_format

        try:
            use_log_format(log_format)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--log-format") from exc


def _settings() -> Settings:
    return Settings.from_env()


def _say(message: str) -> None:
    typer.echo(f"[rassylka] {message}", err=True)


def wait_for_kafka(settings: Settings) -> None:
    """Wait (at most `settings.kafka_wait_s`) for the broker; KafkaUnreachable if it is down."""
    from pipeline.kafka_io import ensure_reachable

    ensure_reachable(settings.kafka_bootstrap, settings.kafka_wait_s, on_wait=_say)


def wait_for_kafka_or_config(settings: Settings, check: Any) -> None:
    """Check the local config/ with `check`, then wait for the broker, in the order that
    says what to fix first: with RASSYLKA_CONFIG_SOURCE=files a bad config/ is the error;
    with `auto` (releases, else config/) it is the error when the broker is down too
    (the worker would fall back to it); with `kafka` config/ is not read."""
    from pipeline.errors import KafkaUnreachable
    from pipeline.releases import config_source

    source = config_source()
    local: ConfigError | None = None
    if source != "kafka":
        try:
            check(settings)
        except ConfigError as exc:
            if source == "files":
                raise
            local = exc
    try:
        wait_for_kafka(settings)
    except KafkaUnreachable:
        if local is not None:
            raise local from None
        raise


def check_rules(settings: Settings) -> None:
    """Raise ConfigError naming the first bad file or rule of `settings.config_dir`, if any."""
    from pipeline.rules.loader import validate

    problems = validate(settings.config_dir)
    if problems:
        raise rules_error(settings.config_dir, problems)


def rules_error(config_dir: Path, problems: list[str]) -> ConfigError:
    """A ConfigError whose problems name real paths and whose hint is `rules validate`."""
    folder = Path(config_dir)
    default = folder.resolve() == (ROOT / "config").resolve()
    shown = problems if default else [
        f"{folder}/{p[len('config/'):]}" if p.startswith("config/") else p for p in problems
    ]
    option = "" if default else f" --config-dir {folder}"
    return ConfigError(
        shown, hint=f"invalid rules: see every problem with `rassylka rules validate{option}`"
    )


@topics_cli.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that does not exist yet (idempotent)."""
    from rich.table import Table

    from pipeline.topics import BY_NAME, create_topics

    settings = _settings()
    wait_for_kafka(settings)
    result = create_topics(settings)
    table = Table(title=f"Topics on {settings.kafka_bootstrap}")
    for column in ("topic", "status", "partitions", "cleanup", "key", "schema"):
        table.add_column(column)
    for name, status in sorted(result.items()):
        spec = BY_NAME[name[len(settings.topic_prefix):]]
        table.add_row(
            name, status, str(spec.partitions or settings.partitions),
            ("compact" if spec.compacted else "delete")
            + (f", deleted after {_age(spec.retention_ms)}" if spec.retention_ms else ""),
            spec.key, spec.schema,
        )
    console.print(table)


def _age(ms: int) -> str:
    hours = ms // 3_600_000
    return f"{hours // 24} days" if hours >= 48 and hours % 24 == 0 else f"{hours} h"


@rules_cli.command("weights")
def rules_weights() -> None:
    """Current learned weights of every `strategy: bandit` rule, with the counts behind them."""
    from rich.table import Table

    from pipeline.campaigns.learning import current_weights

    settings = _settings()
    wait_for_kafka(settings)
    rows = current_weights(settings)
    if not rows:
        console.print("no learned weights yet: rules with strategy: bandit use their own "
                      "weights until the campaign worker's first update", highlight=False)
        return
    for rule_id, record in sorted(rows.items()):
        table = Table(title=f"{rule_id} ({record.get('metric')}), updated "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(record['updated_at_ms'] / 1000))} UTC",
                      title_justify="left")
        for column in ("variant", "weight", "before", "sent", "successes"):
            table.add_column(column)
        counts = record.get("inputs", {}).get("variants", {})
        for name, weight in record["weights"].items():
            c = counts.get(name, {})
            table.add_row(name, f"{weight:.3f}", f"{record['previous_weights'].get(name, 0):.3f}",
                          str(c.get("targeted", "")), str(c.get("successes", "")))
        console.print(table)


@rules_cli.command("validate")
def rules_validate(
    config_dir: Path = typer.Option(None, help="Folder with rules.yaml and templates/ (default: config/)."),
) -> None:
    """Check rules and templates: unknown fields, missing locales, syntax. Exit 1 on problems."""
    from pipeline.rules.loader import validate

    folder = config_dir or _settings().config_dir
    problems = validate(folder)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/red] {problem}", highlight=False)
        console.print(f"[red]{len(problems)} problem(s)[/red] in {folder}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/green] rules and templates in {folder} are valid")


@app.command()
def router(
    worker_id: str = typer.Option("0", help="Unique per router process: names its Kafka transactions."),
    loglevel: str = typer.Option("info", help="Python log level (debug, info, warning, error)."),
    metrics_port: int = typer.Option(0, envvar="RASSYLKA_METRICS_PORT", help=METRICS_PORT_HELP),
) -> None:
    """Run a router worker: business events -> notification requests, exactly once."""
    import signal

    from pipeline import gc_tuning, metrics
    from pipeline.router.worker import RouterWorker
    from pipeline.topics import CATALOG, create_topics, wait_until_ready

    logging.getLogger().setLevel({"warn": "WARNING", "crit": "CRITICAL"}.get(
        loglevel.lower(), loglevel.upper()))
    settings = _settings()
    health = metrics.Health()
    metrics.serve(metrics_port, health)
    wait_for_kafka_or_config(settings, check_rules)
    create_topics(settings)
    wait_until_ready(settings, [settings.topic(spec.name) for spec in CATALOG])
    try:
        worker = RouterWorker(settings, worker_id=worker_id, health=health)
    except ConfigError as exc:  # changed since check_rules
        raise rules_error(settings.config_dir, exc.problems) from exc
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    gc_tuning.pace_for_worker()
    stats = worker.run()
    console.print(f"router {worker_id} stopped: {stats.line()}", highlight=False)


@app.command()
def sender(
    worker_id: str = typer.Option("0", help="Unique per sender process: names its Kafka transactions."),
    route: str = typer.Option(None, help="Gateway route from config/routes.yaml (default: default_route)."),
    loglevel: str = typer.Option("info", help="Python log level."),
    metrics_port: int = typer.Option(0, envvar="RASSYLKA_METRICS_PORT", help=METRICS_PORT_HELP),
) -> None:
    """Run a sender worker: notification requests -> checks -> SMS gateway -> outcomes."""
    import asyncio
    from dataclasses import replace

    from pipeline import gc_tuning, metrics
    from pipeline.releases import LiveConfig
    from pipeline.sender.setup import build_gateway, load_policy
    from pipeline.sender.worker import (
        MARKETING_WAITING_MAX,
        SenderWorker,
        marketing_waiting_max,
        receipt_wait_ms,
    )
    from pipeline.topics import CATALOG, create_topics, wait_until_ready

    logging.getLogger().setLevel(loglevel.upper())
    settings = _settings()
    wait_ms = receipt_wait_ms(os.environ.get("RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S", "60"))
    waiting_max = marketing_waiting_max(
        os.environ.get("RASSYLKA_MARKETING_WAITING_MAX", str(MARKETING_WAITING_MAX)))
    health = metrics.Health()
    metrics.serve(metrics_port, health)
    wait_for_kafka_or_config(settings, lambda s: load_policy(s.config_dir))
    create_topics(settings)
    wait_until_ready(settings, [settings.topic(spec.name) for spec in CATALOG])
    live = LiveConfig(settings, f"sender-{worker_id}")
    policy, limits = load_policy(live.folder)
    gateway, rate = build_gateway(replace(settings, config_dir=live.folder), limits, route)

    worker = SenderWorker(
        settings, policy, gateway, rate, worker_id=worker_id, live=live,
        max_in_flight=int(os.environ.get("RASSYLKA_MAX_IN_FLIGHT", "1024")),
        uncorrelated_wait_ms=wait_ms,
        fault=os.environ.get("RASSYLKA_SENDER_FAULT") or None, health=health,
        waiting_max=waiting_max)
    gc_tuning.pace_for_worker()
    stats = asyncio.run(worker.run())
    console.print(f"sender {worker_id} stopped: {stats}", highlight=False)


@app.command()
def bench(
    events: int = typer.Option(20_000, help="Events for the throughput run."),
    rate: int = typer.Option(1_000, help="Offered load (events/s) for the latency run."),
    seconds: int = typer.Option(10, help="Length of each latency run."),
    routers: int = typer.Option(1, help="Router worker processes."),
    senders: int = typer.Option(1, help="Sender worker processes."),
    state_numbers: int = typer.Option(1_000_000, help="Numbers for the state-size measurement (0: skip)."),
    sink_records: int = typer.Option(1_000_000, help="Records for the analytics sink run (0: skip)."),
    restart: bool = typer.Option(True, help="Measure a SIGKILLed sender's restart."),
    campaign_profiles: int = typer.Option(1_000_000, help="Profiles for the campaign audience "
                                          "measurement (0: skip campaigns)."),
    campaign_members: int = typer.Option(100_000, help="Members fanned out by the campaign run."),
    runs: int = typer.Option(3, help="Throughput runs (the median is reported)."),
    api: bool = typer.Option(True, help="Measure the HTTP API."),
    scale_out: bool = typer.Option(True, help="Run 2 routers and 2 senders on one set of topics."),
    faust: bool = typer.Option(True, help="Measure a bare Faust agent's consumption floor."),
    kannel: bool = typer.Option(True, help="Run Kannel side by side on the same simulator."),
    flood: bool = typer.Option(True, help="Transactional latency while a marketing flood "
                               "saturates the route."),
    api_only: bool = typer.Option(False, "--api-only", help="Only the HTTP API section."),
) -> None:
    """Benchmark: throughput, latency percentiles and the ratio to a plain Kafka loop."""
    from pipeline.bench import run_api_bench, run_bench

    settings = _settings()
    wait_for_kafka(settings)
    if api_only:
        sys.exit(run_api_bench(settings, console))
    sys.exit(run_bench(settings, console, events, rate, seconds, routers, senders, state_numbers,
                       sink_records, restart, campaign_profiles, campaign_members, runs, api,
                       scale_out, faust, kannel, flood))


@app.command()
def demo() -> None:
    """Run the whole pipeline on sample data against the real broker and print the results."""
    from pipeline.demo import run_demo

    settings = _settings()
    wait_for_kafka(settings)
    sys.exit(run_demo(settings, console))


from pipeline.analytics.cli import analytics_cli, report_command, sink_command  # noqa: E402

app.add_typer(analytics_cli, name="analytics")
app.command("report")(report_command)
app.command("sink")(sink_command)

from pipeline.campaigns.cli import segments_cli  # noqa: E402

app.add_typer(segments_cli, name="segments")

from pipeline.campaigns.commands import campaign_cli  # noqa: E402

app.add_typer(campaign_cli, name="campaign")

from pipeline.config_cli import config_cli  # noqa: E402

app.add_typer(config_cli, name="config")

from pipeline.registry import schemas_cli  # noqa: E402

app.add_typer(schemas_cli, name="schemas")

from pipeline.offsets import reset_offsets_command  # noqa: E402

app.command("reset-offsets")(reset_offsets_command)

from pipeline.rules.explain import explain_command  # noqa: E402
from pipeline.sendtest import send_test_command  # noqa: E402

rules_cli.command("explain")(explain_command)
app.command("send-test")(send_test_command)

from pipeline.console import deadletters_cli, produce_command, tail_command  # noqa: E402

app.command("tail")(tail_command)
app.command("produce")(produce_command)
app.add_typer(deadletters_cli, name="deadletters")

from pipeline.dashboard.cli import dashboard_command  # noqa: E402

app.command("dashboard")(dashboard_command)


@app.command()
def redirect(host: str = typer.Option("0.0.0.0", help="Address to listen on."),
             port: int = typer.Option(8080, help="Port to listen on."),
             dev: bool = typer.Option(False, "--dev", help="Allow the public development link "
                                      "secret when RASSYLKA_LINK_SECRET is unset (local runs, "
                                      "the demo): anyone can forge such links.")) -> None:
    """Run the click redirect service: /c/<code> -> the original link, one click event each."""
    from connectors.redirect import redirect_command
    from pipeline.links import require_link_secret

    secret = require_link_secret(allow_dev=dev)
    settings = _settings()
    wait_for_kafka(settings)
    redirect_command(host, port, settings=settings, secret=secret)


@app.command()
def attribution(loglevel: str = typer.Option("warn", help="crit, error, warn, info or debug."),
                window_days: float = typer.Option(7.0, help="Last-touch attribution window."),
                metrics_port: int = typer.Option(0, envvar="RASSYLKA_METRICS_PORT",
                                                 help=METRICS_PORT_HELP)) -> None:
    """Run the attribution worker (Faust): paid orders -> conversions credited to the last touch."""
    from pipeline.attribution.agents import attribution_command

    wait_for_kafka(_settings())
    attribution_command(loglevel, window_days, metrics_port)


@app.command()
def api(host: str = typer.Option("0.0.0.0", help="Address to listen on."),
        port: int = typer.Option(8090, help="Port to listen on.")) -> None:
    """Run the HTTP events API: JSON events, profiles and consents in, 202 once stored."""
    from pipeline.api.app import api_command

    settings = _settings()
    wait_for_kafka(settings)
    api_command(host, port, settings)


from pipeline.api.keys import api_keys_cli  # noqa: E402

app.add_typer(api_keys_cli, name="api-keys")


@app.command()
def outbox(
    worker_id: str = typer.Option("0", help="Unique per outbox process: names its Kafka transactions."),
    dedup_days: float = typer.Option(7.0, envvar="RASSYLKA_OUTBOX_DEDUP_DAYS",
                                     help="How long row ids are remembered to drop Debezium's "
                                          "repeats; delete outbox rows well before that."),
    create_connector: bool = typer.Option(
        False, "--create-connector", help="First create or update this deployment's Debezium "
        "connector (idempotent) on CONNECT_URL / 127.0.0.1:CONNECT_PORT, reading the PostgreSQL "
        "on 127.0.0.1:POSTGRES_PORT, database POSTGRES_DB (default erp)."),
    loglevel: str = typer.Option("info", help="Python log level (debug, info, warning, error)."),
    metrics_port: int = typer.Option(0, envvar="RASSYLKA_METRICS_PORT", help=METRICS_PORT_HELP),
) -> None:
    """Run the outbox stage: Debezium's outbox rows -> Avro events, exactly once per row."""
    import signal

    from pipeline import metrics
    from pipeline import outbox as cdc
    from pipeline.outbox import OutboxWorker
    from pipeline.topics import create_topics

    logging.getLogger().setLevel({"warn": "WARNING", "crit": "CRITICAL"}.get(
        loglevel.lower(), loglevel.upper()))
    settings = _settings()
    health = metrics.Health()
    metrics.serve(metrics_port, health)
    wait_for_kafka(settings)
    create_topics(settings)
    if create_connector:
        name = cdc.slot_name(settings)
        cdc.create_connector(name, cdc.connector_config(settings, cdc.Database.from_env(), name))
        _say(f"connector {name} runs on {cdc.connect_url()}")
    worker = OutboxWorker(settings, worker_id=worker_id, dedup_days=dedup_days, health=health)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    stats = worker.run()
    console.print(f"outbox {worker_id} stopped: {stats.line()}", highlight=False)


def main() -> None:
    """Entry point of the `rassylka` command: runs it, turning errors into one or two lines.

    Exit codes: 0 done, 1 a failure reported here (or by the command itself), 2 a usage
    error (typer). With --debug / RASSYLKA_DEBUG=1 the traceback is shown instead.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from confluent_kafka import KafkaException

    from connectors.parent import exit_with_parent

    exit_with_parent()  # a worker the demo or a test started stops when they die

    from pipeline.errors import RassylkaError, summary

    try:
        app()
    except RassylkaError as exc:
        if _debugging():
            raise
        _fail(summary(exc))
    except KafkaException as exc:  # the broker went away after the start-up check
        if _debugging():
            raise
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        _fail([f"Kafka error at {_bootstrap()}: {text} (--debug shows the traceback)"])


def _debugging() -> bool:
    return _debug["on"] or os.environ.get("RASSYLKA_DEBUG", "") not in ("", "0")


def _bootstrap() -> str:
    try:
        return Settings.from_env().kafka_bootstrap
    except ConfigError:
        return "?"


def _fail(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"error: {line}" if line is lines[0] else f"       {line}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
