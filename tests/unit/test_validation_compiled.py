"""The compiled validator (`validation.accepts`) agrees with `validation.problems` on every
value: it accepts exactly what has no problem, so the fast path is exactly as strict."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pipeline import avro
from pipeline.api.openapi import EXAMPLES
from pipeline.validation import accepts, problems

_ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**31, 2**63, 1.5, "", "x", "sms",
                          [], ["a"], [1], {}, {"a": "b"}, {"a": 1}]


def _mutations(example: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The example with one field removed, replaced or added, many times over."""
    out = [example]
    for name in example:
        out.append({k: v for k, v in example.items() if k != name})
        for odd in _ODD_VALUES:
            out.append({**example, name: odd})
    for odd in _ODD_VALUES:
        out.append({**example, "not_a_field": odd})
    for _ in range(200):
        item = dict(example)
        for name in rng.sample(sorted(item), k=min(3, len(item))):
            item[name] = rng.choice(_ODD_VALUES)
        out.append(item)
    return out


@pytest.mark.parametrize("contract", sorted(avro.registry().current))
def test_the_compiled_check_accepts_exactly_what_problems_finds_nothing_wrong_with(
        contract: str) -> None:
    found = avro.registry().contract(contract)
    example = EXAMPLES.get(contract)
    if example is None:  # contracts the API does not take: their required fields, typed
        example = {f["name"]: f.get("default") for f in found.schema["fields"]}
    rng = random.Random(contract)
    values = _mutations(example, rng) + list(_ODD_VALUES)
    agreed = [accepts(found)(v) == (not problems(found.schema, v, found.schema["name"], {}))
              for v in values]
    assert all(agreed), [v for v, ok in zip(values, agreed, strict=True) if not ok][:3]
    if contract in EXAMPLES:  # the API's examples, with the event id it adds when missing
        names = {f["name"] for f in found.schema["fields"]}
        assert accepts(found)({**example, **({"event_id": "e1"} if "event_id" in names else {})})


def test_an_example_passes_and_a_wrong_nested_value_does_not() -> None:
    profile = avro.registry().contract("customer_profile")
    assert accepts(profile)(EXAMPLES["customer_profile"])
    bad = {**EXAMPLES["customer_profile"], "attributes": {"tier": 5}}
    assert not accepts(profile)(bad)
    assert problems(profile.schema, bad, profile.schema["name"], {})
