"""Confidence intervals of rates shown on the dashboard (A/B variants)."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95%


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float, float]:
    """The rate `successes / trials` and its Wilson score interval: (rate, low, high).

    Chosen over the normal approximation because it stays inside [0, 1] and is honest for
    small samples and rates near 0 or 1 (a variant with 3 clicks out of 40). No trials
    gives (0, 0, 1): nothing is known.
    """
    if trials <= 0:
        return 0.0, 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} out of range for {trials} trials")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)
