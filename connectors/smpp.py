"""SMPP 3.4 gateway: several transceiver binds to one SMSC, windowed and rate-limited.

Shape:

* one ``_Bind`` per TRX session; each has a supervisor task that connects (exponential
  backoff with jitter, 0.2 s -> 5 s), then reads ``deliver_sm`` (receipts and MO) until
  the session ends, and reconnects;
* ``send`` picks a live bind round-robin and submits every part of the message on it,
  in order; a per-bind semaphore caps in-flight submits (the window) and a per-bind
  AIMD token bucket paces them, halving its rate when the SMSC answers
  ``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL`` and recovering gradually;
* a part whose answer never comes (bind dropped, response timeout) is *in doubt*: the
  SMSC may have taken it, so the result says ``error='in_doubt'``, ``retryable=True``.

Two smpp34 behaviours shape the inbound side. It ACKs every ``deliver_sm`` as it
arrives and buffers it (``inbound_capacity``) until ``Smsc.next()`` takes it; when that
buffer overflows the session dies *without* yielding ``Disconnected``. So the reader
never waits on the consumer (events are buffered here, unbounded), and a watchdog polls
``Client.is_alive()`` (every ``liveness_check_s``, and at once after a failed submit),
drains what the dead session still holds, and rebinds.

Nothing here logs per message; counters live in ``SmppCounters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import smpp34

from connectors.gateway import (
    GatewayEvent,
    GatewayInbound,
    GatewayReceipt,
    OutboundSms,
    SubmitResult,
)
from connectors.pacing import AimdBucket
from connectors.receipts import parse_receipt_text, state_name

log = logging.getLogger(__name__)

ESME_ROK = 0x00000000
ESME_RINVMSGLEN = 0x00000001
ESME_RSYSERR = 0x00000008
ESME_RINVSRCADR = 0x0000000A
ESME_RINVDSTADR = 0x0000000B
ESME_RMSGQFUL = 0x00000014
ESME_RTHROTTLED = 0x00000058
ESME_RX_T_APPN = 0x00000064

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
_TLV_MESSAGE_STATE = 0x0427
_TLV_MESSAGE_PAYLOAD = 0x0424
_TLV_NETWORK_ERROR_CODE = 0x0423


def status_text(status: int) -> str:
    """``'ESME_RTHROTTLED (0x00000058)'`` for a command_status."""
    return f"{STATUS_NAMES.get(status, 'ESME_UNKNOWN')} (0x{status:08X})"


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
    response_timeout_s: float = 10.0
    # How long `send` waits for any bind to come up before failing retryably.
    bind_wait_s: float = 5.0
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 5.0
    # ESME_RTHROTTLED / ESME_RMSGQFUL: resubmit the part up to this many times.
    throttle_retries: int = 8
    throttle_backoff_s: float = 0.05
    transient_statuses: frozenset[int] = DEFAULT_TRANSIENT_STATUSES
    # deliver_sm buffered inside smpp34 per bind before it must be read.
    inbound_capacity: int = 8192
    liveness_check_s: float = 1.0
    drain_s: float = 0.25  # read what a dead session still holds before dropping it


@dataclass(slots=True)
class SmppCounters:
    """Running totals since start, for metrics (read them, don't write them)."""

    submitted: int = 0  # submit_sm answered with ESME_ROK (per part)
    rejected: int = 0  # parts refused with a final status
    throttled: int = 0  # ESME_RTHROTTLED / ESME_RMSGQFUL answers
    retries: int = 0  # parts submitted again after a slow-down answer
    in_doubt: int = 0  # parts with no answer (bind lost, response timeout)
    reconnects: int = 0  # binds re-established after a loss
    receipts: int = 0  # delivery receipts received
    inbound: int = 0  # MO messages received

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class _Bind:
    __slots__ = (
        "index",
        "client",
        "smsc",
        "up",
        "window",
        "bucket",
        "task",
        "ever_bound",
        "suspect",
        "inflight",
    )

    def __init__(self, index: int, window: int, rate: float) -> None:
        self.index = index
        self.client: smpp34.Client | None = None
        self.smsc: smpp34.Smsc | None = None
        self.up = False
        self.window = asyncio.Semaphore(window)
        self.bucket = AimdBucket(rate)
        self.task: asyncio.Task[None] | None = None
        self.ever_bound = False
        self.suspect = asyncio.Event()  # set by a failing submit: check liveness now
        self.inflight = 0  # messages being sent on this bind


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
    """Text of an inbound message: UCS-2 for data_coding 8, else 8-bit/GSM-ish ASCII.

    A UDH (``esm_class & 0x40``) is stripped; parts of a concatenated MO are returned
    one by one, not reassembled.
    """
    if esm_class & 0x40 and data:
        data = data[1 + data[0] :]
    if data_coding == 8:
        return data.decode("utf-16-be", errors="replace")
    return data.decode("latin-1")


class SmppGateway:
    """The ``Gateway`` for one SMSC over SMPP 3.4 (see the module docstring)."""

    def __init__(self, route: SmppRoute) -> None:
        if route.binds < 1 or route.window < 1 or route.rate_per_bind <= 0:
            raise ValueError("binds, window and rate_per_bind must be positive")
        self.route = route
        self.name = route.name
        self.counters = SmppCounters()
        self._binds: list[_Bind] = []
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
        self._binds = [_Bind(i, r.window, r.rate_per_bind) for i in range(r.binds)]
        for b in self._binds:
            b.task = asyncio.create_task(self._supervise(b), name=f"{self.name}-bind{b.index}")
        try:
            await asyncio.wait_for(self._any_up.wait(), r.bind_wait_s if wait_s is None else wait_s)
        except TimeoutError:
            log.warning(
                "%s: no bind to %s:%s yet, retrying in background", self.name, r.host, r.port
            )

    async def close(self) -> None:
        """Let in-flight submits finish (bounded), unbind every session, end ``events()``.

        ``send`` calls made after ``close`` began return ``not_bound``.
        """
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route.response_timeout_s
        while any(b.inflight for b in self._binds) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for b in self._binds:
            if b.task is not None:
                b.task.cancel()
        for b in self._binds:
            if b.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await b.task
            await self._drop(b, unbind=True)
        self._any_up.clear()
        self._events.put_nowait(None)

    async def __aenter__(self) -> SmppGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def bound(self) -> int:
        """How many binds are up right now."""
        return sum(1 for b in self._binds if b.up)

    async def wait_bound(self, count: int | None = None, timeout: float = 10.0) -> None:
        """Wait until ``count`` binds (default: all) are up; raises TimeoutError."""
        want = len(self._binds) if count is None else count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.bound < want:
            if loop.time() >= deadline:
                raise TimeoutError(f"{self.bound}/{want} binds up")
            await asyncio.sleep(0.02)

    async def _supervise(self, b: _Bind) -> None:
        """Keep one bind up: connect with backoff, read until the session ends, repeat."""
        r = self.route
        delay = r.reconnect_min_s
        while not self._closing:
            client = smpp34.Client(
                r.host,
                r.port,
                r.system_id,
                r.password,
                bind_type="TRX",
                system_type=r.system_type,
                window_size=r.window,
                inbound_capacity=r.inbound_capacity,
                connect_timeout_ms=r.connect_timeout_ms,
            )
            try:
                smsc = await client.connect()
            except Exception as exc:  # refused, timed out, bind rejected: all mean "later"
                log.debug("%s bind%d: connect failed: %s", self.name, b.index, exc)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 2.0)
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
                delay = min(delay * 2, r.reconnect_max_s)
                continue
            b.client, b.smsc, b.up = client, smsc, True
            b.suspect.clear()
            if b.ever_bound:
                self.counters.reconnects += 1
            b.ever_bound = True
            self._any_up.set()
            delay = r.reconnect_min_s
            log.info("%s bind%d: bound to %s:%s", self.name, b.index, r.host, r.port)
            reader = asyncio.create_task(self._read(b, smsc))
            watchdog = asyncio.create_task(self._watch(b, client))
            try:
                await asyncio.wait((reader, watchdog), return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    # Dead without Disconnected: what smpp34 already buffered (and ACKed)
                    # can still be read, so give the reader a moment to take it.
                    await asyncio.wait((reader,), timeout=r.drain_s)
            finally:
                reader.cancel()
                watchdog.cancel()
                await asyncio.gather(reader, watchdog, return_exceptions=True)
                await self._drop(b, unbind=self._closing)
            if not self._closing:
                log.warning("%s bind%d: session lost, reconnecting", self.name, b.index)

    async def _watch(self, b: _Bind, client: smpp34.Client) -> None:
        """Return when the session is dead.

        smpp34 does not always yield ``Disconnected`` (e.g. after its inbound buffer
        overflowed), so liveness is also polled, at once when a submit fails.
        """
        while True:
            try:
                await asyncio.wait_for(b.suspect.wait(), self.route.liveness_check_s)
            except TimeoutError:
                pass
            b.suspect.clear()
            try:
                alive = await client.is_alive()
            except Exception:
                alive = False
            if not alive:
                return

    async def _drop(self, b: _Bind, *, unbind: bool) -> None:
        smsc, client = b.smsc, b.client
        b.up, b.smsc, b.client = False, None, None
        if not any(x.up for x in self._binds):
            self._any_up.clear()
        if unbind and smsc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smsc.unbind(), 2.0)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop(), 2.0)

    # ── inbound ───────────────────────────────────────────────────────────────

    async def _read(self, b: _Bind, smsc: smpp34.Smsc) -> None:
        # Never blocks on the consumer: smpp34 ACKs deliver_sm on arrival and its session
        # dies when its inbound buffer overflows, so events are buffered here instead.
        put = self._events.put_nowait
        while True:
            try:
                ev = await smsc.next()
            except smpp34.SmppError:
                return
            if not isinstance(ev, smpp34.DeliverSmEvent):
                return  # Disconnected
            try:
                event = self._to_event(ev)
            except Exception:  # a malformed PDU must not kill the bind
                log.exception("%s bind%d: unreadable deliver_sm", self.name, b.index)
                continue
            put(event)

    @property
    def events_backlog(self) -> int:
        """Events received but not yet taken from ``events()``."""
        return self._events.qsize()

    def _to_event(self, ev: smpp34.DeliverSmEvent) -> GatewayEvent:
        body = ev.short_message
        message_id: str | None = None
        state: str | None = None
        net_err: str | None = None
        for tlv in ev.tlvs:
            tag = tlv.tag
            if tag == _TLV_RECEIPTED_MESSAGE_ID:
                message_id = tlv.value.rstrip(b"\x00").decode("latin-1")
            elif tag == _TLV_MESSAGE_STATE and tlv.value:
                state = state_name(tlv.value[0])
            elif tag == _TLV_MESSAGE_PAYLOAD and not body:
                body = tlv.value
            elif tag == _TLV_NETWORK_ERROR_CODE and len(tlv.value) == 3:
                net_err = f"{int.from_bytes(tlv.value[1:], 'big'):03d}"
        if ev.esm_class & 0x3C in (0x04, 0x20):  # SMSC delivery receipt / intermediate notification
            self.counters.receipts += 1
            parsed = parse_receipt_text(body.decode("latin-1"))
            return GatewayReceipt(
                gateway_message_id=message_id or parsed.message_id or "",
                state=state or parsed.state or "UNKNOWN",
                error_code=parsed.error_code if parsed.error_code is not None else net_err,
                destination=_e164(ev.source_addr, ev.source_addr_ton),
                received_at_ms=_now_ms(),
            )
        self.counters.inbound += 1
        return GatewayInbound(
            source=_e164(ev.source_addr, ev.source_addr_ton),
            destination=_e164(ev.destination_addr, ev.dest_addr_ton),
            text=decode_short_message(body, ev.data_coding, ev.esm_class),
            received_at_ms=_now_ms(),
        )

    async def events(self) -> AsyncIterator[GatewayEvent]:
        """Receipts and MO messages in arrival order; ends after ``close()``.

        Consume from one task. The buffer is unbounded (see ``events_backlog``): receipts
        are already acknowledged to the SMSC when they arrive, so they are never dropped.
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

    async def _check_alive(self, b: _Bind) -> None:
        client = b.client
        if client is None or not b.up:
            return
        try:
            alive = await client.is_alive()
        except Exception:
            alive = False
        if not alive and b.client is client:
            b.up = False  # stop picking it; the watchdog recycles the session
            if not any(x.up for x in self._binds):
                self._any_up.clear()
            b.suspect.set()

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
        source = _address(sms.source)
        counters = self.counters
        ids: list[str] = []
        b.inflight += 1  # lets close() wait for messages under way
        try:
            for part in sms.parts:
                outcome = await self._submit_part(b, sms, part, source)
                switches = 0
                while outcome == "not_bound" and not ids and switches < len(self._binds):
                    # Nothing of this message went out yet: another bind may take it.
                    nb = await self._acquire_bind()
                    if nb is None:
                        break
                    b.inflight -= 1
                    nb.inflight += 1
                    b, switches = nb, switches + 1
                    outcome = await self._submit_part(b, sms, part, source)
                if isinstance(outcome, str):
                    # "not_bound" after accepted parts: this part was never sent.
                    if outcome == "in_doubt":
                        counters.in_doubt += 1
                    return SubmitResult(sms.message_id, ids, False, 0, outcome, True)
                status = outcome.command_status
                if status != ESME_ROK:
                    counters.rejected += 1
                    retryable = status in self.route.transient_statuses
                    return SubmitResult(
                        sms.message_id, ids, False, status, status_text(status), retryable
                    )
                counters.submitted += 1
                ids.append(outcome.message_id or "")
            return SubmitResult(sms.message_id, ids, True, 0, None, False)
        finally:
            b.inflight -= 1

    async def _submit_part(
        self, b: _Bind, sms: OutboundSms, part: bytes, source: tuple[str, int, int]
    ) -> smpp34.SubmitSmResp | str:
        """Submit one part on ``b``, resubmitting after slow-down answers (bounded).

        Returns the SMSC's last answer, ``"not_bound"`` when the part was never sent,
        or ``"in_doubt"`` when it was sent and no answer came.
        """
        r = self.route
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            smsc = b.smsc
            if smsc is None or not b.up:
                return "not_bound"
            async with b.window:
                wait = b.bucket.reserve(loop.time())
                if wait:
                    await asyncio.sleep(wait)
                    smsc = b.smsc
                    if smsc is None or not b.up:
                        return "not_bound"
                try:
                    async with asyncio.timeout(r.response_timeout_s):
                        resp = await smsc.submit_sm(
                            sms.destination[1:],
                            part,
                            source_addr=source[0],
                            source_addr_ton=source[1],
                            source_addr_npi=source[2],
                            dest_addr_ton=1,
                            dest_addr_npi=1,
                            esm_class=sms.esm_class,
                            priority_flag=min(max(sms.priority, 0), 3),
                            registered_delivery=1,
                            data_coding=sms.data_coding,
                        )
                except TimeoutError:
                    return "in_doubt"
                except smpp34.SmppError:
                    # The session failed under this part: maybe sent, maybe not.
                    await self._check_alive(b)
                    return "in_doubt"
            if resp.command_status not in SLOW_DOWN_STATUSES:
                return resp
            self.counters.throttled += 1
            b.bucket.slow_down(loop.time())
            if attempt >= r.throttle_retries:
                return resp
            attempt += 1
            self.counters.retries += 1
            backoff = min(r.throttle_backoff_s * (1 << (attempt - 1)), 1.0)
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
