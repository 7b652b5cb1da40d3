"""HTTP gateway for JSON SMS providers, with HMAC-signed status callbacks.

Outbound, ``send`` POSTs one JSON document per message to the provider::

    POST {url}
    Authorization: Bearer <api key>
    {"id": "<our message id>", "from": "Shop", "to": "+79161234567", "text": "...", "parts": 2,
     "valid_until": "2026-12-01T15:30:00.000Z", "ttl_s": 3600}

and reads ``{"message_id": "<provider id>"}`` back. ``valid_until`` (ISO 8601, UTC) and
``ttl_s`` (whole seconds left, rounded down, counted when the request is written) carry the
message's expiry (``OutboundSms.valid_until_ms``): the provider must not deliver it later.
Both are absent when the message has no expiry. The provider takes the whole text, so
the encoded parts of the ``OutboundSms`` are turned back into text (UDH stripped,
``decode_payload`` per part) and ``gateway_message_ids`` holds the provider's one id.

HTTP answers map onto ``SubmitResult`` like this:

* 2xx: ``ok`` (``status`` 0, as for every gateway);
* 400, 413, 415, 422: the provider refuses this message - permanent (``status`` = the code);
* 429, 503: slow down - the route's AIMD token bucket halves its rate, every sender waits
  out ``Retry-After``, and the request goes again (``throttle_retries`` times at most),
  after which the result is a retryable ``throttled`` failure;
* other 4xx (401, 403, 404, ...): the route is misconfigured; retryable, nothing was taken;
* other 5xx: retryable and ``in_doubt`` - the provider may have stored the message;
* no answer: ``not_sent`` (retryable) when the connection failed before the request
  headers were written, ``in_doubt`` (retryable, a retry may duplicate) after that.
  The ``id`` field lets a provider that de-duplicates by it make such a retry harmless.

Inbound, the gateway runs a small aiohttp server (``callback_host:callback_port``,
``callback_path``) to which the provider POSTs delivery reports and MO messages::

    {"type": "status", "message_id": "<provider id>", "status": "delivered",
     "error_code": "000", "to": "+79161234567"}
    {"type": "inbound", "id": "<provider's MO id>", "from": "+79161234567", "to": "Shop",
     "text": "STOP"}

Each callback must carry ``X-Timestamp`` (unix seconds) and
``X-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<raw body>`` under the
shared callback secret. A missing, wrong or stale (more than ``signature_tolerance_s``
away from now) signature is answered 401 and ignored; an unreadable authentic one 400.
An authentic one becomes a ``GatewayReceipt`` / ``GatewayInbound`` on ``events()`` (the MO's
``id`` is its ``gateway_ref``), and the request is held open until the consumer calls the
event's ``ack()`` (it has recorded it): then the answer is 200. No ack within
``callback_ack_timeout_s``, or the gateway closing meanwhile, is answered 503, so the
provider sends the callback again later; a consumer must expect such re-deliveries.

Nothing here logs per message; counters live in ``HttpCounters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from connectors.gateway import (
    AckOnce,
    GatewayEvent,
    GatewayInbound,
    GatewayReceipt,
    OutboundSms,
    SubmitResult,
)
from connectors.pacing import AimdBucket
from connectors.receipts import STATE_CODES
from pipeline.sms.encoding import decode_payload

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Timestamp"
SIGNATURE_PREFIX = "sha256="

PERMANENT_STATUSES = frozenset({400, 413, 415, 422})
SLOW_DOWN_STATUSES = frozenset({429, 503})

# Provider status words -> the 7-letter SMPP state names GatewayReceipt carries.
_STATES: dict[str, str] = {
    "delivered": "DELIVRD",
    "undelivered": "UNDELIV",
    "undeliverable": "UNDELIV",
    "failed": "UNDELIV",
    "expired": "EXPIRED",
    "rejected": "REJECTD",
    "deleted": "DELETED",
    "accepted": "ACCEPTD",
    "enroute": "ENROUTE",
    "sent": "ENROUTE",
    "unknown": "UNKNOWN",
}


# ── signing (pure functions, shared with tests) ───────────────────────────────


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    message = str(timestamp).encode("ascii") + b"." + body
    return SIGNATURE_PREFIX + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now_s: float,
    tolerance_s: float = 300.0,
) -> str | None:
    """Check one callback's headers against its raw body.

    Returns ``None`` when the signature is authentic and the timestamp fresh, else why
    not: ``missing_signature``, ``missing_timestamp``, ``bad_timestamp``,
    ``stale_timestamp`` or ``bad_signature``. The comparison is constant-time.
    """
    if not signature:
        return "missing_signature"
    if not timestamp:
        return "missing_timestamp"
    ts = timestamp.strip()
    if not ts.isdigit() or len(ts) > 12:
        return "bad_timestamp"
    if abs(now_s - int(ts)) > tolerance_s:
        return "stale_timestamp"
    expected = sign(secret, ts, body).encode("ascii")
    given = signature.strip().encode("utf-8", "replace")
    if not hmac.compare_digest(expected, given):
        return "bad_signature"
    return None


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date).

    Fractional seconds are accepted (not standard, but some providers send them).
    ``None`` when absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now_s
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def text_of(sms: OutboundSms) -> str:
    """The message text, rebuilt from its encoded parts (UDHs stripped)."""
    chunks = []
    for part in sms.parts:
        payload = part
        if sms.esm_class & 0x40 and part:
            payload = part[1 + part[0] :]
        chunks.append(decode_payload(sms.data_coding, payload))
    return "".join(chunks)


# ── configuration and counters ────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """Everything needed to reach one JSON provider. Built once by the caller from config + env.

    ``url`` is the provider's send endpoint. ``callback_port`` 0 picks a free port (see
    ``HttpGateway.callback_url``). At most ``concurrency`` requests are unanswered at
    once and at most ``rate_per_s`` start per second.
    """

    url: str
    api_key: str = field(repr=False)
    callback_secret: str = field(repr=False)
    name: str = "http"
    callback_host: str = "127.0.0.1"
    callback_port: int = 0
    callback_path: str = "/sms/callback"
    rate_per_s: float = 50.0
    concurrency: int = 16
    connect_timeout_s: float = 5.0
    response_timeout_s: float = 10.0
    # 429 / 503: send the request again up to this many times.
    throttle_retries: int = 5
    throttle_backoff_s: float = 0.05  # when the answer has no Retry-After
    max_retry_after_s: float = 30.0  # a longer Retry-After fails the send (retryable) at once
    signature_tolerance_s: float = 300.0
    max_callback_bytes: int = 64 * 1024
    # A callback is answered 200 once its event is acknowledged; 503 after this long.
    callback_ack_timeout_s: float = 30.0

    # The sender sizes its in-flight budget from ``binds * window`` of a gateway's route.
    @property
    def binds(self) -> int:
        return 1

    @property
    def window(self) -> int:
        return self.concurrency


@dataclass(slots=True)
class HttpCounters:
    """Running totals since start, for metrics (read them, don't write them)."""

    submitted: int = 0  # messages the provider accepted (2xx)
    rejected: int = 0  # messages refused with a final answer (4xx / 5xx)
    throttled: int = 0  # 429 / 503 answers
    retries: int = 0  # requests sent again after a slow-down answer
    in_doubt: int = 0  # requests written but not answered
    not_sent: int = 0  # requests that never reached the provider
    receipts: int = 0  # authentic delivery reports
    inbound: int = 0  # authentic MO messages
    bad_signature: int = 0  # callbacks refused 401 (missing / wrong / stale signature)
    bad_callback: int = 0  # authentic callbacks whose body could not be read (400)
    acked: int = 0  # callbacks answered 200 after their event's ack()
    unacked: int = 0  # callbacks answered 503: no ack in time, or the gateway closed

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _international(addr: str) -> str:
    """``+`` in front of a bare international number (8+ digits); short codes, ids as-is."""
    if addr.isdigit() and len(addr) >= 8:
        return "+" + addr
    return addr


async def _mark_sent(
    _: aiohttp.ClientSession, ctx: SimpleNamespace, __: aiohttp.TraceRequestHeadersSentParams
) -> None:
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["sent"] = True


class HttpGateway:
    """The ``Gateway`` for one JSON-over-HTTP provider (see the module docstring)."""

    def __init__(self, route: HttpRoute) -> None:
        if route.concurrency < 1 or route.rate_per_s <= 0:
            raise ValueError("concurrency and rate_per_s must be positive")
        if not route.callback_secret:
            raise ValueError("callback_secret must not be empty")
        self.route = route
        self.name = route.name
        self.counters = HttpCounters()
        self.bucket = AimdBucket(route.rate_per_s)
        self._slots = asyncio.Semaphore(route.concurrency)
        self._pause_until = 0.0  # loop time before which no request starts (Retry-After)
        self._events: asyncio.Queue[GatewayEvent | None] = asyncio.Queue()
        # One per callback held open: True once acknowledged, False when closing.
        self._held: set[asyncio.Future[bool]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._callback_port: int | None = None
        self._inflight = 0
        self._started = False
        self._closing = False
        self._rng = random.Random()

    # ── lifecycle ──────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Open the HTTP client and start listening for callbacks.

        Raises ``OSError`` when the callback port cannot be bound (nothing else would
        tell the operator that receipts cannot arrive).
        """
        if self._started:
            return
        r = self.route
        app = web.Application(client_max_size=r.max_callback_bytes)
        app.router.add_post(r.callback_path, self._on_callback)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, r.callback_host, r.callback_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._callback_port = int(runner.addresses[0][1])
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_mark_sent)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # `concurrency` bounds requests instead
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=r.connect_timeout_s),
            headers={"Authorization": f"Bearer {r.api_key}"},
            trace_configs=[trace],
        )
        self._started = True
        log.info("%s: posting to %s, callbacks on %s", self.name, r.url, self.callback_url)

    async def close(self) -> None:
        """Let in-flight requests finish (bounded), stop the callback server, end ``events()``.

        ``send`` calls made after ``close`` began return ``not_sent``. Callbacks whose
        events were not acknowledged are answered 503: the provider sends them again.
        """
        if self._closing:
            return
        self._closing = True
        await asyncio.sleep(0)  # acks already given (scheduled on the loop) go first
        for held in self._held:  # unacknowledged callbacks: 503, the provider retries
            if not held.done():
                held.set_result(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route.response_timeout_s
        while self._inflight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None
        self._events.put_nowait(None)

    async def __aenter__(self) -> HttpGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def callback_url(self) -> str:
        """Where the provider must POST callbacks (valid after ``start``)."""
        r = self.route
        port = self._callback_port if self._callback_port is not None else r.callback_port
        return f"http://{r.callback_host}:{port}{r.callback_path}"

    # ── inbound ───────────────────────────────────────────────────────────────

    async def _on_callback(self, request: web.Request) -> web.Response:
        body = await request.read()
        why = verify_signature(
            self.route.callback_secret,
            body,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(TIMESTAMP_HEADER),
            now_s=time.time(),
            tolerance_s=self.route.signature_tolerance_s,
        )
        if why is not None:
            self.counters.bad_signature += 1
            return web.json_response({"error": why}, status=401)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[bool] = loop.create_future()
        try:
            event = self._to_event(json.loads(body), AckOnce(loop, lambda: _settle(acked, True)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.counters.bad_callback += 1
            return web.json_response({"error": f"unreadable callback: {exc}"}, status=400)
        if self._closing:
            return _not_recorded("gateway closing")
        if isinstance(event, GatewayReceipt):
            self.counters.receipts += 1
        else:
            self.counters.inbound += 1
        self._held.add(acked)
        self._events.put_nowait(event)
        try:
            recorded = await asyncio.wait_for(
                asyncio.shield(acked), self.route.callback_ack_timeout_s
            )
        except TimeoutError:
            recorded = False
        finally:
            self._held.discard(acked)
            _settle(acked, False)  # a later ack() finds it settled: nothing to answer
        if not recorded:
            self.counters.unacked += 1
            return _not_recorded("not recorded yet")
        self.counters.acked += 1
        return web.json_response({"ok": True})

    @staticmethod
    def _to_event(doc: dict[str, Any], ack: AckOnce | None = None) -> GatewayEvent:
        kind = doc["type"]
        if kind == "status":
            message_id = doc["message_id"]
            if not isinstance(message_id, str) or not message_id:
                raise ValueError("message_id must be a non-empty string")
            status = str(doc.get("status") or "unknown")
            state = _STATES.get(status.lower())
            if state is None:
                state = status.upper() if status.upper() in STATE_CODES else "UNKNOWN"
            err = doc.get("error_code")
            return GatewayReceipt(
                gateway_message_id=message_id,
                state=state,
                error_code=None if err is None else str(err),
                destination=_international(str(doc.get("to") or "")),
                received_at_ms=_now_ms(),
                ack=ack,
            )
        if kind == "inbound":
            text = doc["text"]
            if not isinstance(text, str):
                raise ValueError("text must be a string")
            ref = doc.get("id")
            return GatewayInbound(
                source=_international(str(doc["from"])),
                destination=_international(str(doc["to"])),
                text=text,
                received_at_ms=_now_ms(),
                gateway_ref=None if ref is None or ref == "" else str(ref),
                ack=ack,
            )
        raise ValueError(f"unknown callback type {kind!r}")

    @property
    def events_backlog(self) -> int:
        """Events received but not yet taken from ``events()``."""
        return self._events.qsize()

    async def events(self) -> AsyncIterator[GatewayEvent]:
        """Receipts and MO messages in arrival order; ends after ``close()``.

        Consume from one task, and call each event's ``ack()`` once it is recorded (see
        ``connectors.gateway``): its callback is answered 200 only then. The buffer is
        unbounded; the provider's own concurrency bounds how many callbacks wait.
        """
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # ── outbound ──────────────────────────────────────────────────────────────

    def _result(
        self,
        sms: OutboundSms,
        ok: bool,
        status: int,
        error: str | None,
        retryable: bool,
        ids: list[str] | None = None,
    ) -> SubmitResult:
        return SubmitResult(sms.message_id, ids or [], ok, status, error, retryable)

    async def send(self, sms: OutboundSms) -> SubmitResult:
        """POST ``sms`` to the provider, pacing and retrying slow-downs (see the module docstring)."""
        if not sms.parts:
            return self._result(sms, False, 0, "no parts", False)
        dest = sms.destination
        if not (dest.startswith("+") and dest[1:].isdigit() and 8 <= len(dest) <= 16):
            return self._result(sms, False, 0, f"invalid destination {dest!r}", False)
        if self._closing or not self._started:
            return self._result(sms, False, 0, "not_sent: gateway not running", True)
        document: dict[str, Any] = {
            "id": sms.message_id,
            "from": sms.source,
            "to": dest,
            "text": text_of(sms),
            "parts": len(sms.parts),
        }
        if sms.valid_until_ms is not None:
            document["valid_until"] = iso_utc(sms.valid_until_ms)
        self._inflight += 1  # lets close() wait for requests under way
        try:
            async with self._slots:
                return await self._send_with_retries(sms, document)
        finally:
            self._inflight -= 1

    async def _send_with_retries(self, sms: OutboundSms, document: dict[str, Any]) -> SubmitResult:
        r = self.route
        loop = asyncio.get_running_loop()
        counters = self.counters
        attempt = 0
        while True:
            now = loop.time()
            wait = max(self.bucket.reserve(now), self._pause_until - now)
            if wait > 0:
                await asyncio.sleep(wait)
            if self._session is None:
                return self._result(sms, False, 0, "not_sent: gateway closed", True)
            if sms.valid_until_ms is not None:  # what is left now, not when first tried
                document["ttl_s"] = max(0, (sms.valid_until_ms - _now_ms()) // 1000)
            body = json.dumps(document, ensure_ascii=False).encode("utf-8")
            outcome = await self._post(body)
            if isinstance(outcome, str):
                if outcome.startswith("in_doubt"):
                    counters.in_doubt += 1
                else:
                    counters.not_sent += 1
                return self._result(sms, False, 0, outcome, True)
            status, headers, payload = outcome
            if 200 <= status < 300:
                counters.submitted += 1
                provider_id = _provider_id(payload)
                if provider_id is None:
                    log.warning(
                        "%s: 2xx without a message_id; receipts cannot correlate", self.name
                    )
                ids = [provider_id] if provider_id else []
                return self._result(sms, True, 0, None, False, ids)
            if status not in SLOW_DOWN_STATUSES:
                counters.rejected += 1
                detail = _error_detail(payload)
                if status in PERMANENT_STATUSES:
                    return self._result(sms, False, status, f"HTTP {status}{detail}", False)
                if status >= 500:
                    return self._result(
                        sms, False, status, f"in_doubt: HTTP {status}{detail}", True
                    )
                if status in (401, 403):
                    log.warning("%s: provider refused the API key (HTTP %d)", self.name, status)
                return self._result(sms, False, status, f"HTTP {status}{detail}", True)
            # 429 / 503: the provider is busy, not refusing the message.
            counters.throttled += 1
            now = loop.time()
            self.bucket.slow_down(now)
            retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
            if attempt >= r.throttle_retries or (
                retry_after is not None and retry_after > r.max_retry_after_s
            ):
                return self._result(sms, False, status, f"throttled: HTTP {status}", True)
            attempt += 1
            counters.retries += 1
            if retry_after is None:
                backoff = min(r.throttle_backoff_s * (1 << (attempt - 1)), 1.0)
                retry_after = backoff * (0.5 + self._rng.random())
            # Every request waits it out, not only this one: the provider is overloaded.
            self._pause_until = max(self._pause_until, now + retry_after)

    async def _post(self, body: bytes) -> tuple[int, Any, bytes] | str:
        """One POST: ``(status, headers, body)``, or ``'not_sent: ...'`` / ``'in_doubt: ...'``."""
        session = self._session
        assert session is not None
        ctx: dict[str, bool] = {"sent": False}
        try:
            async with asyncio.timeout(self.route.response_timeout_s):
                async with session.post(
                    self.route.url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    trace_request_ctx=ctx,
                ) as resp:
                    return resp.status, resp.headers, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            what = type(exc).__name__
            if ctx["sent"]:
                return f"in_doubt: {what}"
            return f"not_sent: {what}"


def iso_utc(epoch_ms: int) -> str:
    """``'2026-12-01T15:30:00.000Z'`` for epoch milliseconds."""
    at = datetime.fromtimestamp(epoch_ms // 1000, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _not_recorded(why: str) -> web.Response:
    # 503 (not 5xx-in-doubt): the provider keeps the callback and tries it again.
    return web.json_response({"error": why}, status=503, headers={"Retry-After": "1"})


def _provider_id(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    value = doc.get("message_id", doc.get("id"))
    if value is None or value == "":
        return None
    return str(value)


def _error_detail(payload: bytes) -> str:
    """``': <provider's error>'`` from a JSON error body, shortened; '' when there is none."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return ""
    if isinstance(doc, dict) and doc.get("error"):
        return f": {str(doc['error'])[:200]}"
    return ""
