"""A simulated JSON SMS provider (the HTTP counterpart of ``smsc_sim``), for tests and demos.

It takes messages like a typical HTTP SMS API does, answers with latency, random
failures, ``429`` above a rate and ``503`` on demand, and later POSTs a signed delivery
report for every accepted message to the callback URL. MO messages (replies such as
STOP) are injected through a control endpoint and forwarded, signed, the same way.

Run it::

    python -m connectors.http_provider_sim --port 8780 \\
        --callback-url http://127.0.0.1:8781/sms/callback --secret S --api-key K

API:

* ``POST /v1/messages`` with ``Authorization: Bearer <api key>`` and
  ``{"id", "from", "to", "text", "parts"}`` (optionally ``"valid_until"``, ISO 8601, and/or
  ``"ttl_s"``, seconds: the message's expiry) -> ``200 {"message_id": ...}``; 401 for a
  bad key, 400 for unreadable JSON, 422 for a bad field, 429 / 503 with ``Retry-After``
  when busy. A repeated ``id`` gets the first answer back (no second SMS, no second
  report), so a retry after an unanswered request is harmless. A message whose expiry
  has passed when its report is due is reported ``expired``.
* ``POST /v1/mo`` ``{"from", "to", "text"}`` -> queues an MO for the callback URL
  (control endpoint, no auth) and answers ``{"ok": true, "id": <MO id>}`` at once.
* ``GET /v1/messages`` -> the log of received messages; ``GET /health``.

Callbacks carry ``X-Timestamp`` (unix seconds) and ``X-Signature: sha256=<hex>`` =
HMAC-SHA256(secret, ``<timestamp>.<raw body>``). A callback counts as delivered only
when it is answered 2xx: a refused, failed or unanswered (``callback_timeout_s``) one is
sent again, byte for byte but freshly signed, with backoff (``callback_backoff_s``
doubling up to 5 s, ``callback_retries`` times), as real providers do. Delivery reports
and MO messages alike (an MO carries its ``id``, the same on every attempt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from connectors.sim_args import admission, span, weights
from pipeline.sender.throttle import TokenBucket

log = logging.getLogger(__name__)

_ERROR_CODES = {"delivered": "000", "undelivered": "001", "expired": "027", "rejected": "011"}


@dataclass(frozen=True)
class ProviderSimConfig:
    """How the simulated provider behaves. Ranges are (low, high) milliseconds, uniform."""

    host: str = "127.0.0.1"
    port: int = 8780
    api_key: str = "test-key"
    secret: str = "test-secret"
    callback_url: str | None = None
    latency_ms: tuple[float, float] = (0.0, 0.0)  # before answering a send
    failure_rate: float = 0.0  # share of sends refused with `failure_status`
    failure_status: int = 422
    throttle_above_per_s: float = 0.0  # sends/s before 429; 0 = off
    retry_after: str = "1"  # the Retry-After header sent with 429 / 503
    receipt_delay_ms: tuple[float, float] = (50.0, 200.0)
    receipt_outcomes: dict[str, float] = field(
        default_factory=lambda: {
            "delivered": 0.92,
            "undelivered": 0.04,
            "expired": 0.02,
            "rejected": 0.02,
        }
    )
    callback_retries: int = 8
    callback_backoff_s: float = 0.1  # first wait before a callback is sent again
    # Longer than a gateway holds a callback open for its ack (30 s by default).
    callback_timeout_s: float = 40.0
    seed: int | None = None
    keep_messages: int = 200_000


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One accepted ``POST /v1/messages``."""

    at_ms: int
    our_id: str
    message_id: str
    source: str
    destination: str
    text: str
    parts: int
    valid_until_ms: int | None = None  # the message's expiry, from valid_until / ttl_s


@dataclass(slots=True)
class ProviderStats:
    requests: int = 0  # every POST /v1/messages
    accepted: int = 0
    duplicates: int = 0  # repeated ids answered with the first message id
    unauthorized: int = 0
    invalid: int = 0  # 400 / 422
    failed: int = 0  # failure_rate refusals
    throttled: int = 0  # 429
    unavailable: int = 0  # 503
    callbacks_ok: int = 0
    callbacks_refused: int = 0  # non-2xx answers (each attempt)
    callbacks_failed: int = 0  # connection errors (each attempt)
    callbacks_lost: int = 0  # given up after every retry
    mo_sent: int = 0  # MO messages queued for the callback URL
    max_in_flight: int = 0  # most sends being answered at once


def _valid_number(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("+")
        and value[1:].isdigit()
        and 8 <= len(value) <= 16
    )


class HttpProviderSimulator:
    """The simulator: ``await start()``, ``await stop()``; see ``ProviderSimConfig``."""

    def __init__(self, config: ProviderSimConfig) -> None:
        self.config = config
        self.callback_url = config.callback_url  # may be set after construction
        self.stats = ProviderStats()
        self._rng = random.Random(config.seed)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._port: int | None = None
        self._messages: deque[ReceivedMessage] = deque(maxlen=config.keep_messages)
        self._by_our_id: dict[str, str] = {}
        self._bucket: TokenBucket | None = None
        self._scripted: deque[int] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self._next_id = time.time_ns() // 1_000_000 << 20
        outcomes = [(k.lower(), float(v)) for k, v in config.receipt_outcomes.items() if v > 0]
        self._outcome_names = [k for k, _ in outcomes] or ["delivered"]
        self._outcome_weights = [w for _, w in outcomes] or [1.0]

    # ── lifecycle ──────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see ``url``)."""
        c = self.config
        app = web.Application()
        app.router.add_post("/v1/messages", self._post_message)
        app.router.add_get("/v1/messages", self._get_messages)
        app.router.add_post("/v1/mo", self._post_mo)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, c.host, c.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=c.callback_timeout_s)
        )

    async def stop(self) -> None:
        """Stop listening and drop pending callbacks."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> HttpProviderSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The send endpoint (valid after ``start``)."""
        return f"http://{self.config.host}:{self._port}/v1/messages"

    # ── what tests look at and steer ──────────────────────────────────────────

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Every accepted message (the newest ``keep_messages``), oldest first."""
        return list(self._messages)

    def script(self, *statuses: int) -> None:
        """Answer the next sends with these HTTP statuses (429 / 503 carry Retry-After)."""
        self._scripted.extend(statuses)

    async def inject_mo(self, source: str, destination: str, text: str) -> str:
        """Queue an MO for the callback URL; returns its id.

        It is posted at once and again (with backoff, bounded) until answered 2xx.
        """
        self._next_id += 1
        mo_id = f"mo-{self._next_id:x}"
        body = {
            "type": "inbound",
            "id": mo_id,
            "from": source,
            "to": destination,
            "text": text,
            "at_ms": time.time_ns() // 1_000_000,
        }
        self.stats.mo_sent += 1
        self._spawn(self._deliver(body))
        return mo_id

    # ── the API ───────────────────────────────────────────────────────────────

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        want = f"Bearer {self.config.api_key}"
        return hmac.compare_digest(given.encode("utf-8", "replace"), want.encode("utf-8"))

    def _busy(self, status: int) -> web.Response:
        return web.json_response(
            {"error": "slow down" if status == 429 else "unavailable"},
            status=status,
            headers={"Retry-After": self.config.retry_after},
        )

    async def _post_message(self, request: web.Request) -> web.Response:
        c = self.config
        st = self.stats
        st.requests += 1
        if not self._authorized(request):
            st.unauthorized += 1
            return web.json_response({"error": "bad api key"}, status=401)
        if self._scripted:
            status = self._scripted.popleft()
            if status in (429, 503):
                if status == 429:
                    st.throttled += 1
                else:
                    st.unavailable += 1
                return self._busy(status)
            return web.json_response({"error": "scripted"}, status=status)
        if c.throttle_above_per_s > 0:
            now = asyncio.get_running_loop().time()
            if self._bucket is None:
                self._bucket = admission(c.throttle_above_per_s)
            if self._bucket.try_take(now) > 0.0:
                st.throttled += 1
                return self._busy(429)
        try:
            doc = json.loads(await request.read())
        except ValueError:
            st.invalid += 1
            return web.json_response({"error": "body is not JSON"}, status=400)
        problem = _check_message(doc)
        if problem:
            st.invalid += 1
            return web.json_response({"error": problem}, status=422)
        our_id = doc["id"]
        known = self._by_our_id.get(our_id)
        if known is not None:
            st.duplicates += 1
            return web.json_response({"message_id": known, "duplicate": True})
        self._in_flight += 1
        st.max_in_flight = max(st.max_in_flight, self._in_flight)
        try:
            if c.failure_rate > 0 and self._rng.random() < c.failure_rate:
                await self._latency()
                st.failed += 1
                return web.json_response({"error": "refused"}, status=c.failure_status)
            self._next_id += 1
            message_id = format(self._next_id, "x")
            at_ms = time.time_ns() // 1_000_000
            record = ReceivedMessage(
                at_ms=at_ms,
                our_id=our_id,
                message_id=message_id,
                source=doc["from"],
                destination=doc["to"],
                text=doc["text"],
                parts=int(doc.get("parts") or 1),
                valid_until_ms=_expiry_ms(doc, at_ms),
            )
            # Taken before answering: a client that times out has still sent it.
            self._messages.append(record)
            self._by_our_id[our_id] = message_id
            st.accepted += 1
            self._spawn(self._report_later(record))
            await self._latency()
            return web.json_response({"message_id": message_id})
        finally:
            self._in_flight -= 1

    async def _latency(self) -> None:
        low, high = self.config.latency_ms
        delay = low if high <= low else self._rng.uniform(low, high)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    async def _get_messages(self, _: web.Request) -> web.Response:
        return web.json_response({"messages": [asdict(m) for m in self._messages]})

    async def _post_mo(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            source, dest, text = str(doc["from"]), str(doc["to"]), str(doc["text"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "want JSON {from, to, text}"}, status=400)
        mo_id = await self.inject_mo(source, dest, text)
        return web.json_response({"ok": True, "id": mo_id})

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response(asdict(self.stats))

    # ── callbacks ─────────────────────────────────────────────────────────────

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_later(self, record: ReceivedMessage) -> None:
        low, high = self.config.receipt_delay_ms
        await asyncio.sleep((low if high <= low else self._rng.uniform(low, high)) / 1000)
        expiry = record.valid_until_ms
        if expiry is not None and time.time_ns() // 1_000_000 >= expiry:
            status = "expired"  # it could not be delivered in time
        else:
            status = self._rng.choices(self._outcome_names, self._outcome_weights)[0]
        body = {
            "type": "status",
            "message_id": record.message_id,
            "id": record.our_id,
            "status": status,
            "error_code": _ERROR_CODES.get(status, "000"),
            "to": record.destination,
            "at_ms": time.time_ns() // 1_000_000,
        }
        await self._deliver(body)

    async def _deliver(self, body: dict[str, Any]) -> None:
        """POST a callback until it is answered 2xx, with backoff (bounded)."""
        delay = self.config.callback_backoff_s
        for attempt in range(self.config.callback_retries + 1):
            status = await self._post_callback(body)
            if 200 <= status < 300:
                return
            if attempt < self.config.callback_retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.stats.callbacks_lost += 1

    async def _post_callback(self, body: dict[str, Any]) -> int:
        """One signed callback POST; the HTTP status, or 0 when it could not be delivered."""
        if self.callback_url is None or self._client is None:
            self.stats.callbacks_failed += 1
            return 0
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        timestamp = str(int(time.time()))
        mac = hmac.new(
            self.config.secret.encode("utf-8"),
            timestamp.encode("ascii") + b"." + raw,
            hashlib.sha256,
        )
        headers = {
            "Content-Type": "application/json",
            "X-Timestamp": timestamp,
            "X-Signature": "sha256=" + mac.hexdigest(),
        }
        try:
            async with self._client.post(self.callback_url, data=raw, headers=headers) as resp:
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.stats.callbacks_failed += 1
            return 0
        if 200 <= status < 300:
            self.stats.callbacks_ok += 1
        else:
            self.stats.callbacks_refused += 1
        return status


def _check_message(doc: Any) -> str | None:
    """Why a send request is invalid (422), or None."""
    if not isinstance(doc, dict):
        return "body must be a JSON object"
    if not isinstance(doc.get("id"), str) or not doc["id"]:
        return "id: required string"
    if not isinstance(doc.get("from"), str) or not doc["from"]:
        return "from: required string"
    if not _valid_number(doc.get("to")):
        return "to: must be an E.164 number with +"
    if not isinstance(doc.get("text"), str) or not doc["text"]:
        return "text: required string"
    parts = doc.get("parts", 1)
    if not isinstance(parts, int) or parts < 1:
        return "parts: must be a positive integer"
    ttl = doc.get("ttl_s")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
        return "ttl_s: must be a non-negative integer"
    until = doc.get("valid_until")
    if until is not None:
        try:
            if not isinstance(until, str) or datetime.fromisoformat(until).tzinfo is None:
                raise ValueError
        except ValueError:
            return "valid_until: must be an ISO 8601 time with a UTC offset"
    return None


def _expiry_ms(doc: dict[str, Any], at_ms: int) -> int | None:
    """The message's expiry (epoch ms) from ``valid_until``, else ``ttl_s``; None if neither."""
    if doc.get("valid_until") is not None:
        return round(datetime.fromisoformat(doc["valid_until"]).timestamp() * 1000)
    if doc.get("ttl_s") is not None:
        return at_ms + int(doc["ttl_s"]) * 1000
    return None


# ── command line ─────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None = None) -> ProviderSimConfig:
    """Build a ``ProviderSimConfig`` from command-line flags."""
    d = ProviderSimConfig()
    p = argparse.ArgumentParser(
        prog="python -m connectors.http_provider_sim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--callback-url", required=True)
    p.add_argument("--secret", required=True, help="HMAC key for callback signatures")
    p.add_argument("--api-key", default=d.api_key, help="bearer key clients must send")
    p.add_argument("--latency-ms", type=span, default=d.latency_ms, help="N or LOW-HIGH")
    p.add_argument("--failure-rate", type=float, default=d.failure_rate)
    p.add_argument("--failure-status", type=int, default=d.failure_status)
    p.add_argument("--throttle-above-per-s", type=float, default=d.throttle_above_per_s)
    p.add_argument("--retry-after", default=d.retry_after)
    p.add_argument(
        "--receipt-delay-ms", type=span, default=d.receipt_delay_ms, help="N or LOW-HIGH"
    )
    p.add_argument(
        "--receipt-outcomes",
        type=lambda text: weights(text, str.lower),
        default=d.receipt_outcomes,
        help="e.g. delivered=90,undelivered=5,expired=3,rejected=2",
    )
    p.add_argument("--callback-retries", type=int, default=d.callback_retries)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    return ProviderSimConfig(
        host=a.host,
        port=a.port,
        api_key=a.api_key,
        secret=a.secret,
        callback_url=a.callback_url,
        latency_ms=a.latency_ms,
        failure_rate=a.failure_rate,
        failure_status=a.failure_status,
        throttle_above_per_s=a.throttle_above_per_s,
        retry_after=a.retry_after,
        receipt_delay_ms=a.receipt_delay_ms,
        receipt_outcomes=a.receipt_outcomes,
        callback_retries=a.callback_retries,
        seed=a.seed,
    )


async def _run(config: ProviderSimConfig, on_ready: Callable[[str], None] = print) -> None:
    sim = HttpProviderSimulator(config)
    await sim.start()
    on_ready(f"http_provider_sim listening on {sim.url} -> callbacks to {config.callback_url}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_run(parse_args(argv), lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main()
