"""Thompson-sampling weights for `strategy: bandit` rules."""

import json

import pytest

from pipeline.campaigns.bandit import bandit_update, update_weights, with_floor
from pipeline.campaigns.decision import VariantResult


def result(variant, targeted, successes):
    return VariantResult(variant, targeted, targeted, successes, 0, 0)


THREE = [result("A", 2_000, 200), result("B", 2_000, 300), result("C", 2_000, 210)]


@pytest.mark.parametrize(
    "results",
    [
        THREE,
        [result("A", 2_000, 200), result("B", 2_000, 300)],
        [result("A", 0, 0), result("B", 0, 0), result("C", 50, 1), result("D", 5_000, 900)],
    ],
)
def test_weights_sum_to_one_and_respect_the_minimum_share(results):
    weights = update_weights(results, min_share=0.05, draws=5_000)
    assert list(weights) == [r.variant for r in results]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= 0.05 - 1e-12


def test_a_clearly_better_variant_gets_most_of_the_traffic():
    weights = update_weights(THREE, min_share=0.05, draws=5_000)
    assert weights["B"] == pytest.approx(0.90)  # the others are held at the floor
    assert weights["A"] == pytest.approx(0.05) and weights["C"] == pytest.approx(0.05)


def test_without_data_every_variant_gets_an_equal_chance():
    weights = update_weights([result(v, 0, 0) for v in "ABCD"], draws=20_000, seed=1)
    assert all(w == pytest.approx(0.25, abs=0.015) for w in weights.values())


def test_same_counts_and_seed_give_the_same_weights():
    close = [result("A", 500, 50), result("B", 500, 55), result("C", 500, 53)]
    first = update_weights(close, draws=5_000, seed=7)
    assert update_weights(close, draws=5_000, seed=7) == first
    assert update_weights(close, draws=5_000, seed=8) != first


def test_floor_keeps_the_proportions_of_the_others():
    weights = with_floor({"A": 0.90, "B": 0.06, "C": 0.04}, 0.05)
    assert weights["C"] == 0.05
    assert weights["A"] / weights["B"] == pytest.approx(0.90 / 0.06)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_floor_scaling_the_others_down_never_pushes_one_under():
    # C is raised to 0.05; scaling A and B down to 0.95 would leave B at 0.0489
    weights = with_floor({"A": 0.94, "B": 0.051, "C": 0.009}, 0.05)
    assert weights == pytest.approx({"A": 0.90, "B": 0.05, "C": 0.05})


def test_floor_too_high_for_the_number_of_variants_is_refused():
    with pytest.raises(ValueError):
        update_weights(THREE, min_share=0.4)


def test_update_records_previous_weights_and_inputs():
    previous = {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}
    update = bandit_update("promo-bandit", THREE, previous, draws=5_000, seed=3)
    assert update.rule_id == "promo-bandit"
    assert update.previous_weights == previous
    assert update.weights == update_weights(THREE, draws=5_000, seed=3)
    inputs = update.inputs
    assert json.loads(json.dumps(inputs)) == inputs
    assert (inputs["seed"], inputs["draws"], inputs["min_share"]) == (3, 5_000, 0.05)
    assert inputs["variants"]["B"]["successes"] == 300
    assert inputs["variants"]["B"]["p_best"] > 0.99  # before the floor
