"""The routing gateway: one ``Gateway`` over several routes, with failover.

``RoutingGateway`` holds one gateway per route (SMPP or HTTP), picks the route list of
each message from the ``RoutingTable`` (``connectors.routing``) and submits to the first
route in that list that is up. What it does with each answer decides whether a message
can be lost or doubled, so it follows the sender's in-doubt policy exactly:

* **accepted**: the answer is stamped with the route and its tariff and returned.
* **refused before sending** (``not_bound``, ``not_sent: ...``: no bind, connection
  refused; HTTP 401/403: the provider refuses our credentials): nothing of the message
  reached that route, so it goes to the next route in the list at once. The route is
  marked down.
* **throttled** (``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL`` after the connector's own
  retries, HTTP 429/503): the SMSC refused it, nothing was taken. The answer goes back
  to the sender (which retries later, on the same route) unless the route has now
  answered nothing but slow-downs for ``throttled_for_s``: then it is marked down and the
  message goes to the next route at once.
* **in doubt** (sent, no answer: the connection died with the submit on the wire, a
  response timeout) - and a multi-part message of which some parts were accepted and
  the rest could not be sent: returned as in doubt, never failed over here. The sender
  then applies its policy: a transactional message is submitted again (through this
  gateway, so on the next route if this one is still down; its outcome says
  ``attempts > 1``), a marketing one ends ``failed`` / ``in_doubt_not_resent``.
* **any other refusal** (an invalid number, ``ESME_RSYSERR``, ...) is the message's own
  answer: returned as it is.

A route is *usable* when it has a bind up (SMPP; HTTP routes always count as bound) and
is not marked down. Marked down, it is tried again after ``retry_after_s``, doubling up
to ``retry_max_s`` while it keeps failing; its first answer after that decides (an
acceptance clears it, a refusal or slow-down marks it down again at once). When no route
of a message is usable its first route is tried anyway: that gateway then waits for a
bind (up to its ``bind_wait_s``) as a single route always did.

With more than one route, SMSC message ids are qualified with the route name
(``backup/1f2a``), in submit answers and in the receipts that come back, so two SMSCs
that number alike can never be confused; replies' ``gateway_ref`` likewise. With one
route ids pass through unchanged.

Receipts and replies of every route are merged into one ``events()`` stream, each
stamped with the route it came over; acknowledging one answers it on its own route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from connectors.gateway import Gateway, GatewayEvent, GatewayReceipt, OutboundSms, SubmitResult
from connectors.routing import FailoverSettings, RoutingTable, Tariff

log = logging.getLogger(__name__)

# SMPP ESME_RTHROTTLED, ESME_RMSGQFUL; HTTP 429, 503 (distinct numbers, so one set).
SLOW_DOWN = frozenset({0x58, 0x14, 429, 503})
# HTTP: the provider refuses our credentials - a route fault, not the message's.
ROUTE_REFUSED = frozenset({401, 403})

ACCEPTED, NOT_SENT, THROTTLED, IN_DOUBT, REJECTED = (
    "accepted", "not_sent", "throttled", "in_doubt", "rejected")


def classify(result: SubmitResult) -> str:
    """What a route's answer means for failover (see the module docstring)."""
    if result.ok:
        return ACCEPTED
    error = result.error or ""
    if result.gateway_message_ids:  # some parts were taken: never send them elsewhere
        return IN_DOUBT if result.retryable else REJECTED
    if error.startswith("in_doubt"):
        return IN_DOUBT
    if error.startswith(("not_bound", "not_sent")) or result.status in ROUTE_REFUSED:
        return NOT_SENT
    if result.retryable and result.status in SLOW_DOWN:
        return THROTTLED
    return REJECTED


@dataclass
class RouteState:
    """One route's health, as this gateway saw it."""

    down_until: float = 0.0
    down: bool = False
    failures: int = 0  # consecutive times marked down: the back-off doubles
    throttled_since: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RouteShape:
    """What the sender sizes its wire by: ``binds × window`` submits can be unanswered."""

    binds: int
    window: int


@dataclass(frozen=True, slots=True)
class _BindView:
    index: str
    bucket: Any


class RoutingGateway:
    """A ``Gateway`` over `gateways` (route name -> gateway), routed by `table`."""

    def __init__(self, gateways: Mapping[str, Gateway], table: RoutingTable,
                 tariffs: Mapping[str, Tariff] | None = None,
                 failover: FailoverSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        missing = set(table.route_names) - set(gateways)
        if missing or not gateways:
            raise ValueError(f"no gateway for routes {sorted(missing)}")
        self.gateways = dict(gateways)
        self.table = table
        self.tariffs = dict(tariffs or {})
        self.failover = failover or FailoverSettings()
        self.clock = clock
        self.states = {name: RouteState() for name in self.gateways}
        self.name = "+".join(self.gateways)
        self.qualify = len(self.gateways) > 1
        self._events: asyncio.Queue[GatewayEvent | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []

    # ── lifecycle ──────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Start every route; return once any one of them finished starting (bound, or
        gave up waiting). The others go on binding in the background. A route whose
        start fails (e.g. an HTTP callback port taken) fails this start."""
        starts = [asyncio.create_task(gw.start(), name=f"start-{name}")
                  for name, gw in self.gateways.items()]
        done, _pending = await asyncio.wait(starts, return_when=asyncio.FIRST_COMPLETED)
        self._tasks += starts
        for task in done:
            task.result()
        for name, gw in self.gateways.items():
            self._tasks.append(asyncio.create_task(self._pump(name, gw), name=f"events-{name}"))

    async def close(self) -> None:
        """Close every route (in-flight submits finish first, per route) and end
        ``events()``."""
        await asyncio.gather(*(gw.close() for gw in self.gateways.values()),
                             return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._events.put_nowait(None)

    # ── what the sender reads ─────────────────────────────────────────────────

    @property
    def bound(self) -> int:
        """Binds up over every route (an HTTP route counts as one)."""
        return sum(int(getattr(gw, "bound", 1)) for gw in self.gateways.values())

    @property
    def route(self) -> Any:
        """The one route's settings, or (several routes) the sum of their windows; None
        when some route has no window (HTTP)."""
        if len(self.gateways) == 1:
            return getattr(next(iter(self.gateways.values())), "route", None)
        total = 0
        for gw in self.gateways.values():
            r = getattr(gw, "route", None)
            binds, window = int(getattr(r, "binds", 0) or 0), int(getattr(r, "window", 0) or 0)
            if not binds * window:
                return None
            total += binds * window
        return RouteShape(1, total)

    @property
    def _binds(self) -> list[Any]:
        # Read by `pipeline.metrics.gateway_rates`: one route's binds as they are, several
        # routes' as `<route>/<n>`.
        if len(self.gateways) == 1:
            return list(getattr(next(iter(self.gateways.values())), "_binds", None) or [])
        return [_BindView(f"{name}/{getattr(b, 'index', i)}", b.bucket)
                for name, gw in self.gateways.items()
                for i, b in enumerate(getattr(gw, "_binds", None) or [])]

    @property
    def bucket(self) -> Any:
        # One HTTP route's pacing (read by `pipeline.metrics.gateway_rates`).
        if len(self.gateways) == 1:
            return getattr(next(iter(self.gateways.values())), "bucket", None)
        return None

    def usable(self, name: str) -> bool:
        """Whether `name` has a bind up and is not marked down (or its retry time came)."""
        if int(getattr(self.gateways[name], "bound", 1)) <= 0:
            return False
        return self.clock() >= self.states[name].down_until

    # ── sending ───────────────────────────────────────────────────────────────

    async def send(self, sms: OutboundSms) -> SubmitResult:
        """Submit `sms` over the first usable route of its list (see the module docstring)."""
        names = self.table.routes_for(sms.destination, sms.region, sms.operator, sms.lane)
        order = [n for n in names if self.usable(n)] or list(names[:1])
        last: tuple[str, SubmitResult] | None = None
        for name in order:
            result = await self.gateways[name].send(sms)
            kind = classify(result)
            if kind == ACCEPTED:
                self._up(name)
                return self._stamp(name, result)
            if kind == NOT_SENT:
                self._down(name, result.error or f"status {result.status}")
                last = (name, result)
                continue
            if kind == THROTTLED and self._throttled(name):
                last = (name, result)
                continue
            if kind == IN_DOUBT and not (result.error or "").startswith("in_doubt"):
                # some parts were taken, the rest not sent: the sender's in-doubt rule
                result = replace(result, error=f"in_doubt: {result.error or 'partly sent'}")
            return self._stamp(name, result)
        assert last is not None
        return self._stamp(*last)

    def _stamp(self, name: str, result: SubmitResult) -> SubmitResult:
        tariff = self.tariffs.get(name)
        ids = result.gateway_message_ids
        if self.qualify:
            ids = [f"{name}/{i}" for i in ids]
        return replace(result, gateway_message_ids=ids, route=name,
                       cost_per_segment=tariff.per_segment if tariff else None)

    def _up(self, name: str) -> None:
        state = self.states[name]
        state.throttled_since = None
        if state.down or state.failures:
            log.warning("route %s is up again", name)
        state.down, state.failures, state.reason = False, 0, ""

    def _down(self, name: str, reason: str) -> None:
        state = self.states[name]
        now = self.clock()
        f = self.failover
        state.throttled_since = None
        if state.down and now < state.down_until:
            return  # already down (sends under way when it went down)
        state.down_until = now + min(f.retry_max_s, f.retry_after_s * (1 << min(state.failures, 16)))
        state.failures += 1
        state.down, state.reason = True, reason
        log.warning("route %s is down (%s); trying it again in %.1f s", name, reason,
                    state.down_until - now)

    def _throttled(self, name: str) -> bool:
        """Record a slow-down answer; True when the route is now down because of it."""
        state = self.states[name]
        now = self.clock()
        if state.down:  # its first answer after a retry: still throttled
            self._down(name, "still throttled")
            return True
        if state.throttled_since is None:
            state.throttled_since = now
        if now - state.throttled_since >= self.failover.throttled_for_s:
            self._down(name, f"throttled for {now - state.throttled_since:.0f} s")
            return True
        return False

    # ── receipts and replies ─────────────────────────────────────────────────

    async def _pump(self, name: str, gateway: Gateway) -> None:
        async for event in gateway.events():
            if isinstance(event, GatewayReceipt):
                gw_id = event.gateway_message_id
                if self.qualify and gw_id:
                    gw_id = f"{name}/{gw_id}"
                # built directly: dataclasses.replace cost more than the rest of the pump
                self._events.put_nowait(GatewayReceipt(
                    gw_id, event.state, event.error_code, event.destination,
                    event.received_at_ms, event.ack, name))
            else:
                ref = event.gateway_ref
                if self.qualify and ref:
                    ref = f"{name}/{ref}"
                self._events.put_nowait(replace(event, gateway_ref=ref, route=name))

    async def events(self) -> AsyncIterator[GatewayEvent]:
        """Receipts and replies of every route, in arrival order; ends after ``close()``."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event
