"""Segment commands: `rassylka segments validate` and `rassylka segments preview NAME`.

Mounted by `pipeline.cli`. Segments come from `config/segments.yaml` (`--config-dir` or
RASSYLKA_CONFIG_DIR selects another folder); previews read ClickHouse at CLICKHOUSE_URL,
like `rassylka report`. The driver and chDB are imported inside the commands, so
`rassylka --help` stays fast. Configuration errors (ConfigError) and a chDB folder held by
another process reach `pipeline.cli.main`, which prints them in one or two lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings

segments_cli = typer.Typer(
    help="Audience segments of config/segments.yaml: check them, see who is in one.",
    no_args_is_help=True,
)
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

CONFIG_DIR_HELP = "Folder with segments.yaml (default: config/, or RASSYLKA_CONFIG_DIR)."


@segments_cli.command("validate")
def validate_command(
    config_dir: Path = typer.Option(None, help=CONFIG_DIR_HELP),
) -> None:
    """Check segments: unknown keys and conditions, bad windows, references, cycles. Exit 1
    on problems."""
    from pipeline.campaigns.segments import (
        SEGMENTS_FILE,
        display_path,
        load_segments,
        validate_segments,
    )

    folder = config_dir or Settings.from_env().config_dir
    path = display_path(folder / SEGMENTS_FILE)
    problems = validate_segments(folder)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/red] {problem}", highlight=False)
        console.print(f"[red]{len(problems)} problem(s)[/red] in {path}", highlight=False)
        raise typer.Exit(1)
    if not (folder / SEGMENTS_FILE).is_file():
        console.print(f"no {path}: no segments defined", highlight=False)
        return
    names = sorted(load_segments(folder))
    console.print(f"[green]✓[/green] {len(names)} segment(s) in {path} are valid: "
                  f"{', '.join(names)}", highlight=False)


@segments_cli.command("preview")
def preview_command(
    name: str = typer.Argument(..., help="The segment, as named in segments.yaml."),
    config_dir: Path = typer.Option(None, help=CONFIG_DIR_HELP),
    sample: int = typer.Option(10, min=0, max=1000, help="Customers to show (masked)."),
    show_sql: bool = typer.Option(False, "--sql", help="Also print the compiled query."),
) -> None:
    """Show a segment's audience now: size, query time, regions, operators, a masked sample."""
    from pipeline.campaigns.segments import (
        SEGMENTS_FILE,
        UnknownSegment,
        compile_segment,
        display_path,
        load_segments,
        preview,
    )
    from pipeline.errors import RassylkaError

    settings = Settings.from_env()
    folder = config_dir or settings.config_dir
    segments = load_segments(folder)
    if name not in segments:
        where = display_path(folder / SEGMENTS_FILE)
        err_console.print(f"[red]{where}: {UnknownSegment(name, segments)}[/red]",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    now_ms = int(time.time() * 1000)
    client = _client(settings)
    try:
        result = preview(client, segments, name, now_ms, sample=sample)
    except RassylkaError as exc:
        err_console.print(f"[red]preview failed: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    if show_sql:
        console.print(compile_segment(segments, name, now_ms), highlight=False, soft_wrap=True)
    console.print(f"[bold]{name}[/bold] — {segments[name].description}", highlight=False)
    console.print(f"audience: [bold]{result.size:,}[/bold] customers "
                  f"(queried in {result.seconds:.2f} s)", highlight=False)
    if result.size:
        console.print(_breakdown("Region", result.by_region, result.size))
        console.print(_breakdown("Operator", result.by_operator, result.size))
        console.print(_sample(result.sample))


def _client(settings: Settings) -> Any:
    """The ClickHouse client at CLICKHOUSE_URL, migrated (`rassylka report`'s), saying on
    stderr which store it reads; exits 1 with a message when it cannot be reached."""
    from connectors.clickhouse import redact
    from pipeline.analytics.cli import open_client

    err_console.print(f"reading {redact(settings.clickhouse_url)} (CLICKHOUSE_URL selects "
                      f"another store)", highlight=False, soft_wrap=True)
    return open_client(migrate_first=True)


def _breakdown(title: str, counts: list[tuple[str, int]], total: int, top: int = 15) -> Table:
    """Customers per value, most first; the tail beyond `top` values summed as "other"."""
    table = Table(title=f"By {title.lower()}", title_justify="left")
    table.add_column(title)
    table.add_column("Customers", justify="right")
    table.add_column("Share", justify="right")
    shown = counts[:top]
    rest = sum(n for _, n in counts[top:])
    for value, n in shown:
        table.add_row(value or "(unknown)", f"{n:,}", f"{n / total:.1%}")
    if rest:
        table.add_row(f"other ({len(counts) - top})", f"{rest:,}", f"{rest / total:.1%}")
    return table


def _sample(members: list[tuple[str, str]]) -> Table:
    table = Table(title="Sample (phones masked)", title_justify="left")
    table.add_column("Customer")
    table.add_column("Phone")
    for customer_id, masked in members:
        table.add_row(customer_id, masked or "(none)")
    return table
