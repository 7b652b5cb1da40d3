"""An SMSC simulator that speaks real SMPP 3.4 over TCP, for tests and the demo.

It accepts any ESME bind (passwords are not checked), answers ``submit_sm`` like an
operator would - with latency, random failures, ``ESME_RTHROTTLED`` above a per-session
rate, and sometimes no answer at all - and later sends a delivery receipt for every
accepted message. It can also push MO messages (replies such as STOP) to a bound ESME.
Each connection is a ``connectors.smpp_session.SmppSession`` (smpp34 is the PDU codec).

Like a real SMSC it stores and forwards what it delivers: a receipt or an MO counts as
delivered only when the ESME answers its ``deliver_sm`` with ``ESME_ROK``. Until then it
stays in the system id's outbox: when the session carrying it ends, it goes out again on
another receiving session of the same ``system_id`` (at once, or on the next bind); when
the answer is an error or does not come within ``deliver_timeout_s``, it is tried again
after ``redeliver_s``. Only ``ESME_RX_P_APPN`` ("never") makes it give up. At most
``deliver_window`` ``deliver_sm`` per session wait for their answers.

The validity period of each submit (``validity_period``, SMPP absolute or relative time)
is logged; a message whose validity has passed when its receipt is due gets ``EXPIRED``
instead of a random outcome. An unreadable validity period is refused ``ESME_RINVEXPIRY``.

Run it::

    python -m connectors.smsc_sim --port 2775 --control-port 8775 --log /tmp/submits.jsonl

Port 0 (for either) picks a free port; the first line printed, ``smsc_sim listening on
HOST:PORT control http://HOST:PORT``, says which. A port already taken ends the run with one
line naming the flag to change.

Control channel (when ``--control-port`` is given): ``POST /mo`` with
``{"from": "+7916...", "to": "Shop", "text": "STOP"}`` queues an MO for a bound session
(409 when none is bound; 200 once it is on its way, before the ESME acknowledged it);
``"concat": "udh"`` or ``"sar"`` sends a long text as the segments of a concatenated MO,
last segment first, their place in a UDH or in ``sar_*`` TLVs;
``GET /submits`` (optionally ``?since=N``) lists logged submits; ``GET /health`` says how
many sessions are bound and how many deliveries wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import smpp34

from connectors.receipts import STATE_CODES, format_receipt_text
from connectors.sim_args import admission, span, weights
from connectors.smpp_session import (
    BIND_TYPES,
    DATA_SM,
    DELIVER_SM,
    SUBMIT_SM,
    BindRequest,
    DataSm,
    Pdu,
    SessionClosed,
    SmppSession,
    cstring,
    parse_time,
    pdu_body,
)
from pipeline.sender.throttle import TokenBucket
from pipeline.sms.encoding import encode_sms

log = logging.getLogger(__name__)

ESME_ROK = 0x00
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RBINDFAIL = 0x0D
ESME_RTHROTTLED = 0x58
ESME_RINVEXPIRY = 0x62
ESME_RX_P_APPN = 0x65

_TLV_RECEIPTED_MESSAGE_ID = 0x001E
_TLV_MESSAGE_STATE = 0x0427
_TLV_MESSAGE_PAYLOAD = 0x0424
_TLV_SAR_MSG_REF_NUM, _TLV_SAR_TOTAL_SEGMENTS, _TLV_SAR_SEGMENT_SEQNUM = 0x020C, 0x020E, 0x020F

# Simulated network error per final state (the receipt's err: field).
_ERROR_CODES = {"DELIVRD": "000", "UNDELIV": "001", "EXPIRED": "027", "REJECTD": "011"}

@dataclass(frozen=True)
class SimConfig:
    """How the simulated SMSC behaves. Ranges are (low, high) milliseconds, uniform."""

    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = "RASSYLKA-SIM"
    latency_ms: tuple[float, float] = (0.0, 0.0)  # submit_sm_resp delay
    failure_rate: float = 0.0  # share of submits answered ESME_RSYSERR
    throttle_above_per_s: float = 0.0  # per-session submits/s before ESME_RTHROTTLED; 0 = off
    drop_response_rate: float = 0.0  # share of submits accepted but not answered
    drop_hold_ms: float = 120_000.0  # how long a "dropped" answer is withheld
    receipt_delay_ms: tuple[float, float] = (50.0, 200.0)
    receipt_outcomes: dict[str, float] = field(
        default_factory=lambda: {"DELIVRD": 0.92, "UNDELIV": 0.04, "EXPIRED": 0.02, "REJECTD": 0.02}
    )
    receipt_before_response: float = 0.0  # share of accepted submits whose DLR precedes the resp
    seed: int | None = None
    log_path: Path | None = None  # append every submit as one JSON line
    control_port: int | None = None  # aiohttp control channel; None = off
    keep_submits: int = 200_000  # in-memory log size (oldest dropped first)
    deliver_timeout_s: float = 30.0  # no deliver_sm_resp by then: deliver it again later
    deliver_window: int = 512  # deliver_sm awaiting their answer, per session
    redeliver_s: float = 5.0  # wait before retrying a refused or unanswered deliver_sm
    enquire_link_s: float = 30.0  # probe an ESME silent for this long
    refuse_binds: int = 0  # answer every bind with this command_status (e.g. 0x0D); 0 = off
    # Deliver receipts and MO round-robin over every receiving session of the system id,
    # not on the one that submitted: as SMSCs do that see binds of one account as one.
    deliver_any_bind: bool = False
    # Name the message in receipts by its id in decimal, though submit_sm_resp gave it in
    # hex (as some SMSCs do; the route's `message_ids` setting meets it).
    receipt_ids_decimal: bool = False
    # Answer bind_transceiver with generic_nack ESME_RINVCMDID, as SMSCs of SMPP 3.3 do:
    # an ESME needs a transmitter and a receiver.
    no_transceiver: bool = False
    # Deliver receipts in data_sm (text in message_payload) instead of deliver_sm, as
    # SMPP 3.4 (4.7) allows.
    receipts_as_data_sm: bool = False


@dataclass(frozen=True, slots=True)
class SubmitRecord:
    """One submit_sm as the simulator saw and answered it."""

    at_ms: int
    session_id: str
    system_id: str
    source: str
    source_ton: int
    source_npi: int
    destination: str
    dest_ton: int
    dest_npi: int
    data_coding: int
    esm_class: int
    registered_delivery: int
    short_message: bytes
    message_id: str | None
    status: int  # the command_status answered (0 also for dropped answers)
    dropped: bool  # accepted, but the answer was withheld
    validity_period: str = ""  # as sent ('' = the SMSC's default)
    valid_until_ms: int | None = None  # validity_period as epoch ms

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["short_message"] = self.short_message.hex()
        return d


@dataclass(slots=True)
class SimStats:
    """What the simulator delivered (receipts and MO), for tests and ``GET /health``."""

    deliveries_sent: int = 0  # deliver_sm written (re-sends included)
    delivered: int = 0  # answered ESME_ROK
    refused: int = 0  # answered with an error status (tried again, except ESME_RX_P_APPN)
    unanswered: int = 0  # no answer within deliver_timeout_s (tried again)
    session_lost: int = 0  # the session ended before the answer (tried again)
    given_up: int = 0  # answered ESME_RX_P_APPN


@dataclass(slots=True, eq=False)
class _Delivery:
    """A receipt or MO on its way: the deliver_sm (or data_sm) body, kept byte-identical
    for re-sends."""

    system_id: str
    session_id: str  # the session to prefer ('' = any of the system id)
    body: bytes
    attempts: int = 0
    command: int = DELIVER_SM  # or DATA_SM (receipts_as_data_sm)


@dataclass(slots=True, eq=False)
class _Peer:
    """One ESME connection."""

    session_id: str
    session: SmppSession | None = None
    system_id: str = ""
    bind_type: str = ""  # RX, TX, TRX once bound
    in_flight: int = 0  # deliver_sm awaiting their answer

    @property
    def can_receive(self) -> bool:
        return self.bind_type in ("RX", "TRX") and self.session is not None and self.session.open

    @property
    def can_transmit(self) -> bool:
        return self.bind_type in ("TX", "TRX")


def _sms_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%y%m%d%H%M")


def _addr(addr: str) -> tuple[str, int, int]:
    if addr.startswith("+"):
        return addr[1:], 1, 1
    if addr.isdigit():
        return addr, 1, 1
    return addr, 5, 0


def encode_mo_text(text: str, reference: int = 0) -> tuple[list[bytes], list[bytes], int]:
    """(segments, their UDHs, data_coding) of an MO as a handset sends it: GSM 03.38
    codes, unpacked, when every character allows it (dc 0: '@' is 0x00, '€' ESC 0x65),
    else UCS-2 (dc 8); one segment per 153 septets or 67 UTF-16 units when it does not fit
    one SMS, as the sender cuts its own (`encode_sms`)."""
    try:
        encoded = encode_sms(text, reference)
    except ValueError:  # more than 255 segments: only message_payload can carry it
        return [text.encode("utf-16-be")], [b""], 8
    return encoded.parts, encoded.udh, encoded.data_coding


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SmscSimulator:
    """The simulator: ``await start()``, ``await stop()``; see ``SimConfig`` for behaviour."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self._rng = random.Random(config.seed)
        self._server: asyncio.Server | None = None
        self._control: Any = None  # aiohttp AppRunner
        self.port = 0  # the SMPP port bound (set by start; config.port may be 0)
        self.control_port = 0  # the control channel's port bound, when it runs
        self._peers: set[_Peer] = set()  # every connection, bound or not
        self._sessions: dict[str, _Peer] = {}  # bound ones by session id
        self._connections = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._outbox: dict[str, deque[_Delivery]] = {}  # per system id, waiting for a receiver
        self._next_receiver = 0  # round-robin position (deliver_any_bind)
        self._timers: set[asyncio.TimerHandle] = set()
        self._retrying = 0  # deliveries waiting out redeliver_s
        self._submits: deque[SubmitRecord] = deque(maxlen=config.keep_submits)
        self._submit_count = 0
        self._stopping = False
        self._log_file: IO[str] | None = None
        self._next_id = (time.time_ns() // 1_000_000) << 24
        outcomes = [(k.upper(), float(v)) for k, v in config.receipt_outcomes.items() if v > 0]
        if not outcomes:
            outcomes = [("DELIVRD", 1.0)]
        unknown = [k for k, _ in outcomes if k not in STATE_CODES]
        if unknown:
            raise ValueError(f"unknown receipt states: {unknown}")
        self._outcome_names = [k for k, _ in outcomes]
        self._outcome_weights = list(itertools.accumulate(w for _, w in outcomes))

    # ── lifecycle ──────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Listen for SMPP (and the control channel if configured)."""
        c = self.config
        if c.log_path is not None:
            self._log_file = open(c.log_path, "a", encoding="utf-8")
        # Port 0 asks the system for a free port; a restart keeps the port first bound.
        self._server = await asyncio.start_server(self._serve, c.host, self.port or c.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if c.control_port is not None:
            await self._start_control(self.control_port or c.control_port)

    async def stop(self) -> None:
        """Unbind every session, close the listener, drop timers.

        Receipts and MO not yet acknowledged stay in the outbox (a restarted simulator
        object starts empty, like an SMSC that lost its store).
        """
        server, self._server = self._server, None  # timers now see a stopped SMSC
        if server is not None:
            self._stopping = True
            server.close()
            peers = [p.session for p in list(self._peers) if p.session is not None]
            await asyncio.gather(*(s.unbind(timeout=2.0) for s in peers), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)
            self._stopping = False
        self._sessions.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._retrying = 0
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ── what tests look at ────────────────────────────────────────────────────

    @property
    def submits(self) -> list[SubmitRecord]:
        """Every submit_sm seen (the newest ``keep_submits``), oldest first."""
        return list(self._submits)

    @property
    def submit_count(self) -> int:
        """Submits seen since start (not capped by ``keep_submits``)."""
        return self._submit_count

    @property
    def sessions(self) -> dict[str, str]:
        """Bound sessions: session id -> system id."""
        return {sid: p.system_id for sid, p in self._sessions.items()}

    @property
    def waiting(self) -> int:
        """Receipts and MO not delivered yet (in the outbox or awaiting an answer)."""
        queued = sum(len(q) for q in self._outbox.values())
        return queued + sum(p.in_flight for p in self._peers) + self._retrying

    # ── sessions ──────────────────────────────────────────────────────────────

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        # Unique across simulator restarts too (a log may span several processes).
        peer = _Peer(session_id=f"sim-{os.getpid()}-{self._connections}")
        session = SmppSession(
            reader,
            writer,
            functools.partial(self._on_request, peer),
            enquire_link_s=self.config.enquire_link_s,
            name=f"smsc-sim/{peer.session_id}",
        )
        peer.session = session
        self._peers.add(peer)
        session.start()
        try:
            await session.wait_closed()
        finally:
            session.close()
            self._peers.discard(peer)
            self._sessions.pop(peer.session_id, None)
            self._buckets.pop(peer.session_id, None)

    def _on_request(self, peer: _Peer, session: SmppSession, pdu: Pdu) -> None:
        command = pdu.command_id
        if command in BIND_TYPES and self.config.no_transceiver and BIND_TYPES[command] == "TRX":
            session.nack(pdu, ESME_RINVCMDID)
        elif command in BIND_TYPES:
            self._on_bind(peer, session, pdu)
        elif not peer.bind_type:
            session.nack(pdu, ESME_RINVBNDSTS)
        elif command == SUBMIT_SM:
            if not peer.can_transmit:
                session.respond(pdu, ESME_RINVBNDSTS)
            elif self._stopping:
                session.respond(pdu, ESME_RSYSERR)
            else:
                self._on_submit(peer, session, pdu)
        else:
            session.nack(pdu, ESME_RINVCMDID)

    def _on_bind(self, peer: _Peer, session: SmppSession, pdu: Pdu) -> None:
        if peer.bind_type:
            session.respond(pdu, ESME_RALYBND)
            return
        try:
            request = BindRequest.parse(pdu.body)
        except ValueError:
            session.respond(pdu, ESME_RBINDFAIL)
            return
        if self._stopping or self._server is None or self.config.refuse_binds:
            session.respond(pdu, self.config.refuse_binds or ESME_RBINDFAIL)
            return
        peer.system_id, peer.bind_type = request.system_id, BIND_TYPES[pdu.command_id]
        self._sessions[peer.session_id] = peer
        session.respond(pdu, ESME_ROK, cstring(self.config.system_id))
        if peer.can_receive:
            self._pump(peer.system_id)

    # ── submits ───────────────────────────────────────────────────────────────

    def _new_id(self) -> str:
        self._next_id += 1
        return format(self._next_id, "x")

    def _later(self, delay: float, callback: Any, *args: Any) -> None:
        """``call_later`` that ``stop`` cancels."""

        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _on_submit(self, peer: _Peer, session: SmppSession, pdu: Pdu) -> None:
        c = self.config
        rng = self._rng
        loop = asyncio.get_running_loop()
        sid = peer.session_id
        try:
            sm = pdu.decode()
        except smpp34.SmppError:
            session.respond(pdu, ESME_RSYSERR)
            return
        now_ms = _now_ms()
        message_id: str | None = None
        dropped = False
        valid_until_ms: int | None = None
        if c.throttle_above_per_s > 0:
            bucket = self._buckets.get(sid)
            if bucket is None:
                bucket = self._buckets[sid] = admission(c.throttle_above_per_s)
            admitted = bucket.try_take(loop.time()) == 0.0
        else:
            admitted = True
        try:
            valid_until_ms = parse_time(sm.validity_period, now_ms)
            valid = True
        except ValueError:
            valid = False
        if not admitted:
            status = ESME_RTHROTTLED
        elif not valid:
            status = ESME_RINVEXPIRY
        elif c.failure_rate > 0 and rng.random() < c.failure_rate:
            status = ESME_RSYSERR
        else:
            status = ESME_ROK
            message_id = self._new_id()
            dropped = c.drop_response_rate > 0 and rng.random() < c.drop_response_rate
        record = SubmitRecord(
            at_ms=now_ms,
            session_id=sid,
            system_id=peer.system_id,
            source=sm.source_addr,
            source_ton=sm.source_addr_ton,
            source_npi=sm.source_addr_npi,
            destination=sm.destination_addr,
            dest_ton=sm.dest_addr_ton,
            dest_npi=sm.dest_addr_npi,
            data_coding=sm.data_coding,
            esm_class=sm.esm_class,
            registered_delivery=sm.registered_delivery,
            short_message=sm.short_message,
            message_id=message_id,
            status=status,
            dropped=dropped,
            validity_period=sm.validity_period,
            valid_until_ms=valid_until_ms,
        )
        self._record(record)

        if status == ESME_RTHROTTLED:
            session.respond(pdu, status)  # an overloaded SMSC answers at once
            return
        latency = self._pick_ms(c.latency_ms) / 1000
        if status != ESME_ROK:
            self._answer_later(session, pdu, latency, None, status)
            return
        assert message_id is not None
        if dropped:  # the answer is withheld, then comes (too late) as an error
            self._later(c.drop_hold_ms / 1000, self._answer, session, pdu, None, ESME_RSYSERR)
        if record.registered_delivery & 0x03:
            if c.receipt_before_response > 0 and rng.random() < c.receipt_before_response:
                # Written now, on this session when it has room: ahead of the response.
                self._receipt_due(record, message_id)
            else:
                delay = latency + self._pick_ms(c.receipt_delay_ms) / 1000
                self._later(delay, self._receipt_due, record, message_id)
        if not dropped:
            self._answer_later(session, pdu, latency, message_id, ESME_ROK)

    def _answer_later(
        self, session: SmppSession, pdu: Pdu, delay: float, message_id: str | None, status: int
    ) -> None:
        if delay <= 0:
            self._answer(session, pdu, message_id, status)
        else:
            self._later(delay, self._answer, session, pdu, message_id, status)

    @staticmethod
    def _answer(session: SmppSession, pdu: Pdu, message_id: str | None, status: int) -> None:
        # No body with an error status (SMPP 3.4, 4.4.2); a no-op on a closed session.
        body = cstring(message_id) if status == ESME_ROK and message_id is not None else b""
        session.respond(pdu, status, body)

    def _pick_ms(self, span: tuple[float, float]) -> float:
        low, high = span
        return low if high <= low else self._rng.uniform(low, high)

    def _record(self, record: SubmitRecord) -> None:
        self._submits.append(record)
        self._submit_count += 1
        if self._log_file is not None:
            self._log_file.write(json.dumps(record.to_json()) + "\n")
            self._log_file.flush()

    # ── receipts and MO: store and forward ────────────────────────────────────

    def _receipt_due(self, record: SubmitRecord, message_id: str) -> None:
        now_ms = _now_ms()
        if record.valid_until_ms is not None and now_ms >= record.valid_until_ms:
            state = "EXPIRED"  # its validity ran out before it could be delivered
        else:
            state = self._rng.choices(self._outcome_names, cum_weights=self._outcome_weights)[0]
        if record.registered_delivery & 0x03 == 2 and state == "DELIVRD":
            return  # receipt asked for failures only
        body = record.short_message
        if record.esm_class & 0x40 and body:
            body = body[1 + body[0] :]
        if record.data_coding == 8:
            preview = body.decode("utf-16-be", errors="replace")
        else:
            preview = body.decode("latin-1")
        preview = "".join(ch for ch in preview[:20] if ch.isprintable())
        if self.config.receipt_ids_decimal:
            message_id = str(int(message_id, 16))
        text = format_receipt_text(
            message_id,
            state,
            _ERROR_CODES.get(state, "000"),
            _sms_date(record.at_ms),
            _sms_date(now_ms),
            preview,
        )
        receipted = [
            smpp34.Tlv(_TLV_RECEIPTED_MESSAGE_ID, message_id.encode("ascii") + b"\x00"),
            smpp34.Tlv(_TLV_MESSAGE_STATE, bytes([STATE_CODES[state]])),
        ]
        if self.config.receipts_as_data_sm:
            data = DataSm(record.dest_ton, record.destination, record.source_ton, record.source,
                          0x04, 0, (*receipted, smpp34.Tlv(_TLV_MESSAGE_PAYLOAD, text.encode(
                              "latin-1", errors="replace"))))
            self._enqueue(_Delivery(record.system_id, record.session_id, data.encode(),
                                    command=DATA_SM))
            return
        pdu = smpp34.DeliverSm(
            source_addr=record.destination,
            destination_addr=record.source,
            short_message=text.encode("latin-1", errors="replace"),
            source_addr_ton=record.dest_ton,
            source_addr_npi=record.dest_npi,
            dest_addr_ton=record.source_ton,
            dest_addr_npi=record.source_npi,
            esm_class=0x04,
            tlvs=receipted,
        )
        self._enqueue(_Delivery(record.system_id, record.session_id, pdu_body(pdu.encode())))

    async def inject_mo(
        self, source: str, destination: str, text: str, system_id: str | None = None,
        concat: str | None = None,
    ) -> str:
        """Queue an MO ``deliver_sm`` for a bound session (of ``system_id`` if given).

        Returns the MO's SMSC id (sent as ``receipted_message_id``). It is written at
        once when the session has room, and delivered again (see the module docstring)
        until the ESME acknowledges it. Raises ``LookupError`` when no session can receive.

        ``concat`` ("udh" or "sar") sends a text longer than one segment as a concatenated
        MO, as a handset does: segments of 153 septets (67 UTF-16 units in UCS-2), each a
        ``deliver_sm`` of its own, the last one first (an SMSC need not keep their order);
        returns their ids, comma-separated, in segment order.
        """
        peer = next(
            (
                p
                for p in self._sessions.values()
                if p.can_receive and system_id in (None, p.system_id)
            ),
            None,
        )
        if peer is None:
            raise LookupError("no bound session can receive")
        if concat not in (None, "udh", "sar"):
            raise ValueError(f"concat is 'udh' or 'sar', not {concat!r}")
        ref = self._rng.randrange(256) if concat else 0
        parts, udhs, data_coding = encode_mo_text(text, ref)
        if concat is None or len(parts) == 1:
            return self._deliver_mo(peer, source, destination, b"".join(parts), data_coding)
        ids = [""] * len(parts)
        for seq in range(len(parts), 0, -1):
            if concat == "udh":
                ids[seq - 1] = self._deliver_mo(peer, source, destination,
                                                udhs[seq - 1] + parts[seq - 1], data_coding, 0x40)
            else:
                sar = [smpp34.Tlv(_TLV_SAR_MSG_REF_NUM, ref.to_bytes(2, "big")),
                       smpp34.Tlv(_TLV_SAR_TOTAL_SEGMENTS, bytes([len(parts)])),
                       smpp34.Tlv(_TLV_SAR_SEGMENT_SEQNUM, bytes([seq]))]
                ids[seq - 1] = self._deliver_mo(peer, source, destination, parts[seq - 1],
                                                data_coding, 0, sar)
        return ",".join(ids)

    def _deliver_mo(self, peer: _Peer, source: str, destination: str, body: bytes,
                    data_coding: int, esm_class: int = 0,
                    extra: list[smpp34.Tlv] | None = None) -> str:
        """Queue one MO deliver_sm (`extra`: TLVs besides its SMSC id); returns the id."""
        mo_id = self._new_id()
        src, src_ton, src_npi = _addr(source)
        dst, dst_ton, dst_npi = _addr(destination)
        tlvs = [smpp34.Tlv(_TLV_RECEIPTED_MESSAGE_ID, mo_id.encode("ascii") + b"\x00"),
                *(extra or [])]
        if len(body) > 254:
            tlvs, body = [*tlvs, smpp34.Tlv(_TLV_MESSAGE_PAYLOAD, body)], b""
        pdu = smpp34.DeliverSm(
            source_addr=src,
            destination_addr=dst,
            short_message=body,
            source_addr_ton=src_ton,
            source_addr_npi=src_npi,
            dest_addr_ton=dst_ton,
            dest_addr_npi=dst_npi,
            esm_class=esm_class,
            data_coding=data_coding,
            tlvs=tlvs,
        )
        self._enqueue(_Delivery(peer.system_id, peer.session_id, pdu_body(pdu.encode())))
        return mo_id

    def _enqueue(self, delivery: _Delivery) -> None:
        queue = self._outbox.setdefault(delivery.system_id, deque(maxlen=100_000))
        queue.append(delivery)
        self._pump(delivery.system_id)

    def _receiver(self, system_id: str, preferred: str) -> _Peer | None:
        """The session to deliver on: ``preferred`` if it has room, else the least busy
        (with ``deliver_any_bind``: the next one round-robin that has room)."""
        window = self.config.deliver_window
        peer = self._sessions.get(preferred)
        if not self.config.deliver_any_bind and peer is not None and peer.system_id == system_id \
                and peer.can_receive and peer.in_flight < window:
            return peer
        candidates = [
            p
            for p in self._sessions.values()
            if p.system_id == system_id and p.can_receive and p.in_flight < window
        ]
        if self.config.deliver_any_bind and candidates:
            self._next_receiver += 1
            return candidates[self._next_receiver % len(candidates)]
        return min(candidates, key=lambda p: p.in_flight, default=None)

    def _pump(self, system_id: str) -> None:
        """Write what waits for ``system_id`` on its receiving sessions, while they have room."""
        if self._server is None or self._stopping:
            return  # kept for the next bind, like a real SMSC
        queue = self._outbox.get(system_id)
        while queue:
            peer = self._receiver(system_id, queue[0].session_id)
            if peer is None or peer.session is None:
                return
            delivery = queue.popleft()
            try:
                answer = peer.session.send_request(
                    delivery.command, delivery.body, self.config.deliver_timeout_s
                )
            except SessionClosed:
                queue.appendleft(delivery)
                return
            peer.in_flight += 1
            delivery.attempts += 1
            self.stats.deliveries_sent += 1
            answer.add_done_callback(functools.partial(self._answered, peer, delivery))

    def _answered(self, peer: _Peer, delivery: _Delivery, answer: asyncio.Future[Pdu]) -> None:
        """The ESME's answer to a deliver_sm (or its absence): done, or deliver it again."""
        stats = self.stats
        peer.in_flight -= 1
        retry_in: float | None = self.config.redeliver_s
        error = answer.exception()
        if isinstance(error, SessionClosed):
            stats.session_lost += 1
            retry_in = 0.0  # on another session now, or on the next bind
        elif error is not None:
            stats.unanswered += 1
        elif answer.result().status == ESME_ROK:
            stats.delivered += 1
            retry_in = None
        elif answer.result().status == ESME_RX_P_APPN:
            stats.given_up += 1
            retry_in = None
        else:
            stats.refused += 1
        if retry_in == 0.0:
            self._enqueue(delivery)
        elif retry_in is not None:
            self._retrying += 1
            self._later(retry_in, self._retry, delivery)
        self._pump(delivery.system_id)

    def _retry(self, delivery: _Delivery) -> None:
        self._retrying -= 1
        self._enqueue(delivery)

    # ── control channel ───────────────────────────────────────────────────────

    async def _start_control(self, port: int) -> None:
        from aiohttp import web

        async def post_mo(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                source, dest, text = str(body["from"]), str(body["to"]), str(body["text"])
                concat = body.get("concat")
            except (ValueError, KeyError, TypeError, AttributeError):
                return web.json_response({"error": "want JSON {from, to, text}"}, status=400)
            try:
                mo_id = await self.inject_mo(source, dest, text, concat=concat)
            except ValueError:  # a concat other than "udh" or "sar"
                return web.json_response({"error": "want JSON {from, to, text}"}, status=400)
            except LookupError as exc:
                return web.json_response({"error": str(exc)}, status=409)
            return web.json_response({"ok": True, "id": mo_id})

        async def get_submits(request: web.Request) -> web.Response:
            since = int(request.query.get("since", "0"))
            skipped = self._submit_count - len(self._submits)
            rows = [r.to_json() for r in list(self._submits)[max(0, since - skipped) :]]
            return web.json_response({"total": self._submit_count, "submits": rows})

        async def health(_: web.Request) -> web.Response:
            return web.json_response(
                {
                    "sessions": len(self._sessions),
                    "submits": self._submit_count,
                    "waiting": self.waiting,
                    **asdict(self.stats),
                }
            )

        app = web.Application()
        app.router.add_post("/mo", post_mo)
        app.router.add_get("/submits", get_submits)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.config.host, port).start()
        self.control_port = int(runner.addresses[0][1])
        self._control = runner


# ── command line ─────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None = None) -> SimConfig:
    """Build a ``SimConfig`` from command-line flags."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m connectors.smsc_sim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--system-id", default=d.system_id)
    p.add_argument("--latency-ms", type=span, default=d.latency_ms, help="N or LOW-HIGH")
    p.add_argument("--failure-rate", type=float, default=d.failure_rate)
    p.add_argument("--throttle-above-per-s", type=float, default=d.throttle_above_per_s)
    p.add_argument("--drop-response-rate", type=float, default=d.drop_response_rate)
    p.add_argument("--drop-hold-ms", type=float, default=d.drop_hold_ms)
    p.add_argument(
        "--receipt-delay-ms", type=span, default=d.receipt_delay_ms, help="N or LOW-HIGH"
    )
    p.add_argument(
        "--receipt-outcomes",
        type=weights,
        default=d.receipt_outcomes,
        help="e.g. DELIVRD=90,UNDELIV=5,EXPIRED=3,REJECTD=2",
    )
    p.add_argument("--receipt-before-response", type=float, default=d.receipt_before_response)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log", type=Path, default=None, help="append submits as JSON lines")
    p.add_argument("--control-port", type=int, default=None)
    p.add_argument("--keep-submits", type=int, default=d.keep_submits)
    p.add_argument(
        "--deliver-timeout-s",
        type=float,
        default=d.deliver_timeout_s,
        help="wait this long for a deliver_sm_resp, then deliver again later",
    )
    p.add_argument("--deliver-window", type=int, default=d.deliver_window)
    p.add_argument("--redeliver-s", type=float, default=d.redeliver_s)
    p.add_argument(
        "--deliver-any-bind",
        action="store_true",
        help="deliver receipts and MO round-robin over all receiving binds of the account",
    )
    p.add_argument(
        "--receipt-ids-decimal",
        action="store_true",
        help="name messages in receipts by their id in decimal (submit_sm_resp gives hex)",
    )
    p.add_argument(
        "--no-transceiver",
        action="store_true",
        help="answer bind_transceiver with generic_nack ESME_RINVCMDID (SMPP 3.3 SMSCs)",
    )
    p.add_argument(
        "--receipts-as-data-sm",
        action="store_true",
        help="deliver receipts in data_sm (text in message_payload) instead of deliver_sm",
    )
    p.add_argument(
        "--refuse-binds",
        type=lambda v: int(v, 0),
        default=d.refuse_binds,
        help="answer every bind with this status, e.g. 0x0D (ESME_RBINDFAIL)",
    )
    a = p.parse_args(argv)
    return SimConfig(
        host=a.host,
        port=a.port,
        system_id=a.system_id,
        latency_ms=a.latency_ms,
        failure_rate=a.failure_rate,
        throttle_above_per_s=a.throttle_above_per_s,
        drop_response_rate=a.drop_response_rate,
        drop_hold_ms=a.drop_hold_ms,
        receipt_delay_ms=a.receipt_delay_ms,
        receipt_outcomes=a.receipt_outcomes,
        receipt_before_response=a.receipt_before_response,
        seed=a.seed,
        log_path=a.log,
        control_port=a.control_port,
        keep_submits=a.keep_submits,
        deliver_timeout_s=a.deliver_timeout_s,
        deliver_window=a.deliver_window,
        redeliver_s=a.redeliver_s,
        refuse_binds=a.refuse_binds,
        deliver_any_bind=a.deliver_any_bind,
        receipt_ids_decimal=a.receipt_ids_decimal,
        no_transceiver=a.no_transceiver,
        receipts_as_data_sm=a.receipts_as_data_sm,
    )


async def _run(config: SimConfig) -> None:
    sim = SmscSimulator(config)
    try:
        await sim.start()
    except OSError as exc:
        await sim.stop()
        flag = "--control-port" if sim.port else "--port"
        raise SystemExit(f"smsc_sim: cannot listen ({exc.strerror}): choose another {flag}"
                         " (0 picks a free port)") from None
    control = f" control http://{config.host}:{sim.control_port}" if sim.control_port else ""
    print(f"smsc_sim listening on {config.host}:{sim.port}{control}", flush=True)
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
    from connectors.parent import exit_with_parent

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    exit_with_parent()
    asyncio.run(_run(parse_args(argv)))


def read_submit_log(path: Path) -> Iterator[dict[str, Any]]:
    """Read a ``--log`` file back (for tests and the demo)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":
    main()
