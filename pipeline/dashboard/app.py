"""The dashboard's web app (aiohttp): the page, its static files, one JSON endpoint per chart.

    GET /                      the page (pipeline/dashboard/page.py)
    GET /api/<chart>           the chart's rows (queries.CHARTS), ?since=&until= (YYYY-MM-DD)
    GET /static/plotly.min.js  Plotly, from the installed `plotly` package (no CDN)
    GET /healthz               200 when ClickHouse answers, 503 otherwise

Queries run in a worker thread (the ClickHouse client blocks; with embedded chDB it also
serialises them). A malformed window is a 400 with one sentence; a ClickHouse failure a
503 naming it, and the page shows it on the chart it broke.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from connectors.clickhouse import DEFAULT_DATABASE, redact
from pipeline.dashboard import page
from pipeline.dashboard.queries import CHARTS, Window
from pipeline.errors import ConfigError, RassylkaError

log = logging.getLogger(__name__)

TITLE = "Rassylka — messages, delivery, campaigns"
_HEADERS = {"Content-Security-Policy": page.CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def plotly_js() -> Path:
    """Path of the plotly.min.js bundled with the `plotly` Python package.

    Raises ConfigError when the package is missing: it is a dependency of Rassylka.
    """
    spec = importlib.util.find_spec("plotly")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    raise ConfigError(["plotly.min.js not found: the `plotly` package is not installed"],
                      hint="install Rassylka's dependencies: make install (or pip install -e .)")


def create_dashboard_app(client: Any, database: str = DEFAULT_DATABASE,
                         today: Any = None) -> web.Application:
    """The app over `client` (`connectors.clickhouse.Client`); `today()` gives the UTC date
    the default window ends on (tests pin it)."""
    today = today or (lambda: dt.datetime.now(dt.UTC).date())
    script = plotly_js()
    html = page.render(TITLE, redact(client.url))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", headers=_HEADERS)

    def text(body: str, content_type: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=body, content_type=content_type, headers=_HEADERS)

        return handler

    async def plotly(request: web.Request) -> web.FileResponse:
        return web.FileResponse(script, headers={"Cache-Control": "public, max-age=86400",
                                                 "Content-Type": "text/javascript"})

    async def chart(request: web.Request) -> web.Response:
        name = request.match_info["chart"]
        query = CHARTS.get(name)
        if query is None:
            return web.json_response({"error": f"no chart {name!r}"}, status=404)
        try:
            window = Window.parse(request.query.get("since"), request.query.get("until"), today())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            data = await asyncio.to_thread(query, client, window, database)
        except RassylkaError as exc:
            log.warning("chart %s failed: %s", name, exc)
            return web.json_response({"error": f"ClickHouse: {exc}"}, status=503)
        body = {"chart": name, "window": {k: str(v) for k, v in window.params().items()}, **data}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def healthz(request: web.Request) -> web.Response:
        try:
            await asyncio.to_thread(client.command, "SELECT 1")
        except RassylkaError as exc:
            return web.json_response({"status": "clickhouse_unavailable", "error": str(exc)},
                                     status=503)
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/static/dashboard.js", text(page.SCRIPT, "text/javascript"))
    app.router.add_get("/static/dashboard.css", text(page.STYLE, "text/css"))
    app.router.add_get("/static/plotly.min.js", plotly)
    app.router.add_get("/api/{chart}", chart)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event,
                on_listening: Callable[[], None] = lambda: None) -> None:
    """Serve `app` on host:port until `stop` is set. ConfigError when the port is taken."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError([f"cannot listen on {host}:{port}: {exc.strerror or exc}"],
                              hint="choose another --port or --host") from exc
        log.info("dashboard on http://%s:%d/", host, port)
        on_listening()
        await stop.wait()
    finally:
        await runner.cleanup()


def run(client: Any, host: str, port: int, on_listening: Callable[[], None] = lambda: None) -> None:
    """Serve the dashboard over `client` until SIGTERM / SIGINT; `on_listening()` once bound."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(create_dashboard_app(client), host, port, stop, on_listening)

    asyncio.run(main())
