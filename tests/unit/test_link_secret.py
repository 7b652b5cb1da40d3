"""The redirect service's secret: required, the public development secret only on request."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, summary
from pipeline.links import DEV_SECRET, require_link_secret


def test_the_configured_secret_is_used() -> None:
    assert require_link_secret({"RASSYLKA_LINK_SECRET": "s3"}) == "s3"
    assert require_link_secret({"RASSYLKA_LINK_SECRET": "s3"}, allow_dev=True) == "s3"


def test_no_secret_is_refused_in_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        require_link_secret({})
    [line] = summary(info.value)
    assert "RASSYLKA_LINK_SECRET" in line and "--dev" in line


def test_the_dev_secret_only_when_allowed() -> None:
    assert require_link_secret({}, allow_dev=True) == DEV_SECRET
