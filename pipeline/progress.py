"""Progress of long-running commands (`bench`, `demo`), on a terminal and off it.

rich's `Console.status` draws a spinner on a terminal and prints nothing anywhere else, so
`make bench` in CI or piped to a file said nothing for minutes. `status` keeps the spinner
on a terminal; elsewhere it logs each step once, as a timestamped line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console


class Status(Protocol):
    def update(self, status: str) -> None: ...


class _Lines:
    """A status that logs each new text as a line (for a console that is no terminal)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last: str | None = None

    def update(self, status: str) -> None:
        if status != self.last:
            self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {status}", highlight=False)
            self.last = status


@contextmanager
def status(console: Console, text: str) -> Iterator[Status]:
    """`console.status(text)` on a terminal, else lines; `.update(text)` for the next step."""
    if console.is_terminal:
        with console.status(text) as live:
            yield live
        return
    lines = _Lines(console)
    lines.update(text)
    yield lines
