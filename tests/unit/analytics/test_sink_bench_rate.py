"""The sink benchmark's steady rate: neither start-up nor the final batch counts.

The last batch of a run is stored when its oldest record is `max_age_s` old, not when it
is full, so counting it made a 200,000-row run look a third slower than the sink is."""

from __future__ import annotations

import importlib.util
import math

import pytest

from pipeline.settings import ROOT

_spec = importlib.util.spec_from_file_location("sink_throughput", ROOT / "bench" / "sink_throughput.py")
assert _spec is not None and _spec.loader is not None
sink_throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sink_throughput)


def test_the_steady_rate_runs_from_the_first_commit_to_the_last_but_one() -> None:
    commits = [(10.0, 5_000), (10.1, 10_000), (10.2, 15_000), (11.2, 17_000)]  # last: by age
    assert sink_throughput.steady_rate(commits) == pytest.approx(50_000)


def test_with_two_commits_the_rate_runs_to_the_last() -> None:
    assert sink_throughput.steady_rate([(1.0, 5_000), (1.5, 7_000)]) == 4_000


def test_one_commit_has_no_rate() -> None:
    assert math.isnan(sink_throughput.steady_rate([(1.0, 5_000)]))
