"""`rassylka config ...`: publish `config/` as an audited release, list, diff, roll back.

See `pipeline.releases` for what a release is and how workers apply it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline import releases
from pipeline.errors import ConfigError
from pipeline.settings import Settings

config_cli = typer.Typer(help="Config releases: publish config/ to Kafka, history, diff, rollback.",
                         no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 160)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _summary(diff: dict[str, list[str]]) -> str:
    parts = [f"{kind} {', '.join(names) if len(names) <= 4 else f'{len(names)} files'}"
             for kind, names in
             (("+", diff.get("added", [])), ("-", diff.get("removed", [])),
              ("~", diff.get("changed", []))) if names]
    return "; ".join(parts) or "no file changed"


def _published(release: releases.Release) -> None:
    console.print(f"[green]✓[/green] published {release.stamp} by {release.author}: "
                  f"{release.message}", highlight=False)
    console.print(f"  {len(release.files)} files; {_summary(release.diff)}; every worker "
                  f"switches at {_when(release.activate_at_ms)}", highlight=False)


@config_cli.command("publish")
def publish_command(
    message: str = typer.Option(..., "-m", "--message", help="Why: kept in the audit trail."),
    config_dir: Path = typer.Option(None, help="The folder to publish (default: config/)."),
    author: str = typer.Option(None, help="Who (default: RASSYLKA_AUTHOR, else user@host)."),
) -> None:
    """Validate config/ and publish it as the next release; workers apply it together."""
    settings = Settings.from_env()
    folder = config_dir or settings.config_dir
    release = releases.publish(settings, releases.read_files(folder), message,
                               author or releases.default_author())
    _published(release)


@config_cli.command("history")
def history_command(limit: int = typer.Option(20, help="Newest releases shown.")) -> None:
    """Every release: version, hash, when, who, why and what changed."""
    found = releases.history(Settings.from_env())
    if not found:
        console.print("no release published yet: workers read config/ "
                      "(`rassylka config publish -m \"why\"` makes the first)", highlight=False)
        return
    table = Table(title=f"Config releases ({len(found)})", title_justify="left")
    for column in ("version", "hash", "published", "author", "message", "changes"):
        table.add_column(column)
    for release in found[-limit:][::-1]:
        note = f" (rollback to {release.rollback_of})" if release.rollback_of else ""
        table.add_row(release.version, release.content_hash[:8], _when(release.created_at_ms),
                      release.author, release.message + note, _summary(release.diff))
    console.print(table)


@config_cli.command("diff")
def diff_command(a: str, b: str = typer.Argument(None, help="Default: the newest release.")) -> None:
    """The unified diff between releases A and B (B: the newest when left out)."""
    found = releases.history(Settings.from_env())
    first = releases.find(found, a)
    second = releases.find(found, b) if b else (found[-1] if found else first)
    text = releases.unified_diff(first, second)
    print(text if text else f"{first.version} and {second.version} have the same files")


@config_cli.command("rollback")
def rollback_command(
    version: str,
    message: str = typer.Option(None, "-m", "--message", help="Why (default: 'rollback to V')."),
    author: str = typer.Option(None, help="Who (default: RASSYLKA_AUTHOR, else user@host)."),
) -> None:
    """Publish release VERSION's files again as a new release (history is never rewritten)."""
    settings = Settings.from_env()
    found = releases.history(settings)
    target = releases.find(found, version)
    if found and found[-1].content_hash == target.content_hash:
        raise ConfigError([f"{target.version} is what the current release {found[-1].version} "
                           f"holds already"])
    release = releases.publish(settings, target.files, message or f"rollback to {target.version}",
                               author or releases.default_author(), rollback_of=target.version)
    _published(release)


@config_cli.command("schema")
def schema_command(
    out: Path = typer.Option(Path("config/schema"), help="Folder to write the schemas into."),
) -> None:
    """Write the JSON Schemas of rules.yaml and templates that editors use (from the models)."""
    from pipeline.rules.schema import write_json_schemas

    for path in write_json_schemas(out):
        console.print(f"[green]✓[/green] wrote {path}", highlight=False)


@config_cli.command("show")
def show_command(version: str, file: str = typer.Argument(None, help="One file of it.")) -> None:
    """The files of release VERSION (or one of them)."""
    release = releases.find(releases.history(Settings.from_env()), version)
    if file:
        if file not in release.files:
            raise ConfigError([f"{release.version} has no file {file!r} "
                               f"(it has {', '.join(sorted(release.files))})"])
        print(release.files[file], end="")
        return
    console.print(f"{release.stamp} by {release.author} at {_when(release.created_at_ms)}: "
                  f"{release.message}", highlight=False)
    for name in sorted(release.files):
        console.print(f"  {name} ({len(release.files[name].splitlines())} lines)", highlight=False)
