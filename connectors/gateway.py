"""The one contract every SMS gateway (SMPP, HTTP, the simulator's client) implements.

The sender hands a gateway an ``OutboundSms`` whose parts are already encoded and split
(``pipeline.sms.encoding``); the gateway answers with a ``SubmitResult`` and, later,
streams ``GatewayReceipt``s (delivery reports) and ``GatewayInbound``s (MO replies such as
STOP) through ``events()``.

``send`` does not raise for a message the gateway refused or could not place: the
refusal is a ``SubmitResult`` with ``ok=False``, the protocol status, and whether a
retry can help. Exceptions are left for programming errors and for ``ThrottledError``,
the typed "try again after N ms" signal a caller may raise when it paces itself
against a gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
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
    "ThrottledError",
]


@dataclass(frozen=True, slots=True)
class OutboundSms:
    """One message, ready for the wire.

    ``destination`` is E.164 with a leading ``+``. ``source`` is either a number
    (``+7...`` or digits) or an alphanumeric sender id. Each entry of ``parts`` is one
    ``short_message``: the UDH (when ``esm_class & 0x40``) followed by the encoded
    payload; parts are submitted in order.
    """

    message_id: str
    source: str
    destination: str
    data_coding: int
    esm_class: int
    parts: list[bytes]
    priority: int = 0


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the gateway did with one ``OutboundSms``.

    ``gateway_message_ids`` holds the SMSC's id of every part it accepted, in order
    (receipts arrive per part, under these ids). When ``ok`` is false, ``status`` is the
    SMPP ``command_status`` of the part that failed (0 when no answer was received, e.g.
    ``error='in_doubt'`` or ``'not_bound'``) and ``retryable`` says whether sending the
    message again can succeed. ``in_doubt`` means the SMSC may have taken the part:
    a retry can duplicate it.
    """

    message_id: str
    gateway_message_ids: list[str]
    ok: bool
    status: int
    error: str | None
    retryable: bool


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


@dataclass(frozen=True, slots=True)
class GatewayInbound:
    """A mobile-originated message (a reply such as STOP) received from the SMSC."""

    source: str
    destination: str
    text: str
    received_at_ms: int


GatewayEvent = GatewayReceipt | GatewayInbound


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
