"""Variants that learn: Thompson-sampling weights for event-triggered rules (`strategy: bandit`).

Pure, no I/O. A rule with `strategy: bandit` keeps sending to every variant, but moves
traffic towards the one that works: periodically the campaign worker feeds the variants'
counts to `update_weights` (or `bandit_update`, which also builds the record to publish),
and the router picks each message's variant with these weights.

The maths. Same model as `pipeline.campaigns.decision`: each variant's success rate has
posterior Beta(1 + successes, 1 + targeted - successes). Thompson sampling would draw
once from every posterior per message and send the variant with the highest draw; over a
batch that picks each variant with probability P(best), so its weight is P(best) (exact
for two variants, the share of `draws` seeded joint draws for more). Every weight is then
raised to at least `min_share` and the others scaled down to keep the sum at 1, so a
variant that looks beaten still gets some traffic and can come back (minimum exploration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.campaigns.decision import (
    VariantResult,
    p_best_method,
    prob_best,
    variant_inputs,
)

DEFAULT_DRAWS = 20_000  # Monte Carlo draws with three or more variants


@dataclass(frozen=True)
class BanditUpdate:
    """One change of a bandit rule's weights, as recorded (topic / ClickHouse row).

    inputs: JSON-serialisable counts, posteriors, P(best), min_share, draws and seed.
    """

    rule_id: str
    weights: dict[str, float]
    previous_weights: dict[str, float]
    inputs: dict[str, Any]


def update_weights(
    results: list[VariantResult],
    min_share: float = 0.05,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> dict[str, float]:
    """New traffic weights per variant: P(best), with every weight at least `min_share`.

    Called each time a bandit rule's counts are refreshed. Weights sum to 1, in the order
    of `results`; the same counts and seed give the same weights. Raises ValueError when
    `min_share` × the number of variants exceeds 1, or for repeated names or impossible
    counts.
    """
    _check_floor(min_share, len(results))
    return with_floor(prob_best(results, draws=draws, seed=seed), min_share)


def bandit_update(
    rule_id: str,
    results: list[VariantResult],
    previous_weights: dict[str, float],
    min_share: float = 0.05,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> BanditUpdate:
    """`update_weights`, with the record of what changed and everything it was based on."""
    _check_floor(min_share, len(results))
    probabilities = prob_best(results, draws=draws, seed=seed)
    weights = with_floor(probabilities, min_share)
    inputs = {
        "method": p_best_method(results),
        "trials": "targeted",
        "min_share": min_share,
        "draws": draws,
        "seed": seed,
        "variants": variant_inputs(results, probabilities),
    }
    return BanditUpdate(rule_id, weights, dict(previous_weights), inputs)


def with_floor(shares: dict[str, float], min_share: float) -> dict[str, float]:
    """Raise every share to at least `min_share`, scaling the others to keep the sum at 1.

    Shares below the floor are set to it; the rest share what is left in proportion to
    their original shares, repeated until none falls below (scaling down can push another
    one under). Raises ValueError unless 0 ≤ `min_share` × len(shares) ≤ 1.
    """
    _check_floor(min_share, len(shares))
    floored: set[str] = set()
    while True:
        free = [v for v in shares if v not in floored]
        left = 1.0 - min_share * len(floored)
        total = sum(shares[v] for v in free)
        weights = {v: min_share for v in floored}
        for v in free:
            weights[v] = left * shares[v] / total if total > 0 else left / len(free)
        under = {v for v in free if weights[v] < min_share}
        if not under:
            return {v: weights[v] for v in shares}
        floored |= under


def _check_floor(min_share: float, variants: int) -> None:
    if not 0 <= min_share * variants <= 1:
        raise ValueError(f"min_share {min_share} × {variants} variants must be within [0, 1]")
