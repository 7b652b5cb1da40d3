"""The one contract every SMS gateway (SMPP, HTTP, the simulator's client) implements.

The sender hands a gateway an ``OutboundSms`` whose parts are already encoded and split
(``pipeline.sms.encoding``); the gateway answers with a ``SubmitResult`` and, later,
streams ``GatewayReceipt``s (delivery reports) and ``GatewayInbound``s (MO replies such as
STOP) through ``events()``.

Events are acknowledged late. The SMSC (``deliver_sm_resp``) or the HTTP provider (the
callback's ``200``) hears about an event only when the consumer of ``events()`` calls the
event's ``ack()``: once the event is durably recorded (after the Kafka commit) or
deliberately discarded; it may be called from any thread. Calling ``ack()`` twice, or
after the session that carried the event is gone, does nothing. An event never
acknowledged is delivered again by the provider later (SMPP: after a reconnect; HTTP:
the provider retries the callback), so consumers must record re-deliveries exactly once
(receipts by ``gateway_message_id`` and state, replies by ``gateway_ref`` when there is
one).

``send`` does not raise for a message the gateway refused or could not place: the
refusal is a ``SubmitResult`` with ``ok=False``, the protocol status, and whether a
retry can help. Exceptions are left for programming errors and for ``ThrottledError``,
the typed "try again after N ms" signal a caller may raise when it paces itself
against a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.errors import PermanentError, RetryableError

__all__ = [
    "Gateway",
    "GatewayEvent",
    "GatewayInbound",
    "GatewayReceipt",
    "OutboundSms",
    "PermanentError",
    "RetryableError",
    "SubmitResult",
    "AckOnce",
    "ThrottledError",
    "ack_event",
]


@dataclass(frozen=True, slots=True)
class OutboundSms:
    """One message, ready for the wire.

    ``destination`` is E.164 with a leading ``+``. ``source`` is either a number
    (``+7...`` or digits) or an alphanumeric sender id. Each entry of ``parts`` is one
    ``short_message``: the UDH (when ``esm_class & 0x40``) followed by the encoded
    payload; parts are submitted in order. ``valid_until_ms`` (absolute epoch ms, the
    request's expiry) is passed on to the provider as the message's validity (SMPP
    ``validity_period``, the HTTP body's ``valid_until`` / ``ttl_s``), so the SMSC gives up
    delivering it when the pipeline's time-to-live has run out; ``None``: provider default.
    ``lane``, ``region`` (the number's ISO region) and ``operator`` (its range holder) are
    what the sender knows of the recipient; ``connectors.failover`` routes by them.
    """

    message_id: str
    source: str
    destination: str
    data_coding: int
    esm_class: int
    parts: list[bytes]
    priority: int = 0
    valid_until_ms: int | None = None
    lane: str | None = None
    region: str | None = None
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the gateway did with one ``OutboundSms``.

    ``gateway_message_ids`` holds the SMSC's id of every part it accepted, in order
    (receipts arrive per part, under these ids). When ``ok`` is false, ``status`` is the
    SMPP ``command_status`` of the part that failed (0 when no answer was received, e.g.
    ``error='in_doubt'`` or ``'not_bound'``) and ``retryable`` says whether sending the
    message again can succeed. ``in_doubt`` means the SMSC may have taken the part:
    a retry can duplicate it.

    ``route`` is the route that gave this answer and ``cost_per_segment`` its tariff,
    both set by ``connectors.failover.RoutingGateway`` (None: no tariff configured).
    """

    message_id: str
    gateway_message_ids: list[str]
    ok: bool
    status: int
    error: str | None
    retryable: bool
    route: str | None = None
    cost_per_segment: float | None = None


@dataclass(frozen=True, slots=True)
class GatewayReceipt:
    """A delivery report for one part, keyed by the SMSC's message id.

    ``state`` is the 7-letter SMPP name (DELIVRD, UNDELIV, EXPIRED, REJECTD, ...);
    ``error_code`` is the SMSC's ``err:`` field as sent (e.g. ``'000'``), or ``None``.
    ``destination`` is the handset the original message went to (E.164 with ``+`` when
    the SMSC marks it international).
    """

    gateway_message_id: str
    state: str
    error_code: str | None
    destination: str
    received_at_ms: int
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    route: str | None = None  # the route it came over (set by the routing gateway)


@dataclass(frozen=True, slots=True)
class GatewayInbound:
    """A mobile-originated message (a reply such as STOP) received from the SMSC.

    ``gateway_ref`` is whatever id the SMSC or provider gave the message (the HTTP
    provider's MO id; SMPP's ``receipted_message_id`` or ``user_message_reference`` TLV
    when present), or ``None``: a key for spotting a re-delivery.

    ``part`` is (reference, segment, segments) when the message is one segment of a
    concatenated (long) reply: the handset's reference, shared by its segments, and this
    segment's place, 1-based. ``None`` for a message of one segment.
    """

    source: str
    destination: str
    text: str
    received_at_ms: int
    gateway_ref: str | None = None
    part: tuple[int, int, int] | None = None
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    route: str | None = None  # the route it came over (set by the routing gateway)


GatewayEvent = GatewayReceipt | GatewayInbound


def ack_event(event: GatewayEvent) -> None:
    """Acknowledge ``event`` to its gateway, if it carries an ``ack`` (a no-op otherwise)."""
    if event.ack is not None:
        event.ack()


class AckOnce:
    """An event's ``ack``: runs ``answer`` once, on ``loop``, whichever thread calls it.

    Gateways build one per event; the consumer may call it from a worker thread (the
    sender commits in one). Later calls, and calls after the loop is closed, do nothing.
    """

    __slots__ = ("_loop", "_answer", "called")

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: Callable[[], object]) -> None:
        self._loop = loop
        self._answer = answer
        self.called = False

    def __call__(self) -> None:
        if self.called:
            return
        self.called = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # a thread without a loop, e.g. the sender's commit thread
            on_loop = False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            if on_loop:
                self._loop.call_soon(self._answer)
            else:
                self._loop.call_soon_threadsafe(self._answer)


class ThrottledError(RetryableError):
    """The gateway (or the operator behind it) asks to slow down: retry after ``retry_after_ms``."""

    reason = "throttled"

    def __init__(self, message: str = "throttled", *, retry_after_ms: int, status: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms
        self.status = status


@runtime_checkable
class Gateway(Protocol):
    """A connection to one SMS provider.

    Lifecycle: ``await start()`` once (connects; a gateway that cannot connect yet keeps
    trying in the background), then ``send`` concurrently from many tasks, consume
    ``events()`` from one task, and ``await close()`` at shutdown (which also ends the
    ``events()`` iteration).
    """

    name: str

    async def start(self) -> None: ...

    async def send(self, sms: OutboundSms) -> SubmitResult: ...

    def events(self) -> AsyncIterator[GatewayEvent]: ...

    async def close(self) -> None: ...
