"""The HTTP API's part of `make bench`: events/s accepted and latency to 202.

A real `rassylka api` process (its own prefix, its own key) on the bench broker, loaded
by an aiohttp client in the bench process: single-event requests at a fixed concurrency,
then batches. Every request is timed from send to its 202, which comes only after the
broker acknowledged every record (acks=all). No router runs here, so the lag limit is
off for this run.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from pipeline.api.keys import create_key
from pipeline.procs import free_port, start_stage, stop
from pipeline.settings import Settings


def _event(i: int, run: str) -> dict[str, Any]:
    return {"event_id": f"{run}-{i}", "customer_id": f"b{i % 100_000:07d}",
            "occurred_at_ms": int(time.time() * 1000), "source": "bench",
            "invoice_id": f"INV-{i}", "amount_minor": 150_000, "due_date": "2026-12-31"}


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]  # noqa: E731
    return {"p50": pick(50), "p95": pick(95), "p99": pick(99), "max": ordered[-1]}


async def _load(url: str, key: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(path: str) -> None:
            for body in queue:
                started = time.perf_counter()
                async with session.post(url + path, data=body, headers=headers) as resp:
                    await resp.read()
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        path = "/v1/events/payment_due" if b'"events"' not in bodies[0] else "/v1/events:batch"
        started = time.perf_counter()
        await asyncio.gather(*(worker(path) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": len(bodies), "elapsed_s": elapsed, "statuses": statuses,
            "requests_per_s": len(bodies) / elapsed, "latency_ms": _percentiles(latencies)}


def api_bench(settings: Settings, log_dir: Path, requests: int = 20_000, concurrency: int = 64,
              batches: int = 60, batch_size: int = 1_000) -> dict[str, Any]:
    """Run the API bench against `settings`' broker (catalog topics created); returns the
    single and batch results. Raises RuntimeError when the API does not start."""
    _, key = create_key(settings, "bench", ["events"])
    port = free_port()
    proc = start_stage(settings, ["api", "--host", "127.0.0.1", "--port", str(port)],
                       log_dir / "api.log", {"RASSYLKA_API_MAX_ROUTER_LAG": "0"})
    url = f"http://127.0.0.1:{port}"
    run = settings.app_id
    try:
        asyncio.run(_wait_ready(url))
        warm = [json.dumps(_event(i, run + "w")).encode() for i in range(500)]
        asyncio.run(_load(url, key, warm, concurrency))
        single = [json.dumps(_event(i, run)).encode() for i in range(requests)]
        out: dict[str, Any] = {"single": asyncio.run(_load(url, key, single, concurrency))}
        out["single"]["events_per_s"] = out["single"]["requests_per_s"]
        many = [json.dumps({"events": [{"type": "payment_due",
                                        "event": _event(b * batch_size + i, run + "b")}
                                       for i in range(batch_size)]}).encode()
                for b in range(batches)]
        batch = asyncio.run(_load(url, key, many, 4))
        batch["events_per_s"] = batch["requests_per_s"] * batch_size
        batch["batch_size"] = batch_size
        out["batch"] = batch
        out["concurrency"] = concurrency
        return out
    finally:
        stop(proc)


async def _wait_ready(url: str, timeout: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the API at {url} did not start within {timeout:.0f} s")
