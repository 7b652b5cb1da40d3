"""The dashboard's window, time steps, intervals and HTTP answers, without ClickHouse."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.dashboard.app import create_dashboard_app
from pipeline.dashboard.queries import CHARTS, MAX_POINTS, Window, pick_step
from pipeline.dashboard.stats import wilson
from pipeline.errors import RetryableError

TODAY = dt.date(2026, 12, 1)


def test_window_defaults_to_the_last_30_days_and_refuses_bad_ones() -> None:
    assert Window.parse(None, None, TODAY) == Window(dt.date(2026, 11, 2), TODAY)
    assert Window.parse("2026-01-01", "2026-01-31", TODAY).params() == {
        "since": "2026-01-01", "until": "2026-01-31"}
    for since, until in (("2026-13-01", None), ("2026-12-02", "2026-12-01"),
                         ("2025-01-01", "2026-12-01"), ("1; DROP TABLE x", None)):
        with pytest.raises(ValueError):
            Window.parse(since, until, TODAY)


def test_step_keeps_the_funnel_under_max_points() -> None:
    assert pick_step(0) == 10
    assert pick_step(180) == 10  # a demo of three minutes
    assert pick_step(30 * 86400) == 6 * 3600
    assert pick_step(366 * 86400) == 86400
    assert all(span / pick_step(span) <= MAX_POINTS for span in (3600, 86400, 7 * 86400))


def test_wilson_interval() -> None:
    rate, low, high = wilson(0, 10)
    assert (rate, low) == (0.0, 0.0) and high == pytest.approx(0.2775, abs=1e-4)
    rate, low, high = wilson(50, 100)
    assert rate == 0.5 and low == pytest.approx(0.4038, abs=1e-4)
    assert high == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 0) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


class FakeClient:
    url = "http://analyst:secret@clickhouse:8123/rassylka"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.calls.append((sql, parameters))
        if self.fail:
            raise RetryableError("connection refused")
        return []

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> int:
        if self.fail:
            raise RetryableError("connection refused")
        return 1


async def _get(client: FakeClient, *paths: str) -> list[tuple[int, dict[str, str], str]]:
    app = create_dashboard_app(client, today=lambda: TODAY)
    async with TestClient(TestServer(app)) as http:
        answers = []
        for path in paths:
            response = await http.get(path)
            answers.append((response.status, dict(response.headers), await response.text()))
        return answers


def test_page_loads_nothing_from_elsewhere_and_hides_the_password() -> None:
    (status, headers, html), (js_status, _, _), (css_status, _, _) = asyncio.run(
        _get(FakeClient(), "/", "/static/plotly.min.js", "/static/dashboard.css"))
    assert (status, js_status, css_status) == (200, 200, 200)
    assert "secret" not in html and "analyst:***@" in html
    assert not re.findall(r"(?:src|href)=\"(?!/|data:)", html)
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for name in CHARTS:
        assert f'data-chart="{name}"' in html


def test_charts_bind_the_window_and_answer_400_404_503() -> None:
    fake = FakeClient()
    (ok, _, body), (bad, _, why), (missing, _, _) = asyncio.run(_get(
        fake, "/api/not_sent?since=2026-11-01&until=2026-11-30", "/api/not_sent?since=yesterday",
        "/api/nothing"))
    assert (ok, bad, missing) == (200, 400, 404)
    assert '"rows": []' in body and "yesterday" in why
    sql, parameters = fake.calls[-1]
    assert parameters == {"since": "2026-11-01", "until": "2026-11-30"}
    assert "2026-11-01" not in sql
    (unavailable, _, error), (health, _, _) = asyncio.run(
        _get(FakeClient(fail=True), "/api/opt_outs", "/healthz"))
    assert (unavailable, health) == (503, 503) and "connection refused" in error
