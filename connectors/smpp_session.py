"""One SMPP 3.4 session over asyncio TCP, usable from either end (ESME or SMSC).

Why it exists: smpp34's ``Client`` answers every ``deliver_sm`` the moment it arrives, so
a receipt is acknowledged to the SMSC before anyone has recorded it. Here nothing answers
a request except its handler: the gateway answers ``deliver_sm`` when the event is
acknowledged, the SMSC simulator answers ``submit_sm`` when it likes.

What this module does itself: framing (``take_pdus``), sequence numbers, matching
responses to requests (``call``, bounded by a timeout), ``enquire_link`` in both
directions (answering the peer's, and probing an idle peer: no answer means the session
is dead), ``unbind`` / ``unbind_resp``, ``generic_nack`` for unknown commands and the
bodies of the simple PDUs (bind and its response, ``submit_sm_resp``). ``submit_sm`` and
``deliver_sm`` bodies are smpp34's codec (``smpp34.SubmitSm(...).encode()``,
``smpp34.decode``); see ``pdu_body`` and ``Pdu.decode``.

Time helpers for ``validity_period`` (SMPP absolute / relative time) live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

import smpp34

log = logging.getLogger(__name__)

# command_id values (SMPP 3.4, 5.1.2.1); a response is the request's id | RESPONSE.
RESPONSE = 0x80000000
GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
ALERT_NOTIFICATION = 0x00000102  # has no response (SMPP 3.4, 4.12)
DATA_SM = 0x00000103
ENQUIRE_LINK = 0x00000015

BIND_COMMANDS = {"RX": BIND_RECEIVER, "TX": BIND_TRANSMITTER, "TRX": BIND_TRANSCEIVER}
BIND_TYPES = {v: k for k, v in BIND_COMMANDS.items()}

# command_status values this module answers with.
ESME_ROK = 0x00000000
ESME_RINVCMDLEN = 0x00000002
ESME_RINVCMDID = 0x00000003
ESME_RINVBNDSTS = 0x00000004
ESME_RSYSERR = 0x00000008

HEADER = struct.Struct(">IIII")  # command_length, command_id, command_status, sequence_number
MAX_PDU_BYTES = 1 << 17  # a message_payload TLV holds at most 64 KiB
MAX_SEQUENCE = 0x7FFFFFFF
TIMER_TICK_S = 0.05  # how often request deadlines are checked


class FramingError(ValueError):
    """The byte stream cannot be cut into PDUs (bad command_length); the session must end."""


class SessionClosed(ConnectionError):
    """The session ended before the request was written, or before its answer came."""


class BindRefused(ConnectionError):
    """The SMSC answered the bind with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: command_status 0x{status:08X}")
        self.status = status


class Pdu(NamedTuple):
    """One PDU: header fields and the raw body (everything after the 16-byte header)."""

    command_id: int
    status: int
    sequence: int
    body: bytes = b""

    def encode(self) -> bytes:
        return HEADER.pack(16 + len(self.body), self.command_id, self.status, self.sequence) + (
            self.body
        )

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE)

    def decode(self) -> Any:
        """smpp34's typed view of this PDU (``SubmitSm``, ``DeliverSm`` or ``RawPdu``);
        raises ``smpp34.SmppError`` when the body is malformed."""
        return smpp34.decode(self.encode())


def take_pdus(buffer: bytearray, max_bytes: int = MAX_PDU_BYTES) -> list[Pdu]:
    """Cut every complete PDU off the front of ``buffer`` (which keeps the incomplete rest).

    Raises ``FramingError`` when a command_length is below 16 or above ``max_bytes``:
    the stream has lost its framing and cannot be read further.
    """
    out: list[Pdu] = []
    offset, size = 0, len(buffer)
    while size - offset >= 16:
        length, command_id, status, sequence = HEADER.unpack_from(buffer, offset)
        if length < 16 or length > max_bytes:
            raise FramingError(f"command_length {length}")
        if size - offset < length:
            break
        out.append(Pdu(command_id, status, sequence, bytes(buffer[offset + 16 : offset + length])))
        offset += length
    del buffer[:offset]
    return out


def cstring(value: str) -> bytes:
    """A C-Octet String field: ASCII and a NUL terminator."""
    return value.encode("ascii", "replace") + b"\x00"


def read_cstring(body: bytes, offset: int = 0) -> tuple[str, int]:
    """The C-Octet String at ``offset`` and the offset after its NUL (the rest if none)."""
    end = body.find(b"\x00", offset)
    if end < 0:
        return body[offset:].decode("latin-1"), len(body)
    return body[offset:end].decode("latin-1"), end + 1


def pdu_body(encoded: bytes) -> bytes:
    """The body of a PDU smpp34 encoded (its header dropped; ``call`` writes its own)."""
    return encoded[16:]


@dataclass(frozen=True, slots=True)
class DataSm:
    """The fields of a ``data_sm`` (SMPP 3.4, 4.7.1) that an SMSC uses to deliver a receipt
    or a reply: what ``deliver_sm`` carries, with the text in ``message_payload``. smpp34
    has no codec for it; ``short_message`` is always empty (the gateway reads the TLV)."""

    source_addr_ton: int
    source_addr: str
    dest_addr_ton: int
    destination_addr: str
    esm_class: int
    data_coding: int
    tlvs: tuple[smpp34.Tlv, ...]
    short_message: bytes = b""

    @classmethod
    def parse(cls, body: bytes) -> DataSm:
        """Raises ValueError when the body is cut short or a TLV overruns it."""
        _service_type, i = read_cstring(body, 0)
        if i + 2 > len(body):
            raise ValueError("data_sm cut short before source_addr")
        source_ton, source, i = body[i], *read_cstring(body, i + 2)
        if i + 2 > len(body):
            raise ValueError("data_sm cut short before destination_addr")
        dest_ton, dest, i = body[i], *read_cstring(body, i + 2)
        if i + 3 > len(body):
            raise ValueError("data_sm cut short before data_coding")
        esm_class, data_coding, i = body[i], body[i + 2], i + 3
        tlvs = []
        while i < len(body):
            if i + 4 > len(body):
                raise ValueError("data_sm: a TLV header cut short")
            tag, length = int.from_bytes(body[i:i + 2], "big"), int.from_bytes(body[i + 2:i + 4], "big")
            if i + 4 + length > len(body):
                raise ValueError(f"data_sm: TLV 0x{tag:04X} overruns the body")
            tlvs.append(smpp34.Tlv(tag, body[i + 4:i + 4 + length]))
            i += 4 + length
        return cls(source_ton, source, dest_ton, dest, esm_class, data_coding, tuple(tlvs))

    def encode(self) -> bytes:
        """The body (service_type empty, NPIs 1 for international numbers, else 0)."""
        out = bytearray(b"\x00")
        for ton, addr in ((self.source_addr_ton, self.source_addr),
                          (self.dest_addr_ton, self.destination_addr)):
            out += bytes([ton, 1 if ton == 1 else 0]) + cstring(addr)
        out += bytes([self.esm_class, 0, self.data_coding])
        for tlv in self.tlvs:
            out += tlv.tag.to_bytes(2, "big") + len(tlv.value).to_bytes(2, "big") + tlv.value
        return bytes(out)


@dataclass(frozen=True, slots=True)
class BindRequest:
    system_id: str
    password: str
    system_type: str
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""

    def encode(self) -> bytes:
        return (
            cstring(self.system_id)
            + cstring(self.password)
            + cstring(self.system_type)
            + bytes([self.interface_version, self.addr_ton, self.addr_npi])
            + cstring(self.address_range)
        )

    @classmethod
    def parse(cls, body: bytes) -> BindRequest:
        """Read a bind_* body; raises ``ValueError`` when it is cut short."""
        system_id, i = read_cstring(body)
        password, i = read_cstring(body, i)
        system_type, i = read_cstring(body, i)
        if len(body) < i + 3:
            raise ValueError("bind body too short")
        version, ton, npi = body[i], body[i + 1], body[i + 2]
        address_range, _ = read_cstring(body, i + 3)
        return cls(system_id, password, system_type, version, ton, npi, address_range)


# ── SMPP time (validity_period, schedule_delivery_time) ───────────────────────


def absolute_time(epoch_ms: int) -> str:
    """SMPP 3.4 absolute time ``YYMMDDhhmmsstnnp`` in UTC (``nn`` = 00, ``p`` = '+').

    Tenths of a second are kept, rounded down (the message expires no later than asked).
    """
    return _absolute_tenths(epoch_ms // 100)


@lru_cache(maxsize=4096)
def _absolute_tenths(tenths_since_epoch: int) -> str:
    # Cached: requests made together expire together, and strftime is slow per submit.
    seconds, tenths = divmod(tenths_since_epoch, 10)
    return datetime.fromtimestamp(seconds, UTC).strftime("%y%m%d%H%M%S") + f"{tenths}00+"


def parse_time(value: str, now_ms: int) -> int | None:
    """Epoch ms of an SMPP absolute or relative (``...R``) time; ``None`` for ``''``.

    Raises ``ValueError`` for anything else. Relative years and months count as 365 and
    30 days (SMPP leaves them to the SMSC).
    """
    if not value:
        return None
    if len(value) != 16 or not value[:13].isdigit() or value[15] not in "+-R":
        raise ValueError(f"not an SMPP time: {value!r}")
    yy, mo, dd, hh, mi, ss = (int(value[i : i + 2]) for i in range(0, 12, 2))
    if value[15] == "R":
        seconds = ((((yy * 365 + mo * 30 + dd) * 24 + hh) * 60 + mi) * 60) + ss
        return now_ms + seconds * 1000
    tenths, quarters = int(value[12]), int(value[13:15])
    if quarters > 48:
        raise ValueError(f"UTC offset out of range: {value!r}")
    local = datetime(2000 + yy, mo, dd, hh, mi, ss, tenths * 100_000, tzinfo=UTC)
    offset = timedelta(minutes=15 * quarters)
    utc = local - offset if value[15] == "+" else local + offset
    return int(utc.timestamp() * 1000)


# ── the session ───────────────────────────────────────────────────────────────

RequestHandler = Callable[["SmppSession", Pdu], None]


class SmppSession:
    """One SMPP session on a connected stream pair; the owner binds (or answers binds).

    ``on_request(session, pdu)`` is called, on the event loop, for every request from the
    peer except ``enquire_link`` and ``unbind`` (answered here); it must answer the PDU
    (``respond``) now or later, or never. A handler that raises gets the peer a
    ``generic_nack`` with ``ESME_RSYSERR``.

    The session is dead when the connection ends, the framing breaks, or an
    ``enquire_link`` (sent after ``enquire_link_s`` without traffic from the peer, or
    at once after ``probe()``) gets no answer within ``response_timeout_s``. Then every
    outstanding ``call`` fails with ``SessionClosed`` and ``wait_closed()`` returns.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_request: RequestHandler,
        *,
        response_timeout_s: float = 10.0,
        enquire_link_s: float = 30.0,
        name: str = "smpp",
    ) -> None:
        self.name = name
        self.response_timeout_s = response_timeout_s
        self.enquire_link_s = enquire_link_s
        self._reader = reader
        self._writer = writer
        self._on_request = on_request
        self._loop = asyncio.get_running_loop()
        # sequence -> (answer, deadline in loop time); checked every TIMER_TICK_S
        self._pending: dict[int, tuple[asyncio.Future[Pdu], float]] = {}
        self._out: list[bytes] = []  # written in one go at the end of the loop iteration
        self._owed: set[int] = set()  # sequences of the peer's requests not answered yet
        self._sequence = 0
        self._open = True
        self._closed = asyncio.Event()
        self._probe = False  # check the link at the next tick
        self._last_heard = self._loop.time()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start reading and keeping the link alive."""
        self._tasks = [
            asyncio.create_task(self._read(), name=f"{self.name}-read"),
            asyncio.create_task(self._keep_alive(), name=f"{self.name}-enquire"),
        ]

    @property
    def open(self) -> bool:
        return self._open

    @property
    def outstanding(self) -> int:
        """Our requests written and not answered yet."""
        return len(self._pending)

    @property
    def owed(self) -> int:
        """The peer's requests handed to ``on_request`` and not answered yet."""
        return len(self._owed)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ── writing ───────────────────────────────────────────────────────────────

    def _write(self, data: bytes) -> bool:
        """Queue ``data``; everything queued in one loop iteration goes out in one write."""
        if not self._open or self._writer.is_closing():
            return False
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._open and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    def send_request(
        self, command_id: int, body: bytes = b"", timeout: float | None = None
    ) -> asyncio.Future[Pdu]:
        """Write a request; the future gets its response, or fails with ``SessionClosed``
        (the session ended first) or ``TimeoutError`` (none within ``timeout``, default
        ``response_timeout_s``; a response arriving later is dropped).

        Raises ``SessionClosed`` when the session is already closed (nothing written).
        """
        if not self._open:
            raise SessionClosed(f"{self.name}: session closed")
        self._sequence = self._sequence % MAX_SEQUENCE + 1
        while self._sequence in self._pending:  # a wrapped-around, still-unanswered request
            self._sequence = self._sequence % MAX_SEQUENCE + 1
        future: asyncio.Future[Pdu] = self._loop.create_future()
        wait = self.response_timeout_s if timeout is None else timeout
        self._pending[self._sequence] = (future, self._loop.time() + wait)
        self._write(Pdu(command_id, ESME_ROK, self._sequence, body).encode())
        return future

    async def call(self, command_id: int, body: bytes = b"", timeout: float | None = None) -> Pdu:
        """Send a request and wait for its response (``generic_nack`` included); raises
        as ``send_request`` (``SessionClosed``, ``TimeoutError``)."""
        return await self.send_request(command_id, body, timeout)

    def _expire(self, now: float) -> None:
        """Fail requests whose deadline has passed (and forget abandoned ones)."""
        for sequence, (future, deadline) in list(self._pending.items()):
            if future.done():
                del self._pending[sequence]
            elif deadline <= now:
                del self._pending[sequence]
                future.set_exception(TimeoutError(f"{self.name}: no answer in time"))
                future.exception()  # a caller that stopped waiting must not get it logged

    def respond(self, request: Pdu, status: int = ESME_ROK, body: bytes = b"") -> bool:
        """Answer a request ``on_request`` was given; False (nothing written) when the
        session is closed or the request was answered already."""
        if request.sequence not in self._owed:
            return False
        self._owed.discard(request.sequence)
        return self._answer(request, status, body)

    def nack(self, request: Pdu, status: int) -> bool:
        """Answer a request with ``generic_nack`` (e.g. an unknown command); as ``respond``."""
        if request.sequence not in self._owed:
            return False
        self._owed.discard(request.sequence)
        return self._write(Pdu(GENERIC_NACK, status, request.sequence).encode())

    def _answer(self, request: Pdu, status: int = ESME_ROK, body: bytes = b"") -> bool:
        return self._write(
            Pdu(request.command_id | RESPONSE, status, request.sequence, body).encode()
        )

    def probe(self) -> None:
        """Check the link now (an ``enquire_link``), e.g. after a request timed out."""
        self._probe = True

    # ── closing ───────────────────────────────────────────────────────────────

    async def unbind(self, timeout: float = 2.0) -> None:
        """Say goodbye (``unbind``, its answer awaited at most ``timeout``), then close."""
        if self._open:
            with contextlib.suppress(SessionClosed, TimeoutError):
                await self.call(UNBIND, timeout=timeout)
        self.close()
        await self.wait_closed()

    def close(self) -> None:
        """Drop the connection now; outstanding requests fail with ``SessionClosed``."""
        if not self._open:
            return
        self._flush()  # what was written before the close still goes out (unbind_resp)
        self._open = False
        self._owed.clear()
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(SessionClosed(f"{self.name}: session closed"))
                future.exception()  # a caller that stopped waiting must not get it logged
        with contextlib.suppress(Exception):
            self._writer.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._closed.set()

    # ── reading ───────────────────────────────────────────────────────────────

    async def _read(self) -> None:
        buffer = bytearray()
        try:
            while self._open:
                chunk = await self._reader.read(65536)
                if not chunk:
                    return
                self._last_heard = self._loop.time()
                buffer += chunk
                try:
                    pdus = take_pdus(buffer)
                except FramingError as exc:
                    log.warning("%s: %s, dropping the session", self.name, exc)
                    self._write(Pdu(GENERIC_NACK, ESME_RINVCMDLEN, 0).encode())
                    return
                for pdu in pdus:
                    self._dispatch(pdu)
        except (ConnectionError, OSError):
            return
        finally:
            self.close()

    def _dispatch(self, pdu: Pdu) -> None:
        if pdu.command_id & RESPONSE:
            waiting = self._pending.pop(pdu.sequence, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(pdu)
            return
        if pdu.command_id == ENQUIRE_LINK:
            self._answer(pdu)
        elif pdu.command_id == UNBIND:
            self._answer(pdu)
            self.close()
        elif pdu.command_id == ALERT_NOTIFICATION:
            log.debug("%s: alert_notification (a handset is reachable again): noted", self.name)
        else:
            self._owed.add(pdu.sequence)
            try:
                self._on_request(self, pdu)
            except Exception:
                log.exception("%s: handler failed on command 0x%08X", self.name, pdu.command_id)
                self.nack(pdu, ESME_RSYSERR)

    async def _keep_alive(self) -> None:
        """Expire overdue requests; probe the peer after ``enquire_link_s`` of silence."""
        loop = self._loop
        probe: asyncio.Future[Pdu] | None = None
        while self._open:
            await asyncio.sleep(TIMER_TICK_S)
            now = loop.time()
            if self._pending:
                self._expire(now)
            if probe is not None:
                if not probe.done():
                    continue
                if isinstance(probe.exception(), TimeoutError):
                    log.warning("%s: enquire_link unanswered, dropping the session", self.name)
                    self.close()
                    return
                probe = None
            if self._probe or now - self._last_heard >= self.enquire_link_s:
                self._probe = False
                with contextlib.suppress(SessionClosed):
                    probe = self.send_request(ENQUIRE_LINK)


async def connect(
    host: str,
    port: int,
    bind: BindRequest,
    on_request: RequestHandler,
    *,
    bind_type: str = "TRX",
    connect_timeout_s: float = 5.0,
    response_timeout_s: float = 10.0,
    enquire_link_s: float = 30.0,
    name: str = "smpp",
) -> SmppSession:
    """Connect and bind as an ESME; the bound session, already reading.

    Raises ``OSError`` / ``TimeoutError`` (cannot connect, no bind answer), ``SessionClosed``
    (dropped while binding) or ``BindRefused``.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout_s)
    session = SmppSession(
        reader,
        writer,
        on_request,
        response_timeout_s=response_timeout_s,
        enquire_link_s=enquire_link_s,
        name=name,
    )
    session.start()
    try:
        answer = await session.call(BIND_COMMANDS[bind_type], bind.encode())
    except BaseException:
        session.close()
        raise
    if answer.status != ESME_ROK:
        session.close()
        raise BindRefused(answer.status)
    return session
