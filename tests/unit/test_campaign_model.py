"""Campaign definitions: validation, the reproducible split, windows, pacing; and the
router honouring a campaign's rule and variant."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from pipeline.campaigns.model import Campaign, Pacing, Window, assign, duration_s
from pipeline.rules.matching import campaign_rule, forced_variant
from pipeline.rules.model import Variant


def campaign(**changes: object) -> Campaign:
    spec = {"id": "spring", "audience": {"segment": "engaged"}, "rule": "promo",
            "test": {"fraction": 0.2, "holdout": 0.25}} | changes
    return Campaign.model_validate(spec)


def test_split_is_reproducible_and_follows_the_fractions() -> None:
    c = campaign()
    first = [assign(c, ("a", "b"), f"c{i}") for i in range(20_000)]
    assert first == [assign(c, ("a", "b"), f"c{i}") for i in range(20_000)]
    counts = Counter((phase, variant) for phase, variant in first)
    assert 0.78 < counts[("rollout", None)] / 20_000 < 0.82
    assert 0.04 < counts[("holdout", None)] / 20_000 < 0.06  # a quarter of the test group
    assert abs(counts[("test", "a")] - counts[("test", "b")]) < 300
    other = campaign(id="autumn")
    assert [assign(other, ("a", "b"), f"c{i}") for i in range(200)] != first[:200]


def test_window_across_midnight_and_pacing() -> None:
    night = Window.model_validate({"from": "22:00", "to": "02:00"})
    assert night.is_open(23 * 60) and night.is_open(60) and not night.is_open(12 * 60)
    day = Window.model_validate({"from": "10:00", "to": "20:00"})
    assert day.is_open(10 * 60) and not day.is_open(20 * 60)
    with pytest.raises(ValidationError):
        Window.model_validate({"from": "25:00", "to": "02:00"})
    assert Pacing(per_minute=600).rate_per_s(10) == 10.0
    assert Pacing(spread_hours=2).rate_per_s(7200) == 1.0
    with pytest.raises(ValidationError):
        Pacing(per_minute=10, spread_hours=1)
    assert duration_s("2h") == 7200 and duration_s("3d") == 259_200


def test_campaign_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="promo_cod"):
        campaign(promotion={"promo_cod": "X"})
    with pytest.raises(ValidationError):
        campaign(surprise=1)
    with pytest.raises(ValidationError):
        campaign(test={"fraction": 0})
    with pytest.raises(ValidationError):
        campaign(id="Bad Id")
    with pytest.raises(ValidationError, match="not a duration"):
        campaign(test={"evaluate_after": "soon"})
    with pytest.raises(ValidationError, match="not a duration"):
        campaign(metric={"attribution": "3 weeks"})


def test_router_takes_the_campaign_rule_and_variant_only_from_campaign_events() -> None:
    from types import SimpleNamespace

    rule = SimpleNamespace(variants=(Variant("a", "t_a", 50), Variant("b", "t_b", 50)))
    event = {"campaign_id": "spring",
             "attributes": {"campaign_rule": "promo", "campaign_variant": "b"}}
    assert campaign_rule(event) == "promo"
    assert forced_variant(rule, event).name == "b"  # type: ignore[arg-type,union-attr]
    plain = {"campaign_id": "", "attributes": {"campaign_rule": "promo", "campaign_variant": "b"}}
    assert campaign_rule(plain) is None and forced_variant(rule, plain) is None  # type: ignore[arg-type]
    unknown = {"campaign_id": "spring", "attributes": {"campaign_variant": "z"}}
    assert forced_variant(rule, unknown) is None  # type: ignore[arg-type]


def test_learned_weights_apply_only_to_bandit_rules() -> None:
    from pipeline.rules.matching import pick_variant
    from pipeline.rules.model import Bandit

    variants = (Variant("a", "t_a", 50), Variant("b", "t_b", 50))
    bandit = SimpleNamespace(id="promo", variants=variants, bandit=Bandit())
    fixed = SimpleNamespace(id="promo", variants=variants, bandit=None)
    learned = {"a": 0.1, "b": 0.9}
    customers = [f"c{i}" for i in range(5000)]
    with_bandit = Counter(pick_variant(bandit, c, learned).name for c in customers)  # type: ignore[arg-type]
    assert 0.87 < with_bandit["b"] / 5000 < 0.93
    plain = Counter(pick_variant(fixed, c, learned).name for c in customers)  # type: ignore[arg-type]
    assert 0.47 < plain["b"] / 5000 < 0.53, "fixed weights, stable per customer"
    assert [pick_variant(fixed, c).name for c in customers[:50]] == \
        [pick_variant(fixed, c, learned).name for c in customers[:50]]  # type: ignore[arg-type]
    none_known = Counter(pick_variant(bandit, c, {"z": 1.0}).name for c in customers)  # type: ignore[arg-type]
    assert 0.47 < none_known["b"] / 5000 < 0.53, "weights naming no variant are ignored"


def test_start_and_end_need_an_offset() -> None:
    assert campaign(start_at="2026-12-24T10:00:00+03:00").start_at
    with pytest.raises(ValidationError, match="no time zone offset"):
        campaign(end_at="2026-12-24T10:00:00")
    with pytest.raises(ValidationError, match="not an ISO 8601"):
        campaign(end_at="tomorrow")


def test_a_split_rollout_shares_variants_evenly() -> None:
    """Regression: with on_no_winner: split, rollout members (all above the test fraction)
    were mapped through the test split and went 37.5% / 62.5% to two variants."""
    from pipeline.campaigns.model import split_variant

    c = campaign()
    rollout = [f"c{i}" for i in range(40_000) if assign(c, ("a", "b"), f"c{i}")[0] == "rollout"]
    shares = Counter(split_variant(c.id, ("a", "b"), cid) for cid in rollout)
    assert 0.48 < shares["a"] / len(rollout) < 0.52
    assert split_variant(c.id, ("a", "b"), "c7") == split_variant(c.id, ("a", "b"), "c7")
