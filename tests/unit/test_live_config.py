"""The live `config/` must always validate: the one test that reads it on purpose.

Every other test reads the tests' own copy (tests/fixtures/config/), so operators can add
rules and templates to `config/` without breaking tests; this one catches a `config/` that
would stop the router or the sender from starting.
"""

from __future__ import annotations

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.rules.loader import load_ruleset, validate
from pipeline.sender.setup import load_policy, load_routes
from pipeline.settings import ROOT

LIVE = ROOT / "config"


def test_rules_validate_passes_on_the_live_config() -> None:
    result = CliRunner().invoke(app, ["rules", "validate", "--config-dir", str(LIVE)])
    assert result.exit_code == 0, result.output
    assert validate(LIVE) == []
    assert load_ruleset(LIVE).rules


def test_sender_config_loads_from_the_live_config() -> None:
    policy, limits = load_policy(LIVE)
    assert policy.allowed_regions
    default, routes = load_routes(LIVE)
    assert default in routes
