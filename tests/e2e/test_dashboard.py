"""`rassylka dashboard` over the demo's data, rendered in headless Chromium.

The data: the embedded ClickHouse the demo leaves in `.run/demo/clickhouse`. A store that
is there, not held by a running process and recent enough for the page's default window
(the last 30 days) is reused; otherwise — a fresh clone, where this file runs before
test_demo.py — the test runs `rassylka demo` itself (about 100 s). Either way the
dashboard reads a copy, so a demo started meanwhile cannot pull the folder from under it.
A reused store with an empty chart (a demo cut short) gets one fresh demo run.

The browser: Debian's `chromium` (`make chromium` installs it), driven through the
DevTools protocol: every chart must have plotted data, every request must go to the
dashboard itself (no CDN), the page must log no error; the full-page screenshot is saved
as docs/dashboard.png, the picture the README shows.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.clickhouse import _lock_holder
from pipeline.dashboard.page import CARDS
from pipeline.procs import free_port, settings_env, start_stage, stop
from pipeline.settings import DEMO_DIR, ROOT, Settings

DEMO_STORE = DEMO_DIR / "clickhouse"
SCREENSHOT = ROOT / "docs" / "dashboard.png"
WIDTH = 1400
STALE_AFTER_S = 20 * 86400  # the page shows 30 days by default


def test_dashboard_charts_the_demo(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed: run `make chromium` (installs the Debian "
                    "package `chromium`), or put a Chromium named `chromium` on PATH")
    reused = _reusable(DEMO_STORE)
    if not reused:
        _run_demo(request)
    started = time.monotonic()
    page = _render(browser, _copy(DEMO_STORE, tmp_path / "store-1"), tmp_path)
    if reused and not page.complete():  # the folder of a demo cut short, or of another one
        _run_demo(request)
        page = _render(browser, _copy(DEMO_STORE, tmp_path / "store-2"), tmp_path)

    assert set(page.points) == {name for name, _, _ in CARDS}, page.points
    assert not page.errors, page.errors
    assert all(n > 0 for n in page.points.values()), f"charts without data: {page.points}"
    assert page.decisions > 0, "the campaign's automatic decision is missing"
    outside = [url for url in page.requests
               if not url.startswith((page.base, "data:", "blob:", "about:"))]
    assert not outside, f"the page loaded from elsewhere than the dashboard: {outside}"
    assert f"{page.base}static/plotly.min.js" in page.requests
    assert not page.console, page.console
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(page.screenshot)
    print(f"dashboard rendered in {time.monotonic() - started:.1f} s: {page.points}; "
          f"screenshot {SCREENSHOT} ({len(page.screenshot) // 1024} KiB)")


def _reusable(store: Path) -> bool:
    """Whether the demo left a store here that no process holds and that is recent."""
    if not (store / "metadata").is_dir() or _lock_holder(str(store)) is not None:
        return False
    newest = max((p.stat().st_mtime for p in store.rglob("*")), default=0.0)
    return time.time() - newest < STALE_AFTER_S


def _run_demo(request: pytest.FixtureRequest) -> None:
    settings: Settings = request.getfixturevalue("settings")  # the session's broker
    env = settings_env(settings)
    for name in ("RASSYLKA_TOPIC_PREFIX", "RASSYLKA_APP_ID", "CLICKHOUSE_URL",
                 "RASSYLKA_CONFIG_DIR"):
        env.pop(name, None)  # as test_demo.py: the demo's own namespace and store
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


def _copy(store: Path, target: Path) -> Path:
    shutil.copytree(store, target, symlinks=True, ignore=shutil.ignore_patterns("status"))
    return target


@dataclass
class Page:
    base: str
    points: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    decisions: int = 0
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    screenshot: bytes = b""

    def complete(self) -> bool:
        return bool(self.points) and all(self.points.values()) and self.decisions > 0


def _render(browser: str, store: Path, tmp_path: Path) -> Page:
    """Start the dashboard on `store`, load its page in Chromium, return what it drew."""
    port = free_port()
    settings = replace(Settings.from_env({}), clickhouse_url=f"chdb://{store}")
    log = tmp_path / f"dashboard-{port}.log"
    proc = start_stage(settings, ["dashboard", "--port", str(port)], log)
    base = f"http://127.0.0.1:{port}/"
    try:
        _wait_healthy(base, proc, log)
        return asyncio.run(_chromium(browser, base, tmp_path / f"chromium-{port}"))
    finally:
        stop(proc)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dashboard exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(base + "healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"dashboard not healthy within 60 s: {log.read_text()[-3000:]}")


_CHARTS_JS = """JSON.stringify({
  charts: [...document.querySelectorAll('.chart')].map((e) => [e.dataset.chart,
    Number(e.dataset.points || 0), e.dataset.error || null]),
  decisions: Number(document.getElementById('decisions').dataset.rows || 0),
  height: document.documentElement.scrollHeight})"""


async def _chromium(browser: str, url: str, profile: Path) -> Page:
    """Load `url` in headless Chromium over the DevTools protocol; wait for the page's
    `data-ready`, read what every chart drew, every request made, every console error,
    and take a full-page screenshot."""
    proc = await asyncio.create_subprocess_exec(
        browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-sync",
        "--disable-component-update", "--disable-default-apps", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", f"--window-size={WIDTH},1000", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    page = Page(base=url)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                break
            await asyncio.sleep(0.1)
        devtools = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{devtools}/json/list") as answer:
                targets = await answer.json(content_type=None)
            target = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = _DevTools(ws, page)
                reader = asyncio.create_task(cdp.read())
                try:
                    await _load(cdp, page, url)
                finally:
                    reader.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    return page


async def _load(cdp: _DevTools, page: Page, url: str) -> None:
    for domain in ("Network", "Page", "Runtime", "Log"):
        await cdp.call(f"{domain}.enable")
    await cdp.call("Emulation.setDeviceMetricsOverride",
                   width=WIDTH, height=1000, deviceScaleFactor=1, mobile=False)
    await cdp.call("Page.navigate", url=url)
    deadline = time.monotonic() + 60
    while await cdp.evaluate("document.body && document.body.dataset.ready") != "1":
        assert time.monotonic() < deadline, "the page did not finish drawing within 60 s"
        await asyncio.sleep(0.2)
    drawn = json.loads(await cdp.evaluate(_CHARTS_JS))
    for name, points, error in drawn["charts"]:
        page.points[name] = points
        if error:
            page.errors[name] = error
    page.decisions = drawn["decisions"]
    await cdp.call("Emulation.setDeviceMetricsOverride",
                   width=WIDTH, height=drawn["height"], deviceScaleFactor=1, mobile=False)
    await asyncio.sleep(0.5)  # Plotly redraws at the new size (responsive)
    shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    page.screenshot = base64.b64decode(shot["data"])


class _DevTools:
    """The few DevTools-protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, page: Page) -> None:
        self.ws = ws
        self.page = page
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        self.waiting[number] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": number, "method": method, "params": params})
        return await asyncio.wait_for(self.waiting[number], 30)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    async def read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self.waiting.pop(data["id"])
                if "error" in data:
                    future.set_exception(AssertionError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
                continue
            params = data.get("params", {})
            if data.get("method") == "Network.requestWillBeSent":
                self.page.requests.append(params["request"]["url"])
            elif data.get("method") == "Runtime.exceptionThrown":
                self.page.console.append(json.dumps(params["exceptionDetails"])[:500])
            elif data.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                self.page.console.append(" ".join(str(a.get("value", a.get("description")))
                                                  for a in params["args"]))
            elif data.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.page.console.append(f"{params['entry']['source']}: {params['entry']['text']}")
