"""The `rassylka` command line: topics, rules, workers, demo, analytics, benchmark."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from pipeline.settings import Settings

app = typer.Typer(help="Rassylka: event-driven SMS notifications on Kafka.", no_args_is_help=True)
topics_cli = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)
rules_cli = typer.Typer(help="Notification rules and templates under config/.", no_args_is_help=True)
app.add_typer(topics_cli, name="topics")
app.add_typer(rules_cli, name="rules")

console = Console(width=None if sys.stdout.isatty() else 160)


def _settings() -> Settings:
    return Settings.from_env()


@topics_cli.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that does not exist yet (idempotent)."""
    from rich.table import Table

    from pipeline.topics import BY_NAME, create_topics

    settings = _settings()
    result = create_topics(settings)
    table = Table(title=f"Topics on {settings.kafka_bootstrap}")
    for column in ("topic", "status", "partitions", "cleanup", "key", "schema"):
        table.add_column(column)
    for name, status in sorted(result.items()):
        spec = BY_NAME[name[len(settings.topic_prefix):]]
        table.add_row(
            name, status, str(spec.partitions or settings.partitions),
            "compact" if spec.compacted else "delete", spec.key, spec.schema,
        )
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


def _run_faust(stage: str, loglevel: str) -> None:
    import faust

    from pipeline.app import create_app
    from pipeline.topics import CATALOG, create_topics, wait_until_ready

    settings = _settings()
    create_topics(settings)
    wait_until_ready(settings, [settings.topic(spec.name) for spec in CATALOG])
    faust_app = create_app(settings, stage)
    if stage == "router":
        from pipeline.router.agents import install_router

        install_router(faust_app, settings)
    else:  # pragma: no cover - typer restricts the choices
        raise typer.BadParameter(stage)
    worker = faust.Worker(faust_app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


@app.command()
def router(loglevel: str = typer.Option("warn", help="crit, error, warn, info or debug.")) -> None:
    """Run a router worker (Faust): business events -> notification requests."""
    _run_faust("router", loglevel)


@app.command()
def sender(
    worker_id: str = typer.Option("0", help="Unique per sender process: names its Kafka transactions."),
    route: str = typer.Option(None, help="Gateway route from config/routes.yaml (default: default_route)."),
    loglevel: str = typer.Option("warning", help="Python log level."),
) -> None:
    """Run a sender worker: notification requests -> checks -> SMS gateway -> outcomes."""
    import asyncio

    from pipeline.sender.setup import build_gateway, load_policy
    from pipeline.sender.worker import SenderWorker
    from pipeline.topics import CATALOG, create_topics, wait_until_ready

    logging.getLogger().setLevel(loglevel.upper())
    settings = _settings()
    create_topics(settings)
    wait_until_ready(settings, [settings.topic(spec.name) for spec in CATALOG])
    policy, limits = load_policy(settings.config_dir)
    gateway, rate = build_gateway(settings, limits, route)
    import os

    worker = SenderWorker(settings, policy, gateway, rate, worker_id=worker_id,
                          max_in_flight=int(os.environ.get("RASSYLKA_MAX_IN_FLIGHT", "1024")))
    stats = asyncio.run(worker.run())
    console.print(f"sender {worker_id} stopped: {stats}", highlight=False)


@app.command()
def bench(
    events: int = typer.Option(20_000, help="Events for the throughput run."),
    rate: int = typer.Option(1_000, help="Offered load (events/s) for the latency run."),
    seconds: int = typer.Option(5, help="Length of the latency run."),
    routers: int = typer.Option(1, help="Router worker processes."),
    senders: int = typer.Option(1, help="Sender worker processes."),
    state_numbers: int = typer.Option(1_000_000, help="Numbers for the state-size measurement (0: skip)."),
    sink_records: int = typer.Option(200_000, help="Records for the analytics sink run (0: skip)."),
    restart: bool = typer.Option(True, help="Measure a SIGKILLed sender's restart."),
) -> None:
    """Benchmark: throughput, latency percentiles and the ratio to a plain Kafka loop."""
    from pipeline.bench import run_bench

    sys.exit(run_bench(_settings(), console, events, rate, seconds, routers, senders, state_numbers,
                       sink_records, restart))


@app.command()
def demo() -> None:
    """Run the whole pipeline on sample data against the real broker and print the results."""
    from pipeline.demo import run_demo

    sys.exit(run_demo(_settings(), console))


from pipeline.analytics.cli import analytics_cli, report_command, sink_command  # noqa: E402

app.add_typer(analytics_cli, name="analytics")
app.command("report")(report_command)
app.command("sink")(sink_command)


@app.command()
def redirect(host: str = typer.Option("0.0.0.0", help="Address to listen on."),
             port: int = typer.Option(8080, help="Port to listen on.")) -> None:
    """Run the click redirect service: /c/<code> -> the original link, one click event each."""
    from connectors.redirect import redirect_command

    redirect_command(host, port)


@app.command()
def attribution(loglevel: str = typer.Option("warn", help="crit, error, warn, info or debug."),
                window_days: float = typer.Option(7.0, help="Last-touch attribution window.")) -> None:
    """Run the attribution worker (Faust): paid orders -> conversions credited to the last touch."""
    from pipeline.attribution.agents import attribution_command

    attribution_command(loglevel, window_days)


def main() -> None:
    """Entry point of the `rassylka` command."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
