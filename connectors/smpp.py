"""SMPP 3.4 gateway: several binds to one SMSC, windowed and rate-limited.

Shape:

* one ``_Bind`` per TRX session (with ``bind_mode="transmitter_and_receiver"``, for SMSCs
  without ``bind_transceiver``: a TX session per bind, and as many receive-only RX ones) (``connectors.smpp_session``: our own SMPP session over
  asyncio TCP, smpp34 only as the PDU codec); each has a supervisor task that connects
  and binds (exponential backoff with jitter, ``reconnect_min_s`` -> ``reconnect_max_s``),
  waits until the session ends, and reconnects. The session answers the SMSC's
  ``enquire_link`` and sends its own after ``enquire_link_s`` of silence (and at once
  after a submit timed out); an unanswered one ends the session;
* ``send`` picks a live bind round-robin and submits every part of the message on it,
  in order; a per-bind semaphore caps in-flight submits (the window) and a per-bind
  AIMD token bucket paces them, halving its rate when the SMSC answers
  ``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL`` and recovering gradually;
* a part whose answer never comes (bind dropped, response timeout) is *in doubt*: the
  SMSC may have taken it, so the result says ``error='in_doubt'``, ``retryable=True``;
* ``submit_sm`` carries ``validity_period`` from ``OutboundSms.valid_until_ms`` (SMPP
  absolute time, UTC), so the SMSC stops trying when the pipeline's time-to-live ends.

Inbound, ``deliver_sm`` (or ``data_sm``, text in ``message_payload``) becomes a
``GatewayReceipt`` (``esm_class`` says SMSC delivery receipt, SME delivery acknowledgement
or intermediate notification) or a ``GatewayInbound`` (an MO reply), and is *not* answered: its ``deliver_sm_resp`` goes out only when the consumer calls the event's
``ack()`` (after recording it). A session that dies first never answers it, so the SMSC
delivers it again on a later bind. SME user acknowledgements are answered and dropped.
Message ids are kept as the SMSC writes them, or, per ``submit_id_format`` /
``receipt_id_format``, as decimal numbers (``canonical_id``). Only a ``deliver_sm`` that
can never be recorded is answered at once: unreadable ones with ``ESME_RX_P_APPN``, and, when a bind already holds
``inbound_capacity`` unanswered ones, new ones with ``ESME_RX_T_APPN`` (try later).

Nothing here logs per message; counters live in ``SmppCounters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import smpp34

from connectors import smpp_session
from connectors.gateway import (
    AckOnce,
    GatewayEvent,
    GatewayInbound,
    GatewayReceipt,
    OutboundSms,
    SubmitResult,
)
from connectors.pacing import AimdBucket
from connectors.receipts import parse_receipt_text, state_name
from connectors.smpp_session import (
    DATA_SM,
    DELIVER_SM,
    SUBMIT_SM,
    BindRequest,
    DataSm,
    Pdu,
    SessionClosed,
    SmppSession,
    absolute_time,
    pdu_body,
    read_cstring,
)
from pipeline.sms.encoding import decode_payload

log = logging.getLogger(__name__)

ESME_ROK = 0x00000000
ESME_RINVMSGLEN = 0x00000001
ESME_RSYSERR = 0x00000008
ESME_RINVSRCADR = 0x0000000A
ESME_RINVDSTADR = 0x0000000B
ESME_RMSGQFUL = 0x00000014
ESME_RTHROTTLED = 0x00000058
ESME_RX_T_APPN = 0x00000064
ESME_RX_P_APPN = 0x00000065

STATUS_NAMES: dict[int, str] = {
    0x00: "ESME_ROK",
    0x01: "ESME_RINVMSGLEN",
    0x02: "ESME_RINVCMDLEN",
    0x03: "ESME_RINVCMDID",
    0x04: "ESME_RINVBNDSTS",
    0x05: "ESME_RALYBND",
    0x08: "ESME_RSYSERR",
    0x0A: "ESME_RINVSRCADR",
    0x0B: "ESME_RINVDSTADR",
    0x0C: "ESME_RINVMSGID",
    0x0D: "ESME_RBINDFAIL",
    0x0E: "ESME_RINVPASWD",
    0x14: "ESME_RMSGQFUL",
    0x15: "ESME_RINVSERTYP",
    0x45: "ESME_RSUBMITFAIL",
    0x48: "ESME_RINVSRCTON",
    0x49: "ESME_RINVSRCNPI",
    0x50: "ESME_RINVDSTTON",
    0x51: "ESME_RINVDSTNPI",
    0x58: "ESME_RTHROTTLED",
    0x61: "ESME_RINVSCHED",
    0x62: "ESME_RINVEXPIRY",
    0x64: "ESME_RX_T_APPN",
    0x65: "ESME_RX_P_APPN",
    0x66: "ESME_RX_R_APPN",
    0xFF: "ESME_RUNKNOWNERR",
}

# The SMSC is busy, not refusing the message: slow down and submit the part again.
SLOW_DOWN_STATUSES = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})
# Failures that a later retry of the whole message may get past.
DEFAULT_TRANSIENT_STATUSES = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL, ESME_RX_T_APPN})

_TLV_RECEIPTED_MESSAGE_ID = 0x001E
_TLV_USER_MESSAGE_REFERENCE = 0x0204
_TLV_MESSAGE_STATE = 0x0427
_TLV_MESSAGE_PAYLOAD = 0x0424
_TLV_NETWORK_ERROR_CODE = 0x0423
_TLV_SAR_MSG_REF_NUM = 0x020C
_TLV_SAR_TOTAL_SEGMENTS = 0x020E
_TLV_SAR_SEGMENT_SEQNUM = 0x020F
_SAR_TAGS = frozenset({_TLV_SAR_MSG_REF_NUM, _TLV_SAR_TOTAL_SEGMENTS, _TLV_SAR_SEGMENT_SEQNUM})
_IEI_CONCAT_8BIT, _IEI_CONCAT_16BIT = 0x00, 0x08

_DELIVER_SM_RESP_BODY = b"\x00"  # message_id, unused in deliver_sm_resp / data_sm_resp: NULL
# esm_class message types (bits 2-5) of a deliver_sm / data_sm from the SMSC: 0x00 a reply
# (MO); a delivery receipt, an SME delivery acknowledgement, an intermediate notification
# are receipts; an SME manual/user acknowledgement or a conversation abort is neither, and
# is answered and dropped (before, it was recorded as a customer's reply).
_RECEIPT_TYPES = (0x04, 0x08, 0x20)
_ACKNOWLEDGED_ONLY = (0x10, 0x18)


# How an SMSC writes its message ids (route key `message_ids`): as it pleases ("text",
# compared verbatim, the SMPP 3.4 default), or as a number in "decimal" or "hex". Some
# SMSCs answer submit_sm in hex and name the message in decimal in its receipts (Kannel's
# msg-id-type); ids given as numbers are kept in decimal, so the two meet.
ID_FORMATS = ("text", "decimal", "hex")


BIND_MODES = ("transceiver", "transmitter_and_receiver")
BIND_NAMES = {"TRX": "transceiver", "TX": "transmitter", "RX": "receiver"}


def _bind_hint(status: int, bind_type: str) -> str:
    if bind_type == "TRX" and status in (0x00000003, 0x00000004):  # RINVCMDID, RINVBNDSTS
        return ("; an SMSC without bind_transceiver needs the route's "
                "bind: transmitter_and_receiver")
    if status in (0x0000000E, 0x0000000F):  # RINVPASWD, RINVSYSID
        return "; check the route's system_id and the variable its password_env names"
    return ""


def canonical_id(message_id: str, id_format: str) -> str:
    """`message_id` as the gateway keeps it: numbers in decimal without leading zeros;
    text, and an id that is not a number in its format, verbatim."""
    if id_format == "text" or not message_id:
        return message_id
    try:
        return str(int(message_id, 16 if id_format == "hex" else 10))
    except ValueError:
        return message_id


def status_text(status: int) -> str:
    """``'ESME_RTHROTTLED (0x00000058)'`` for a command_status."""
    return f"{STATUS_NAMES.get(status, 'ESME_UNKNOWN')} (0x{status:08X})"


def _status_of(exc: Exception) -> int:
    """The command_status an smpp34 codec error names (``'... (0x0000000C)'``)."""
    found = re.search(r"0x([0-9A-Fa-f]{8})", str(exc))
    return int(found.group(1), 16) if found else ESME_RSYSERR


@dataclass(frozen=True, slots=True)
class SmppRoute:
    """Everything needed to reach one SMSC. Built once by the caller from config + env.

    Throughput is at most ``binds * rate_per_bind`` submits/s (parts, not messages);
    ``window`` caps unanswered submits per bind.
    """

    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    name: str = "smpp"
    binds: int = 2
    window: int = 32
    rate_per_bind: float = 100.0
    system_type: str = ""
    connect_timeout_ms: int = 5_000
    # No answer to a submit_sm (or the bind, or an enquire_link) by then: in doubt / dead.
    response_timeout_s: float = 10.0
    # How long `send` waits for any bind to come up before failing retryably.
    bind_wait_s: float = 5.0
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 5.0
    # ESME_RTHROTTLED / ESME_RMSGQFUL: resubmit the part up to this many times.
    throttle_retries: int = 8
    throttle_backoff_s: float = 0.05
    transient_statuses: frozenset[int] = DEFAULT_TRANSIENT_STATUSES
    # deliver_sm received and not yet acknowledged, per bind; more are answered
    # ESME_RX_T_APPN (the SMSC tries them again later).
    inbound_capacity: int = 8192
    # enquire_link after this long without a PDU from the SMSC.
    enquire_link_s: float = 30.0
    # How the SMSC writes message ids in submit_sm_resp and in receipts (ID_FORMATS).
    submit_id_format: str = "text"
    receipt_id_format: str = "text"
    # BIND_MODES: "transceiver" binds send and receive; "transmitter_and_receiver" opens a
    # transmitter (submits) and a receiver (receipts, replies) per bind, for SMSCs
    # without bind_transceiver.
    bind_mode: str = "transceiver"
    # TON/NPI of a numeric sender id written without "+" (a short code, a long number):
    # international (1/1) unless the SMSC wants e.g. 3/0 for short codes. An alphanumeric
    # sender is always 5/0, a "+" number 1/1.
    source_addr_ton: int = 1
    source_addr_npi: int = 1
    # TON/NPI of the destination, written in E.164 digits.
    dest_addr_ton: int = 1
    dest_addr_npi: int = 1


@dataclass(slots=True)
class SmppCounters:
    """Running totals since start, for metrics (read them, don't write them)."""

    submitted: int = 0  # submit_sm answered with ESME_ROK (per part)
    rejected: int = 0  # parts refused with a final status
    throttled: int = 0  # ESME_RTHROTTLED / ESME_RMSGQFUL answers
    retries: int = 0  # parts submitted again after a slow-down answer
    in_doubt: int = 0  # parts with no answer (bind lost, response timeout)
    reconnects: int = 0  # binds re-established after a loss
    receipts: int = 0  # delivery receipts received (re-deliveries included)
    inbound: int = 0  # MO messages received (re-deliveries included)
    acked: int = 0  # deliver_sm answered ESME_ROK after the event's ack()
    refused_inbound: int = 0  # deliver_sm answered with an error (unreadable, over capacity)
    acknowledgements: int = 0  # SME manual/user acknowledgements: answered, not recorded

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class Window:
    """The window of one bind: at most `size` submits unanswered, taken in FIFO order.

    asyncio.Semaphore would do, but its acquire scans every waiter (`locked()`), and with
    the sender keeping twice the window on the wire there are always dozens waiting: that
    scan was 7% of the sender's CPU. Here taking and giving back a slot cost O(1).
    """

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        slot = asyncio.get_running_loop().create_future()
        self.waiters.append(slot)
        try:
            await slot  # resolved by `_give_back`: the slot is ours
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self._give_back()  # handed a slot while being cancelled: pass it on
            raise  # a cancelled waiter left in `waiters` is skipped by `_give_back`

    async def __aexit__(self, *exc: object) -> None:
        self._give_back()

    def _give_back(self) -> None:
        while self.waiters:
            slot = self.waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.free += 1


class _Bind:
    __slots__ = ("index", "session", "up", "window", "bucket", "task", "ever_bound", "inflight",
                 "refusal_told")

    def __init__(self, index: int, window: int, rate: float) -> None:
        self.index = index
        self.session: SmppSession | None = None
        self.up = False
        self.window = Window(window)
        self.bucket = AimdBucket(rate)
        self.task: asyncio.Task[None] | None = None
        self.ever_bound = False
        self.inflight = 0  # messages being sent on this bind
        self.refusal_told = False  # a refused bind is logged as a warning once


def _address(addr: str) -> tuple[str, int, int]:
    """(address, ton, npi) for a source/destination as the pipeline writes it."""
    if addr.startswith("+"):
        return addr[1:], 1, 1
    if addr.isdigit():
        return addr, 1, 1
    return addr, 5, 0


def _e164(addr: str, ton: int) -> str:
    if ton == 1 and addr.isdigit():
        return "+" + addr
    return addr


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def decode_short_message(data: bytes, data_coding: int, esm_class: int) -> str:
    """Text of an inbound message by its data_coding (`decode_payload`: 0 the SMSC default
    alphabet, GSM 03.38, as the sender writes it; 8 UCS-2; 1 ASCII; 3 latin-1).

    A UDH (``esm_class & 0x40``) is stripped; the segments of a concatenated MO are
    returned one by one, each with its place (`concatenation`), and analytics joins them
    (the ``replies`` view).
    """
    if esm_class & 0x40 and data:
        data = data[1 + data[0] :]
    return decode_payload(data_coding, data)


def concatenation(data: bytes, esm_class: int, sar: dict[int, bytes]) -> tuple[int, int, int] | None:
    """(reference, segment, segments) of one segment of a concatenated message, from its
    UDH (information element 0x00, 8-bit reference, or 0x08, 16-bit) or from the
    ``sar_*`` TLVs (`sar`: tag -> value); None for a message of one segment, or when what
    it carries is not a segment's place (a segment 0, or past the count)."""
    found: tuple[int, int, int] | None = None
    if esm_class & 0x40 and data:
        udh, i = data[1:1 + data[0]], 0
        while i + 2 <= len(udh) and found is None:
            iei, size, value = udh[i], udh[i + 1], udh[i + 2:i + 2 + udh[i + 1]]
            if len(value) == size and iei == _IEI_CONCAT_8BIT and size == 3:
                found = (value[0], value[2], value[1])
            elif len(value) == size and iei == _IEI_CONCAT_16BIT and size == 4:
                found = (int.from_bytes(value[:2], "big"), value[3], value[2])
            i += 2 + size
    ref, total, seq = (sar.get(tag) for tag in (_TLV_SAR_MSG_REF_NUM, _TLV_SAR_TOTAL_SEGMENTS,
                                                 _TLV_SAR_SEGMENT_SEQNUM))
    if found is None and ref and total and seq:
        found = (int.from_bytes(ref, "big"), seq[0], total[0])
    if found is None or found[2] < 2 or not 1 <= found[1] <= found[2]:
        return None
    return found


class SmppGateway:
    """The ``Gateway`` for one SMSC over SMPP 3.4 (see the module docstring)."""

    def __init__(self, route: SmppRoute) -> None:
        if route.binds < 1 or route.window < 1 or route.rate_per_bind <= 0:
            raise ValueError("binds, window and rate_per_bind must be positive")
        self.route = route
        self.name = route.name
        self.counters = SmppCounters()
        self._binds: list[_Bind] = []  # the binds that submit
        self._receivers: list[_Bind] = []  # receive-only binds (transmitter_and_receiver)
        self._rr = 0
        self._any_up = asyncio.Event()
        self._events: asyncio.Queue[GatewayEvent | None] = asyncio.Queue()
        self._closing = False
        self._rng = random.Random()

    # ── lifecycle ──────────────────────────────────────────────────────────────

    async def start(self, wait_s: float | None = None) -> None:
        """Start every bind's supervisor; wait (bounded) until at least one bind is up.

        An SMSC that is down does not fail ``start``: the binds keep retrying and
        ``send`` reports ``not_bound`` until one comes up.
        """
        if self._binds:
            return
        r = self.route
        split = r.bind_mode == "transmitter_and_receiver"
        self._binds = [_Bind(i, r.window, r.rate_per_bind) for i in range(r.binds)]
        self._receivers = [_Bind(i, 1, 1.0) for i in range(r.binds)] if split else []
        for b in self._binds:
            b.task = asyncio.create_task(self._supervise(b, "TX" if split else "TRX"),
                                         name=f"{self.name}-bind{b.index}")
        for b in self._receivers:
            b.task = asyncio.create_task(self._supervise(b, "RX"),
                                         name=f"{self.name}-receiver{b.index}")
        try:
            await asyncio.wait_for(self._any_up.wait(), r.bind_wait_s if wait_s is None else wait_s)
        except TimeoutError:
            log.warning(
                "%s: no bind to %s:%s yet, retrying in background", self.name, r.host, r.port
            )

    async def close(self) -> None:
        """Let in-flight submits finish (bounded), unbind every session, end ``events()``.

        ``send`` calls made after ``close`` began return ``not_bound``. Events not
        acknowledged by then stay unanswered: the SMSC delivers them again later.
        """
        self._closing = True
        await asyncio.sleep(0)  # acks already given (scheduled on the loop) go first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route.response_timeout_s
        while any(b.inflight for b in self._binds) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        every = self._binds + self._receivers
        sessions = [b.session for b in every if b.session is not None]
        await asyncio.gather(*(s.unbind(timeout=2.0) for s in sessions), return_exceptions=True)
        for b in every:
            if b.task is not None:
                b.task.cancel()
        for b in every:
            if b.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await b.task
            self._drop(b)
        self._any_up.clear()
        self._events.put_nowait(None)

    async def __aenter__(self) -> SmppGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def bound(self) -> int:
        """How many binds that submit are up right now."""
        return sum(1 for b in self._binds if b.up)

    @property
    def receivers_bound(self) -> int:
        """How many receive-only binds are up (``transmitter_and_receiver``)."""
        return sum(1 for b in self._receivers if b.up)

    async def wait_bound(self, count: int | None = None, timeout: float = 10.0) -> None:
        """Wait until ``count`` binds (default: all, receivers too) are up; raises
        TimeoutError."""
        want = len(self._binds) if count is None else count
        receivers = len(self._receivers) if count is None else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.bound < want or self.receivers_bound < receivers:
            if loop.time() >= deadline:
                raise TimeoutError(f"{self.bound}/{want} binds up")
            await asyncio.sleep(0.02)

    async def _supervise(self, b: _Bind, bind_type: str) -> None:
        """Keep one bind up: connect with backoff, wait until the session ends, repeat."""
        r = self.route
        delay = r.reconnect_min_s
        bind = BindRequest(r.system_id, r.password, r.system_type)
        while not self._closing:
            try:
                session = await smpp_session.connect(
                    r.host,
                    r.port,
                    bind,
                    functools.partial(self._on_request, b),
                    bind_type=bind_type,
                    connect_timeout_s=r.connect_timeout_ms / 1000,
                    response_timeout_s=r.response_timeout_s,
                    enquire_link_s=r.enquire_link_s,
                    name=f"{self.name}-{'receiver' if bind_type == 'RX' else 'bind'}{b.index}",
                )
            except (OSError, TimeoutError) as exc:  # refused, timed out, bind rejected: "later"
                if isinstance(exc, smpp_session.BindRefused) and not b.refusal_told:
                    # said once per bind: what the SMSC answered, and what may help
                    b.refusal_told = True
                    log.warning("%s bind%d: %s bind refused by %s:%s with %s%s", self.name,
                                b.index, BIND_NAMES[bind_type], r.host, r.port,
                                status_text(exc.status), _bind_hint(exc.status, bind_type))
                else:
                    log.debug("%s bind%d: connect failed: %s", self.name, b.index, exc)
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
                delay = min(delay * 2, r.reconnect_max_s)
                continue
            if self._closing:
                await session.unbind()
                return
            b.session, b.up = session, True
            if b.ever_bound:
                self.counters.reconnects += 1
            b.ever_bound = True
            if bind_type != "RX":
                self._any_up.set()
            delay = r.reconnect_min_s
            log.info("%s bind%d: bound to %s:%s (%s)", self.name, b.index, r.host, r.port,
                     BIND_NAMES[bind_type])
            try:
                await session.wait_closed()
            finally:
                session.close()
                self._drop(b)
            if not self._closing:
                log.warning("%s bind%d: session lost, reconnecting", self.name, b.index)

    def _drop(self, b: _Bind) -> None:
        b.up, b.session = False, None
        if not any(x.up for x in self._binds):
            self._any_up.clear()

    # ── inbound ───────────────────────────────────────────────────────────────

    def _on_request(self, b: _Bind, session: SmppSession, pdu: Pdu) -> None:
        """A request from the SMSC (enquire_link and unbind are the session's): a receipt or
        a reply, in a ``deliver_sm`` or (SMPP 3.4, 4.7) a ``data_sm``."""
        if pdu.command_id not in (DELIVER_SM, DATA_SM):
            session.nack(pdu, smpp_session.ESME_RINVCMDID)
            return
        if session.owed > self.route.inbound_capacity:
            self.counters.refused_inbound += 1
            session.respond(pdu, ESME_RX_T_APPN, _DELIVER_SM_RESP_BODY)
            return
        ack = AckOnce(asyncio.get_running_loop(), functools.partial(self._answer, session, pdu))
        try:
            fields = pdu.decode() if pdu.command_id == DELIVER_SM else DataSm.parse(pdu.body)
            if fields.esm_class & 0x3C in _ACKNOWLEDGED_ONLY:
                log.debug("%s bind%d: user acknowledgement (esm_class 0x%02X) answered, not "
                          "recorded", self.name, b.index, fields.esm_class)
                self.counters.acknowledgements += 1
                self._answer(session, pdu)
                return
            event = self._to_event(fields, ack)
        except Exception:  # it can never be recorded: say so, or it comes back forever
            log.warning("%s bind%d: unreadable %s refused", self.name, b.index,
                        "deliver_sm" if pdu.command_id == DELIVER_SM else "data_sm")
            self.counters.refused_inbound += 1
            session.respond(pdu, ESME_RX_P_APPN, _DELIVER_SM_RESP_BODY)
            return
        self._events.put_nowait(event)

    def _answer(self, session: SmppSession, pdu: Pdu) -> None:
        # A no-op when the session is gone: the SMSC will deliver the event again.
        if session.respond(pdu, ESME_ROK, _DELIVER_SM_RESP_BODY):
            self.counters.acked += 1

    @property
    def events_backlog(self) -> int:
        """Events received but not yet taken from ``events()``."""
        return self._events.qsize()

    @property
    def unacknowledged(self) -> int:
        """``deliver_sm`` on live binds still waiting for their event's ``ack()``."""
        return sum(b.session.owed for b in self._binds + self._receivers if b.session is not None)

    def _to_event(self, pdu: smpp34.DeliverSm | DataSm, ack: AckOnce) -> GatewayEvent:
        body = pdu.short_message
        message_id: str | None = None
        user_ref: str | None = None
        state: str | None = None
        net_err: str | None = None
        sar: dict[int, bytes] = {}
        for tlv in pdu.tlvs:
            tag = tlv.tag
            if tag == _TLV_RECEIPTED_MESSAGE_ID:
                message_id = tlv.value.rstrip(b"\x00").decode("latin-1")
            elif tag == _TLV_USER_MESSAGE_REFERENCE and len(tlv.value) == 2:
                user_ref = str(int.from_bytes(tlv.value, "big"))
            elif tag == _TLV_MESSAGE_STATE and tlv.value:
                state = state_name(tlv.value[0])
            elif tag == _TLV_MESSAGE_PAYLOAD and not body:
                body = tlv.value
            elif tag == _TLV_NETWORK_ERROR_CODE and len(tlv.value) == 3:
                net_err = f"{int.from_bytes(tlv.value[1:], 'big'):03d}"
            elif tag in _SAR_TAGS:
                sar[tag] = tlv.value
        # SMSC delivery receipt, or intermediate notification
        if pdu.esm_class & 0x3C in _RECEIPT_TYPES:
            self.counters.receipts += 1
            parsed = parse_receipt_text(body.decode("latin-1"))
            return GatewayReceipt(
                gateway_message_id=canonical_id(message_id or parsed.message_id or "",
                                                self.route.receipt_id_format),
                state=state or parsed.state or "UNKNOWN",
                error_code=parsed.error_code if parsed.error_code is not None else net_err,
                destination=_e164(pdu.source_addr, pdu.source_addr_ton),
                received_at_ms=_now_ms(),
                ack=ack,
            )
        self.counters.inbound += 1
        return GatewayInbound(
            source=_e164(pdu.source_addr, pdu.source_addr_ton),
            destination=_e164(pdu.destination_addr, pdu.dest_addr_ton),
            text=decode_short_message(body, pdu.data_coding, pdu.esm_class),
            received_at_ms=_now_ms(),
            gateway_ref=message_id or user_ref,
            part=concatenation(body, pdu.esm_class, sar),
            ack=ack,
        )

    async def events(self) -> AsyncIterator[GatewayEvent]:
        """Receipts and MO messages in arrival order; ends after ``close()``.

        Consume from one task, and call each event's ``ack()`` once it is recorded (see
        ``connectors.gateway``). The buffer here is unbounded; the SMSC's own window and
        ``inbound_capacity`` bound how many unacknowledged events a bind can hold.
        """
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # ── outbound ──────────────────────────────────────────────────────────────

    def _pick(self) -> _Bind | None:
        binds = self._binds
        n = len(binds)
        for i in range(n):
            b = binds[(self._rr + i) % n]
            if b.up:
                self._rr = (b.index + 1) % n
                return b
        return None

    async def _acquire_bind(self) -> _Bind | None:
        if self._closing:
            return None
        b = self._pick()
        if b is None and not self._closing:
            try:
                await asyncio.wait_for(self._any_up.wait(), self.route.bind_wait_s)
            except TimeoutError:
                return None
            b = self._pick()
        return b

    async def send(self, sms: OutboundSms) -> SubmitResult:
        """Submit every part of ``sms`` on one bind, in order (see ``SubmitResult``)."""
        if not sms.parts:
            return SubmitResult(sms.message_id, [], False, ESME_RINVMSGLEN, "no parts", False)
        dest = sms.destination
        if not (dest.startswith("+") and dest[1:].isdigit() and 8 <= len(dest) <= 16):
            return SubmitResult(
                sms.message_id, [], False, ESME_RINVDSTADR, f"invalid destination {dest!r}", False
            )
        b = await self._acquire_bind()
        if b is None:
            return SubmitResult(sms.message_id, [], False, 0, "not_bound", True)
        validity = "" if sms.valid_until_ms is None else absolute_time(sms.valid_until_ms)
        source = _address(sms.source)
        if source[1:] == (1, 1) and not sms.source.startswith("+"):
            source = (source[0], self.route.source_addr_ton, self.route.source_addr_npi)
        counters = self.counters
        ids: list[str] = []
        b.inflight += 1  # lets close() wait for messages under way
        try:
            for part in sms.parts:
                try:
                    body = self._submit_body(sms, part, source, validity)
                except smpp34.SmppError as exc:  # the codec refuses this part: it never will
                    status = _status_of(exc)
                    counters.rejected += 1
                    return SubmitResult(sms.message_id, ids, False, status, str(exc), False)
                outcome = await self._submit_part(b, body)
                switches = 0
                while outcome == "not_bound" and not ids and switches < len(self._binds):
                    # Nothing of this message went out yet: another bind may take it.
                    nb = await self._acquire_bind()
                    if nb is None:
                        break
                    b.inflight -= 1
                    nb.inflight += 1
                    b, switches = nb, switches + 1
                    outcome = await self._submit_part(b, body)
                if isinstance(outcome, str):
                    # "not_bound" after accepted parts: this part was never sent.
                    if outcome == "in_doubt":
                        counters.in_doubt += 1
                    return SubmitResult(sms.message_id, ids, False, 0, outcome, True)
                status, message_id = outcome
                if status != ESME_ROK:
                    counters.rejected += 1
                    retryable = status in self.route.transient_statuses
                    return SubmitResult(
                        sms.message_id, ids, False, status, status_text(status), retryable
                    )
                counters.submitted += 1
                ids.append(canonical_id(message_id, self.route.submit_id_format))
            return SubmitResult(sms.message_id, ids, True, 0, None, False)
        finally:
            b.inflight -= 1

    def _submit_body(
        self, sms: OutboundSms, part: bytes, source: tuple[str, int, int], validity: str
    ) -> bytes:
        pdu = smpp34.SubmitSm(
            source[0],
            sms.destination[1:],
            part,
            source_addr_ton=source[1],
            source_addr_npi=source[2],
            dest_addr_ton=self.route.dest_addr_ton,
            dest_addr_npi=self.route.dest_addr_npi,
            esm_class=sms.esm_class,
            priority_flag=min(max(sms.priority, 0), 3),
            validity_period=validity,
            registered_delivery=1,
            data_coding=sms.data_coding,
        )
        return pdu_body(pdu.encode())

    async def _submit_part(self, b: _Bind, body: bytes) -> tuple[int, str] | str:
        """Submit one part on ``b``, resubmitting after slow-down answers (bounded).

        Returns the SMSC's last answer as ``(command_status, message_id)``,
        ``"not_bound"`` when the part was never sent, or ``"in_doubt"`` when it was sent
        and no answer came.
        """
        r = self.route
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if not b.up or b.session is None or not b.session.open:
                return "not_bound"
            async with b.window:
                wait = b.bucket.reserve(loop.time())
                if wait:
                    await asyncio.sleep(wait)
                session = b.session
                if not b.up or session is None or not session.open:
                    return "not_bound"
                try:
                    # Written at once (the session is open): any failure now is in doubt.
                    answer = await session.call(SUBMIT_SM, body, timeout=r.response_timeout_s)
                except TimeoutError:
                    session.probe()  # a silent SMSC: find out now whether the link is dead
                    return "in_doubt"
                except SessionClosed:
                    return "in_doubt"
            status = answer.status
            if status not in SLOW_DOWN_STATUSES:
                return status, read_cstring(answer.body)[0] if status == ESME_ROK else ""
            self.counters.throttled += 1
            b.bucket.slow_down(loop.time())
            if attempt >= r.throttle_retries:
                return status, ""
            attempt += 1
            self.counters.retries += 1
            backoff = min(r.throttle_backoff_s * (1 << (attempt - 1)), 1.0)
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
