"""Command-line value parsers shared by the simulators (SMSC and HTTP provider)."""

from __future__ import annotations

from collections.abc import Callable


def span(text: str) -> tuple[float, float]:
    """'N' or 'LOW-HIGH' milliseconds as a (low, high) range."""
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def weights(text: str, case: Callable[[str], str] = str.upper) -> dict[str, float]:
    """'A=90,B=10' as {'A': 90.0, 'B': 10.0}; names normalised by `case`, weight 1 if absent."""
    out: dict[str, float] = {}
    for item in text.split(","):
        if item.strip():
            name, _, weight = item.partition("=")
            out[case(name.strip())] = float(weight or 1)
    return out
