"""The redirect service's HTTP edge, served the way `rassylka redirect` serves it.

Requests aiohttp cannot parse (an over-long code) get a bare 400: the input is neither
echoed in the body nor logged, and no traceback is logged per request. No broker needed:
the link index is given and the click producer is never used.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from connectors.redirect import BAD_REQUEST, NOT_FOUND, LinkIndex, create_redirect_app, serve
from pipeline.links import make_code
from pipeline.procs import free_port
from pipeline.settings import Settings

SECRET = "http-edge-secret"


async def _get_all(paths: list[str]) -> list[tuple[int, str]]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    app = create_redirect_app(settings, SECRET, LinkIndex(), feed=False)
    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # wait until it listens
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            for path in paths:
                async with session.get(f"http://127.0.0.1:{port}{path}",
                                       allow_redirects=False) as resp:
                    answers.append((resp.status, await resp.text()))
    finally:
        stop.set()
        await server
    return answers


@pytest.mark.parametrize("length", [9_000, 100_000])
def test_over_long_code_is_400_without_echo_or_traceback(
    length: int, caplog: pytest.LogCaptureFixture
) -> None:
    code = "Zq" * (length // 2)
    caplog.set_level(logging.WARNING)
    [(status, body)] = asyncio.run(_get_all([f"/c/{code}"]))
    assert status == 400
    assert body == BAD_REQUEST
    assert "Zq" not in body
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None and not r.exc_text for r in problems), "no traceback"
    assert all("ZqZq" not in r.getMessage() for r in caplog.records), "no echo in the logs"
    assert len(problems) == 1 and "400" in problems[0].getMessage()


def test_wrong_and_tampered_codes_are_404_without_echo(caplog: pytest.LogCaptureFixture) -> None:
    tampered = make_code("m-1", 0, SECRET)[:-1] + "0"
    caplog.set_level(logging.WARNING)
    answers = asyncio.run(_get_all(["/c/" + "Zq" * 300, f"/c/{tampered}", "/c/<script>"]))
    assert answers == [(404, NOT_FOUND)] * 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
