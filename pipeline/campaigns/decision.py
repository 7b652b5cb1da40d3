"""Decide a campaign's test on a small group: wait, roll out a winner, no winner, or stop.

Pure: counts in, a `Decision` out, no I/O. The campaign worker calls `decide` each time it
refreshes the test group's counts, and once more with `final=True` when the evaluation
window ends; it records `Decision.inputs` as-is (Kafka topic, ClickHouse row), so every
decision can be replayed and audited.

Order of the checks (first one that applies wins):
1. guardrails — a variant whose opt-out rate (opt-outs per delivered) or delivery-failure
   rate (failed per targeted) is above the rule's limit stops the campaign
   (`stop_guardrail`, the reason names the variant and the rate). Rates are only judged
   once the variant has `guardrail_min_sample` messages behind them, so one early STOP
   out of five deliveries does not stop a campaign.
2. sample — while any variant has fewer than `min_sample_per_variant` targeted, `wait`;
   when the window has ended (`final=True`), `no_winner` instead.
3. winner — the variant most likely to be best, if that probability reaches
   `win_probability`, is rolled out (`rollout`); otherwise `no_winner` and the campaign
   does what its config says (keep the control, split evenly, ...).

The maths. Each variant's success rate (clicks or conversions, per the campaign's metric)
gets a Beta(1, 1) prior; after s successes in n trials its posterior is
Beta(1 + s, 1 + n - s). P(best) is the probability that a variant's rate is the highest
under these posteriors: exact for two variants (a finite sum of Beta functions), seeded
Monte Carlo (`rule.draws` draws) for three or more.

Trials are `targeted`, not `delivered`: a message that was not delivered cannot be
clicked, but it was paid for and its recipient was in the test, so analysts compare
variants per targeted recipient (a variant whose text fails more often on some route is
worse, and should look worse). Receipts also lag: per-delivered rates would move as they
arrive.

Default thresholds (`DecisionRule()`) and what they buy, for two variants:
- `min_sample_per_variant` = 8,000 targeted. At a 10% click rate, a variant 20% better
  (12%) is picked in about 98% of tests (95% needs 6,400 per variant, `required_sample`);
  two equal variants give `no_winner` in about 95% of tests (a false winner in ~5%).
- `win_probability` = 0.975: two-sided, 2.5% false-winner risk in each direction. At 0.95
  two equal variants would produce a "winner" in 10% of tests.
- `max_opt_out_rate` = 1% of delivered, `max_failure_rate` = 10% of targeted, judged from
  `guardrail_min_sample` = 500 messages.

Per variant needed for a 20% relative lift (win_probability 0.975, picked in 95% of tests):

    base rate    1%: 70,700   2%: 35,000   5%: 13,500   10%: 6,400   20%: 2,800

The decision is meant to be taken once, when every variant reaches the minimum sample:
calling `decide` again and again with more data and rolling out at the first `rollout`
("peeking") raises the false-winner rate above these figures.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

WAIT = "wait"  # not enough sample yet
ROLLOUT = "rollout"  # a winner: send it to the rest of the segment
NO_WINNER = "no_winner"  # enough sample (or the window ended), nobody is clearly best
STOP_GUARDRAIL = "stop_guardrail"  # opt-outs or delivery failures above the limit

PRIOR_ALPHA = 1  # Beta(1, 1): uniform prior on every variant's success rate
PRIOR_BETA = 1


@dataclass(frozen=True, slots=True)
class VariantResult:
    """One variant's counts in the test group, as the analytics side reports them.

    targeted: messages submitted for the variant (they cost); delivered and failed: of
    those, confirmed delivered and definitively not delivered (pending ones are neither);
    successes: recipients with at least one click, or conversion, per the campaign's
    metric; opt_outs: recipients who opted out after this message.
    """

    variant: str
    targeted: int
    delivered: int
    successes: int
    opt_outs: int
    failed: int

    def problems(self) -> list[str]:
        """What is inconsistent about these counts (empty when they can be used)."""
        out = []
        counts = {
            "targeted": self.targeted,
            "delivered": self.delivered,
            "successes": self.successes,
            "opt_outs": self.opt_outs,
            "failed": self.failed,
        }
        out += [f"{name} is negative ({n})" for name, n in counts.items() if n < 0]
        for name in ("delivered", "successes", "failed"):
            if counts[name] > self.targeted:
                out.append(f"{name} ({counts[name]}) exceeds targeted ({self.targeted})")
        if self.delivered + self.failed > self.targeted:
            out.append(
                f"delivered + failed ({self.delivered + self.failed}) exceeds "
                f"targeted ({self.targeted})"
            )
        return [f"variant {self.variant!r}: {p}" for p in out]


@dataclass(frozen=True, slots=True)
class DecisionRule:
    """When a test is decided; the defaults and their figures are in the module docstring."""

    min_sample_per_variant: int = 8_000  # targeted, per variant, before a winner is picked
    win_probability: float = 0.975  # P(best) a variant needs to be rolled out
    max_opt_out_rate: float = 0.01  # opt-outs per delivered, per variant
    max_failure_rate: float = 0.10  # failed per targeted, per variant
    draws: int = 20_000  # Monte Carlo draws for P(best) with three or more variants
    guardrail_min_sample: int = 500  # messages a rate needs behind it before it is judged


@dataclass(frozen=True)
class Decision:
    """What to do with a campaign's test now, why, and everything the decision used.

    action: `wait`, `rollout`, `no_winner` or `stop_guardrail`; winner: the variant to
    roll out (only with `rollout`); probabilities: P(best) per variant; reason: for
    humans; inputs: JSON-serialisable record of the counts, posteriors, rule and seed.
    """

    action: str
    winner: str | None
    probabilities: dict[str, float]
    reason: str
    inputs: dict[str, Any]


def decide(
    results: list[VariantResult], rule: DecisionRule, seed: int = 0, final: bool = False
) -> Decision:
    """Decide the test from the variants' counts. Pure; the same inputs give the same answer.

    Called whenever the test group's counts are refreshed, and with `final=True` once the
    evaluation window has ended (then a short sample is `no_winner`, never `wait`).
    `seed` drives the Monte Carlo estimate (three or more variants) and is recorded.
    Raises ValueError for fewer than two variants, repeated names or impossible counts.
    """
    _check(results, minimum=2)
    probabilities = prob_best(results, draws=rule.draws, seed=seed)
    inputs = _inputs(results, probabilities, rule, seed, final)

    def answer(action: str, reason: str, winner: str | None = None) -> Decision:
        return Decision(action, winner, probabilities, reason, {**inputs, "action": action})

    breaches = _guardrail_breaches(results, rule)
    if breaches:
        inputs["guardrail_breaches"] = breaches
        reason = "; ".join(b["detail"] for b in breaches)
        return answer(STOP_GUARDRAIL, f"guardrail: {reason}")

    short = [r for r in results if r.targeted < rule.min_sample_per_variant]
    if short:
        counts = ", ".join(f"{r.variant} {r.targeted:,}" for r in short)
        need = f"{rule.min_sample_per_variant:,} targeted per variant"
        if final:
            return answer(NO_WINNER, f"window ended before {need}: {counts}")
        return answer(WAIT, f"waiting for {need}: {counts}")

    best = max(results, key=lambda r: probabilities[r.variant]).variant
    p = probabilities[best]
    if p >= rule.win_probability:
        return answer(
            ROLLOUT,
            f"{best} is best with probability {p:.1%} (needs {rule.win_probability:.1%})",
            winner=best,
        )
    odds = ", ".join(f"{v} {q:.1%}" for v, q in probabilities.items())
    return answer(NO_WINNER, f"no variant reaches P(best) {rule.win_probability:.1%}: {odds}")


def prob_best(results: list[VariantResult], draws: int = 20_000, seed: int = 0) -> dict[str, float]:
    """P(best) per variant: the probability its success rate is the highest.

    Posterior of each rate: Beta(1 + successes, 1 + targeted - successes). Two variants:
    exact (`_prob_greater`). Three or more: the share of `draws` seeded joint draws from
    the posteriors in which the variant's draw is the highest. One variant: 1.0.
    """
    _check(results, minimum=1)
    if len(results) == 1:
        return {results[0].variant: 1.0}
    params = [_posterior(r) for r in results]
    if len(results) == 2:
        (a1, b1), (a2, b2) = params
        p_second = _prob_greater((a2, b2), (a1, b1))
        return {results[0].variant: 1.0 - p_second, results[1].variant: p_second}
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    rng = random.Random(seed)
    wins = [0] * len(results)
    for _ in range(draws):
        sample = [rng.betavariate(a, b) for a, b in params]
        wins[max(range(len(sample)), key=sample.__getitem__)] += 1
    return {r.variant: w / draws for r, w in zip(results, wins, strict=True)}


def required_sample(
    base_rate: float,
    relative_lift: float = 0.20,
    win_probability: float = 0.975,
    power: float = 0.95,
) -> int:
    """Targeted per variant at which `decide` picks the better of two variants in `power` of tests.

    The better variant converts at base_rate × (1 + relative_lift). With n per variant,
    P(best) ≈ Φ(Δ / SE), SE = √((p₁q₁ + p₂q₂) / n), so the rule fires in `power` of tests
    when n = (z_win + z_power)² (p₁q₁ + p₂q₂) / Δ² (normal approximation; checked by
    simulation in the tests). Use it to size the test group and `min_sample_per_variant`.
    """
    lifted = base_rate * (1 + relative_lift)
    if not 0 < base_rate < 1 or not 0 < lifted < 1 or relative_lift == 0:
        raise ValueError(
            f"need 0 < base_rate, base_rate × (1 + lift) < 1 and a non-zero lift, "
            f"got base_rate={base_rate}, relative_lift={relative_lift}"
        )
    if not 0.5 < win_probability < 1 or not 0 < power < 1:
        raise ValueError(
            f"need 0.5 < win_probability < 1 and 0 < power < 1, got {win_probability} and {power}"
        )
    z = NormalDist().inv_cdf
    spread = base_rate * (1 - base_rate) + lifted * (1 - lifted)
    n = (z(win_probability) + z(power)) ** 2 * spread / (lifted - base_rate) ** 2
    return math.ceil(n)


def _posterior(result: VariantResult) -> tuple[int, int]:
    return (
        PRIOR_ALPHA + result.successes,
        PRIOR_BETA + result.targeted - result.successes,
    )


def _prob_greater(x: tuple[int, int], y: tuple[int, int]) -> float:
    """P(X > Y) for X ~ Beta(x), Y ~ Beta(y), integer parameters (exact).

    P(X > Y) = Σ_{i<αx} B(αy+i, βy+βx) / ((βx+i) B(1+i, βx) B(αy, βy)) (Evan Miller's
    closed form). Sums over the smaller α (by symmetry), in logs to avoid underflow; each
    term is the previous one times (αy+i)(βx+i) / ((αy+βy+βx+i)(1+i)).
    """
    (ax, bx), (ay, by) = x, y
    if ax > ay:
        return 1.0 - _prob_greater(y, x)
    log_term = _log_beta(ay, by + bx) - _log_beta(ay, by)  # i = 0, as βx B(1, βx) = 1
    log_terms = []
    for i in range(ax):
        log_terms.append(log_term)
        log_term += math.log((ay + i) * (bx + i) / ((ay + by + bx + i) * (1 + i)))
    top = max(log_terms)
    total = math.exp(top) * math.fsum(math.exp(t - top) for t in log_terms)
    return min(1.0, max(0.0, total))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


# guardrail -> (what the reason calls it, what its rate is per)
_GUARDRAILS = {
    "opt_out_rate": ("opt-out rate", "delivered"),
    "failure_rate": ("delivery-failure rate", "targeted"),
}


def _guardrail_breaches(results: list[VariantResult], rule: DecisionRule) -> list[dict[str, Any]]:
    """Every (variant, guardrail) whose rate is above its limit, with enough messages behind it."""
    breaches = []
    for r in results:
        for guardrail, count, base, limit in (
            ("opt_out_rate", r.opt_outs, r.delivered, rule.max_opt_out_rate),
            ("failure_rate", r.failed, r.targeted, rule.max_failure_rate),
        ):
            if base == 0 or base < rule.guardrail_min_sample or count / base <= limit:
                continue
            rate = count / base
            name, per = _GUARDRAILS[guardrail]
            detail = (
                f"variant {r.variant} {name} {rate:.2%} ({count:,} of {base:,} {per}) "
                f"is above {limit:.2%}"
            )
            breaches.append(
                {
                    "variant": r.variant,
                    "guardrail": guardrail,
                    "rate": rate,
                    "limit": limit,
                    "detail": detail,
                }
            )
    return breaches


def variant_inputs(
    results: list[VariantResult], probabilities: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per variant: its counts, rates, posterior and P(best), JSON-serialisable, for records."""
    variants = {}
    for r in results:
        alpha, beta = _posterior(r)
        variants[r.variant] = {
            "targeted": r.targeted,
            "delivered": r.delivered,
            "successes": r.successes,
            "opt_outs": r.opt_outs,
            "failed": r.failed,
            "success_rate": r.successes / r.targeted if r.targeted else 0.0,
            "opt_out_rate": r.opt_outs / r.delivered if r.delivered else 0.0,
            "failure_rate": r.failed / r.targeted if r.targeted else 0.0,
            "posterior_alpha": alpha,
            "posterior_beta": beta,
            "posterior_mean": alpha / (alpha + beta),
            "p_best": probabilities[r.variant],
        }
    return variants


def _inputs(
    results: list[VariantResult],
    probabilities: dict[str, float],
    rule: DecisionRule,
    seed: int,
    final: bool,
) -> dict[str, Any]:
    """Everything the decision used, JSON-serialisable (str, int, float, bool, dict, list)."""
    return {
        "method": p_best_method(results),
        "trials": "targeted",
        "prior": {"alpha": PRIOR_ALPHA, "beta": PRIOR_BETA},
        "seed": seed,
        "final": final,
        "rule": asdict(rule),
        "variants": variant_inputs(results, probabilities),
    }


def p_best_method(results: list[VariantResult]) -> str:
    """How `prob_best` computes P(best) for these variants (recorded with every decision)."""
    return "monte_carlo" if len(results) > 2 else "exact"


def _check(results: list[VariantResult], minimum: int) -> None:
    if len(results) < minimum:
        raise ValueError(f"need at least {minimum} variant(s), got {len(results)}")
    names = [r.variant for r in results]
    repeated = sorted({n for n in names if names.count(n) > 1})
    problems = [f"variant {n!r} appears more than once" for n in repeated]
    for r in results:
        problems += r.problems()
    if problems:
        raise ValueError("; ".join(problems))
