"""`progress.status`: long-running commands say what they are doing, on a terminal or not."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline import progress


def test_off_a_terminal_each_step_is_a_line_once() -> None:
    """Regression: `make bench` and `make demo` used rich's `Console.status`, which prints
    nothing when the output is no terminal: in CI or piped to a file, eight minutes of
    bench went by without a word."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    with progress.status(console, "[bold]setting up ...") as status:
        status.update("[bold]warming up ...")
        status.update("[bold]warming up ...")  # the same step again: no second line
        status.update("[bold]latency 1/3: 500 events/s for 10 s ...")
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 3, lines
    assert "setting up ..." in lines[0] and "warming up ..." in lines[1]
    assert "latency 1/3" in lines[2]
    assert "[bold]" not in out.getvalue()  # markup is rendered, not shown


def test_on_a_terminal_it_is_rich_s_live_status() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress.status(console, "setting up ...") as status:
        assert type(status).__name__ == "Status"  # rich's spinner, updated in place
        status.update("warming up ...")
