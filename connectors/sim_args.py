"""What the simulators (SMSC and HTTP provider) share: value parsers and admission control."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.sender.throttle import TokenBucket


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


def admission(rate_per_s: float) -> TokenBucket:
    """The bucket a simulator admits requests with before answering 'slow down':
    `rate_per_s`, with a burst of 200 ms worth (at least one)."""
    return TokenBucket(rate_per_s, max(1.0, rate_per_s * 0.2))
