"""The campaign test's decision: seeded simulations of whole tests, guardrails, sample size."""

import json
import math
import random

import pytest

from pipeline.campaigns.decision import (
    NO_WINNER,
    ROLLOUT,
    STOP_GUARDRAIL,
    WAIT,
    DecisionRule,
    VariantResult,
    decide,
    prob_best,
    required_sample,
)

RULE = DecisionRule()
RUNS = 200


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Successes in n Bernoulli(p) trials, exactly, by jumping from one success to the next."""
    count, position, log_q = 0, -1, math.log1p(-p)
    while True:
        position += 1 + int(math.log(1.0 - rng.random()) / log_q)
        if position >= n:
            return count
        count += 1


def simulated(rng: random.Random, n: int, rates: dict[str, float]) -> list[VariantResult]:
    """One test group: n targeted per variant, all delivered, no opt-outs or failures."""
    return [VariantResult(v, n, n, binomial(rng, n, p), 0, 0) for v, p in rates.items()]


def winners(rates: dict[str, float], n: int, rule: DecisionRule) -> list[str | None]:
    """The winner of each of RUNS simulated tests (None when there was none), seeded."""
    rng = random.Random(20261201)
    out = []
    for seed in range(RUNS):
        decision = decide(simulated(rng, n, rates), rule, seed=seed, final=True)
        assert decision.action in (ROLLOUT, NO_WINNER)
        out.append(decision.winner)
    return out


def result(variant, targeted=10_000, delivered=None, successes=1_000, opt_outs=0, failed=0):
    delivered = targeted if delivered is None else delivered
    return VariantResult(variant, targeted, delivered, successes, opt_outs, failed)


def test_a_variant_20_percent_better_wins_in_95_percent_of_tests():
    picked = winners({"A": 0.10, "B": 0.12}, RULE.min_sample_per_variant, RULE)
    assert picked.count("B") / RUNS >= 0.95
    assert "A" not in picked


def test_equal_variants_give_no_winner_in_90_percent_of_tests():
    picked = winners({"A": 0.10, "B": 0.10}, RULE.min_sample_per_variant, RULE)
    assert picked.count(None) / RUNS >= 0.90


def test_required_sample_gives_the_promised_power():
    n = required_sample(0.10, 0.20)
    assert 6_000 < n < 6_500 < RULE.min_sample_per_variant
    rule = DecisionRule(min_sample_per_variant=n)
    picked = winners({"A": 0.10, "B": 0.12}, n, rule)
    assert picked.count("B") / RUNS >= 0.90  # 95% expected; 200 runs leave some noise


def test_required_sample_grows_as_the_base_rate_falls():
    sizes = [required_sample(p) for p in (0.20, 0.10, 0.05, 0.02)]
    assert sizes == sorted(sizes)
    assert required_sample(0.10, win_probability=0.95) < required_sample(0.10)
    with pytest.raises(ValueError):
        required_sample(0.9, 0.2)  # the better variant would convert at 108%


def test_exact_two_variant_probability_matches_monte_carlo():
    a, b = result("A", 1_000, successes=100), result("B", 1_000, successes=118)
    exact = prob_best([a, b])
    rng = random.Random(3)
    draws = 40_000
    wins_b = sum(rng.betavariate(119, 883) > rng.betavariate(101, 901) for _ in range(draws))
    assert exact["B"] == pytest.approx(wins_b / draws, abs=0.01)
    assert exact["A"] + exact["B"] == pytest.approx(1.0)
    assert prob_best([a, result("C", 1_000, successes=100)])["C"] == pytest.approx(0.5)


def test_three_variants_use_seeded_monte_carlo():
    results = [
        result("A", successes=1_000),
        result("B", successes=1_200),
        result("C", successes=1_010),
    ]
    decision = decide(results, RULE, seed=5)
    assert (decision.action, decision.winner) == (ROLLOUT, "B")
    assert decision.inputs["method"] == "monte_carlo"
    assert sum(decision.probabilities.values()) == pytest.approx(1.0)
    assert decide(results, RULE, seed=5) == decision


def test_below_the_minimum_sample_waits_then_ends_without_winner():
    results = [result("A", 2_000, successes=200), result("B", 2_000, successes=400)]
    waiting = decide(results, RULE)
    assert (waiting.action, waiting.winner) == (WAIT, None)
    assert "8,000" in waiting.reason
    ended = decide(results, RULE, final=True)
    assert (ended.action, ended.winner) == (NO_WINNER, None)
    assert "window ended" in ended.reason and "A 2,000" in ended.reason


def test_enough_sample_and_a_clear_winner_rolls_out():
    decision = decide([result("A", successes=1_000), result("B", successes=1_200)], RULE)
    assert (decision.action, decision.winner) == (ROLLOUT, "B")
    assert decision.probabilities["B"] >= RULE.win_probability
    assert "B is best" in decision.reason


def test_enough_sample_and_no_clear_winner():
    decision = decide([result("A", successes=1_000), result("B", successes=1_010)], RULE)
    assert (decision.action, decision.winner) == (NO_WINNER, None)
    assert "P(best)" in decision.reason


def test_opt_out_rate_above_the_limit_stops_and_names_the_variant():
    results = [
        result("A", successes=1_000, opt_outs=20),
        result("B", successes=1_500, opt_outs=250),
    ]
    decision = decide(results, RULE)
    assert (decision.action, decision.winner) == (STOP_GUARDRAIL, None)
    assert "variant B opt-out rate 2.50%" in decision.reason
    assert "variant A" not in decision.reason  # 0.20% is within the 1% limit
    [breach] = decision.inputs["guardrail_breaches"]
    assert (breach["variant"], breach["guardrail"]) == ("B", "opt_out_rate")


def test_guardrails_come_before_the_sample_and_the_winner():
    early = [result("A", 1_000, successes=100), result("B", 1_000, 850, successes=90, failed=150)]
    decision = decide(early, RULE)
    assert decision.action == STOP_GUARDRAIL
    assert "variant B delivery-failure rate 15.00%" in decision.reason


def test_guardrails_wait_for_enough_messages():
    few = [result("A", 100, successes=10, opt_outs=3), result("B", 100, successes=10)]
    assert decide(few, RULE).action == WAIT  # 3% of 100 delivered: too few to judge


def test_inputs_carry_everything_and_are_json():
    decision = decide([result("A", successes=1_000), result("B", successes=1_200)], RULE, seed=42)
    inputs = decision.inputs
    assert json.loads(json.dumps(inputs)) == inputs
    assert inputs["seed"] == 42 and inputs["action"] == ROLLOUT
    assert inputs["rule"]["win_probability"] == RULE.win_probability
    assert inputs["rule"]["max_opt_out_rate"] == RULE.max_opt_out_rate
    b = inputs["variants"]["B"]
    assert (b["targeted"], b["successes"], b["posterior_alpha"], b["posterior_beta"]) == (
        10_000,
        1_200,
        1_201,
        8_801,
    )
    assert b["posterior_mean"] == pytest.approx(1_201 / 10_002)
    assert b["p_best"] == decision.probabilities["B"]


@pytest.mark.parametrize(
    "results",
    [
        [result("A")],
        [result("A"), result("A")],
        [result("A"), result("B", 100, successes=101)],
        [result("A"), result("B", failed=-1)],
        [result("A"), result("B", 1_000, delivered=900, failed=200)],
    ],
)
def test_impossible_input_is_refused(results):
    with pytest.raises(ValueError):
        decide(results, RULE)
