"""An SMSC simulator that speaks real SMPP 3.4 over TCP, for tests and the demo.

It accepts any ESME bind (smpp34's Python server exposes no bind hook, so passwords are
not checked), answers ``submit_sm`` like an operator would - with latency, random
failures, ``ESME_RTHROTTLED`` above a per-session rate, and sometimes no answer at all -
and later sends a delivery receipt for every accepted message. It can also push MO
messages (replies such as STOP) to a bound ESME.

Run it::

    python -m connectors.smsc_sim --port 2775 --control-port 8775 --log /tmp/submits.jsonl

Control channel (when ``--control-port`` is given): ``POST /mo`` with
``{"from": "+7916...", "to": "Shop", "text": "STOP"}`` injects an MO; ``GET /submits``
(optionally ``?since=N``) lists logged submits; ``GET /health`` says how many sessions are
bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
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
from pipeline.sender.throttle import TokenBucket

log = logging.getLogger(__name__)

ESME_ROK = 0x00
ESME_RSYSERR = 0x08
ESME_RTHROTTLED = 0x58

_TLV_RECEIPTED_MESSAGE_ID = 0x001E
_TLV_MESSAGE_STATE = 0x0427
_TLV_MESSAGE_PAYLOAD = 0x0424

# Simulated network error per final state (the receipt's err: field).
_ERROR_CODES = {"DELIVRD": "000", "UNDELIV": "001", "EXPIRED": "027", "REJECTD": "011"}

# Characters whose GSM-7 default-alphabet byte equals their ASCII byte (unpacked).
_GSM_ASCII_SAFE = frozenset(
    " !\"#%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\r"
)


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
    inbound_capacity: int = 16_384  # submit_sm smpp34 may buffer before the loop reads them


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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["short_message"] = self.short_message.hex()
        return d


def _sms_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%y%m%d%H%M")


def _addr(addr: str) -> tuple[str, int, int]:
    if addr.startswith("+"):
        return addr[1:], 1, 1
    if addr.isdigit():
        return addr, 1, 1
    return addr, 5, 0


def encode_mo_text(text: str) -> tuple[bytes, int]:
    """(bytes, data_coding): GSM-safe ASCII as-is (dc 0), anything else UCS-2 (dc 8)."""
    if all(ch in _GSM_ASCII_SAFE for ch in text):
        return text.encode("ascii"), 0
    return text.encode("utf-16-be"), 8


class SmscSimulator:
    """The simulator: ``await start()``, ``await stop()``; see ``SimConfig`` for behaviour."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._server: smpp34.Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._control: Any = None  # aiohttp AppRunner
        self._sessions: dict[str, smpp34.Esme] = {}
        self._session_system: dict[str, str] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._pending_receipts: dict[str, deque[tuple[SubmitRecord, str]]] = {}
        self._held: deque[tuple[float, smpp34.SubmitSmEvent]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._submits: deque[SubmitRecord] = deque(maxlen=config.keep_submits)
        self._submit_count = 0
        self._binds_seen = 0
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
        self._outcome_weights = [w for _, w in outcomes]

    # ── lifecycle ──────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Listen for SMPP (and the control channel if configured)."""
        c = self.config
        if c.log_path is not None:
            self._log_file = open(c.log_path, "a", encoding="utf-8")
        self._server = smpp34.Server(
            c.host, c.port, system_id=c.system_id, inbound_capacity=c.inbound_capacity
        )
        await self._server.start()
        self._loop_task = asyncio.create_task(self._serve(self._server), name="smsc-sim")
        if c.control_port is not None:
            await self._start_control(c.control_port)

    async def stop(self) -> None:
        """Unbind every session, close the listener, drop pending timers."""
        server, self._server = self._server, None  # timers now see a stopped SMSC
        if server is not None:
            # smpp34's Server.stop() stops accepting but leaves established sessions
            # open, and a bind may reach our loop a moment after its bind_resp went out:
            # let the loop catch up, stop accepting, then unbind every session we know.
            self._stopping = True
            while True:
                binds_seen = self._binds_seen
                await asyncio.sleep(0.05)
                if self._binds_seen == binds_seen:
                    break
            with contextlib.suppress(Exception):
                await server.stop()
            for esme in list(self._sessions.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(esme.unbind(), 2.0)
            self._stopping = False
        self._sessions.clear()
        self._session_system.clear()
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = None
        self._tasks.clear()
        for _, ev in self._held:
            with contextlib.suppress(Exception):
                ev.reject(ESME_RSYSERR)
        self._held.clear()
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
        return dict(self._session_system)

    # ── the SMPP loop ─────────────────────────────────────────────────────────

    async def _serve(self, server: smpp34.Server) -> None:
        while True:
            try:
                ev = await server.next()
            except smpp34.SmppError:
                return  # server stopped
            if isinstance(ev, smpp34.SubmitSmEvent):
                if self._stopping:
                    ev.reject(ESME_RSYSERR)
                else:
                    self._on_submit(ev)
            elif isinstance(ev, smpp34.Esme):
                self._binds_seen += 1
                self._sessions[ev.session_id] = ev
                self._session_system[ev.session_id] = ev.system_id
                if not self._stopping:
                    self._flush_pending(ev.system_id)
            elif isinstance(ev, smpp34.Unbound):
                self._sessions.pop(ev.session_id, None)
                self._session_system.pop(ev.session_id, None)
                self._buckets.pop(ev.session_id, None)

    def _new_id(self) -> str:
        self._next_id += 1
        return format(self._next_id, "x")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_submit(self, ev: smpp34.SubmitSmEvent) -> None:
        c = self.config
        rng = self._rng
        loop = asyncio.get_running_loop()
        now = loop.time()
        sid = ev.session_id
        message_id: str | None = None
        dropped = False
        if c.throttle_above_per_s > 0:
            bucket = self._buckets.get(sid)
            if bucket is None:
                bucket = self._buckets[sid] = admission(c.throttle_above_per_s)
            admitted = bucket.try_take(now) == 0.0
        else:
            admitted = True
        if not admitted:
            status = ESME_RTHROTTLED
        elif c.failure_rate > 0 and rng.random() < c.failure_rate:
            status = ESME_RSYSERR
        else:
            status = ESME_ROK
            message_id = self._new_id()
            dropped = c.drop_response_rate > 0 and rng.random() < c.drop_response_rate
        record = SubmitRecord(
            at_ms=time.time_ns() // 1_000_000,
            session_id=sid,
            system_id=self._session_system.get(sid, ""),
            source=ev.source_addr,
            source_ton=ev.source_addr_ton,
            source_npi=ev.source_addr_npi,
            destination=ev.destination_addr,
            dest_ton=ev.dest_addr_ton,
            dest_npi=ev.dest_addr_npi,
            data_coding=ev.data_coding,
            esm_class=ev.esm_class,
            registered_delivery=ev.registered_delivery,
            short_message=ev.short_message,
            message_id=message_id,
            status=status,
            dropped=dropped,
        )
        self._record(record)

        if status == ESME_RTHROTTLED:
            ev.reject(status)  # an overloaded SMSC answers at once
            return
        if self._held:
            self._expire_held(now)
        if dropped:
            # smpp34 NAKs an event that is garbage-collected undecided, so hold it.
            self._held.append((now + c.drop_hold_ms / 1000, ev))
        latency = self._pick_ms(c.latency_ms) / 1000
        if status != ESME_ROK:
            self._answer_later(ev, latency, None, status)
            return
        assert message_id is not None
        if record.registered_delivery & 0x03:
            if c.receipt_before_response > 0 and rng.random() < c.receipt_before_response:
                self._spawn(self._receipt_then_answer(ev, record, message_id, latency, dropped))
                return
            delay = latency + self._pick_ms(c.receipt_delay_ms) / 1000
            loop.call_later(delay, self._receipt_due, record, message_id)
        if not dropped:
            self._answer_later(ev, latency, message_id, ESME_ROK)

    def _receipt_due(self, record: SubmitRecord, message_id: str) -> None:
        if self._server is None:  # stopped: keep it for the next bind, like a real SMSC
            self._keep_pending(
                record, self._rng.choices(self._outcome_names, self._outcome_weights)[0]
            )
            return
        self._spawn(self._send_receipt(record, message_id))

    def _answer_later(
        self, ev: smpp34.SubmitSmEvent, delay: float, message_id: str | None, status: int
    ) -> None:
        if delay <= 0:
            self._answer(ev, message_id, status)
        else:
            asyncio.get_running_loop().call_later(delay, self._answer, ev, message_id, status)

    @staticmethod
    def _answer(ev: smpp34.SubmitSmEvent, message_id: str | None, status: int) -> None:
        try:
            if status == ESME_ROK and message_id is not None:
                ev.accept(message_id)
            else:
                ev.reject(status)
        except smpp34.SmppError:
            pass  # the session went away meanwhile

    async def _receipt_then_answer(
        self,
        ev: smpp34.SubmitSmEvent,
        record: SubmitRecord,
        message_id: str,
        latency: float,
        dropped: bool,
    ) -> None:
        await self._send_receipt(record, message_id)
        if not dropped:
            self._answer_later(ev, latency, message_id, ESME_ROK)

    def _expire_held(self, now: float) -> None:
        held = self._held
        while held and held[0][0] <= now:
            _, ev = held.popleft()
            self._answer(ev, None, ESME_RSYSERR)

    def _pick_ms(self, span: tuple[float, float]) -> float:
        low, high = span
        return low if high <= low else self._rng.uniform(low, high)

    def _record(self, record: SubmitRecord) -> None:
        self._submits.append(record)
        self._submit_count += 1
        if self._log_file is not None:
            self._log_file.write(json.dumps(record.to_json()) + "\n")
            self._log_file.flush()

    # ── receipts and MO ───────────────────────────────────────────────────────

    def _receipt_target(self, session_id: str, system_id: str) -> smpp34.Esme | None:
        esme = self._sessions.get(session_id)
        if esme is not None and esme.can_receive:
            return esme
        for sid, sys_id in self._session_system.items():
            if sys_id == system_id:
                other = self._sessions.get(sid)
                if other is not None and other.can_receive:
                    return other
        return None

    async def _send_receipt(self, record: SubmitRecord, message_id: str) -> None:
        esme = self._receipt_target(record.session_id, record.system_id)
        state = self._rng.choices(self._outcome_names, self._outcome_weights)[0]
        if record.registered_delivery & 0x03 == 2 and state == "DELIVRD":
            return  # receipt asked for failures only
        if esme is None:
            self._keep_pending(record, state)
            return
        if not await self._deliver_receipt(esme, record, message_id, state):
            self._keep_pending(record, state)

    def _keep_pending(self, record: SubmitRecord, state: str) -> None:
        # Store-and-forward: the receipt waits for the next bind of the same system_id.
        queue = self._pending_receipts.setdefault(record.system_id, deque(maxlen=100_000))
        queue.append((record, state))

    def _flush_pending(self, system_id: str) -> None:
        queue = self._pending_receipts.pop(system_id, None)
        if not queue:
            return

        async def flush() -> None:
            for record, state in queue:
                esme = self._receipt_target(record.session_id, system_id)
                if esme is None or not await self._deliver_receipt(
                    esme, record, record.message_id or "", state
                ):
                    self._keep_pending(record, state)

        self._spawn(flush())

    async def _deliver_receipt(
        self, esme: smpp34.Esme, record: SubmitRecord, message_id: str, state: str
    ) -> bool:
        now_ms = time.time_ns() // 1_000_000
        body = record.short_message
        if record.esm_class & 0x40 and body:
            body = body[1 + body[0] :]
        if record.data_coding == 8:
            preview = body.decode("utf-16-be", errors="replace")
        else:
            preview = body.decode("latin-1")
        preview = "".join(ch for ch in preview[:20] if ch.isprintable())
        text = format_receipt_text(
            message_id,
            state,
            _ERROR_CODES.get(state, "000"),
            _sms_date(record.at_ms),
            _sms_date(now_ms),
            preview,
        )
        try:
            resp = await esme.deliver_sm(
                record.source,
                text.encode("latin-1", errors="replace"),
                source_addr=record.destination,
                source_addr_ton=record.dest_ton,
                source_addr_npi=record.dest_npi,
                dest_addr_ton=record.source_ton,
                dest_addr_npi=record.source_npi,
                esm_class=0x04,
                tlvs=[
                    smpp34.Tlv(_TLV_RECEIPTED_MESSAGE_ID, message_id.encode("ascii") + b"\x00"),
                    smpp34.Tlv(_TLV_MESSAGE_STATE, bytes([STATE_CODES[state]])),
                ],
            )
        except smpp34.SmppError:
            return False
        return resp.is_success

    async def inject_mo(
        self, source: str, destination: str, text: str, system_id: str | None = None
    ) -> None:
        """Send an MO ``deliver_sm`` to a bound session (of ``system_id`` if given).

        Raises ``LookupError`` when no session can receive, ``RuntimeError`` when the
        ESME refuses it.
        """
        esme = next(
            (
                e
                for sid, e in self._sessions.items()
                if e.can_receive and system_id in (None, self._session_system.get(sid))
            ),
            None,
        )
        if esme is None:
            raise LookupError("no bound session can receive")
        body, data_coding = encode_mo_text(text)
        src, src_ton, src_npi = _addr(source)
        dst, dst_ton, dst_npi = _addr(destination)
        tlvs: list[smpp34.Tlv] = []
        if len(body) > 254:
            tlvs, body = [smpp34.Tlv(_TLV_MESSAGE_PAYLOAD, body)], b""
        resp = await esme.deliver_sm(
            dst,
            body,
            source_addr=src,
            source_addr_ton=src_ton,
            source_addr_npi=src_npi,
            dest_addr_ton=dst_ton,
            dest_addr_npi=dst_npi,
            data_coding=data_coding,
            tlvs=tlvs,
        )
        if not resp.is_success:
            raise RuntimeError(f"ESME answered deliver_sm with 0x{resp.command_status:08X}")

    # ── control channel ───────────────────────────────────────────────────────

    async def _start_control(self, port: int) -> None:
        from aiohttp import web

        async def post_mo(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                source, dest, text = str(body["from"]), str(body["to"]), str(body["text"])
            except (ValueError, KeyError, TypeError):
                return web.json_response({"error": "want JSON {from, to, text}"}, status=400)
            try:
                await asyncio.wait_for(self.inject_mo(source, dest, text), 10)
            except LookupError as exc:
                return web.json_response({"error": str(exc)}, status=409)
            except (RuntimeError, TimeoutError, smpp34.SmppError) as exc:
                return web.json_response({"error": str(exc)}, status=502)
            return web.json_response({"ok": True})

        async def get_submits(request: web.Request) -> web.Response:
            since = int(request.query.get("since", "0"))
            skipped = self._submit_count - len(self._submits)
            rows = [r.to_json() for r in list(self._submits)[max(0, since - skipped) :]]
            return web.json_response({"total": self._submit_count, "submits": rows})

        async def health(_: web.Request) -> web.Response:
            return web.json_response(
                {"sessions": len(self._sessions), "submits": self._submit_count}
            )

        app = web.Application()
        app.router.add_post("/mo", post_mo)
        app.router.add_get("/submits", get_submits)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.config.host, port).start()
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
    )


async def _run(config: SimConfig) -> None:
    sim = SmscSimulator(config)
    await sim.start()
    control = f" control http://{config.host}:{config.control_port}" if config.control_port else ""
    print(f"smsc_sim listening on {config.host}:{config.port}{control}", flush=True)
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
    asyncio.run(_run(parse_args(argv)))
    # smpp34's tokio threads can touch the interpreter while it finalizes (seen as
    # SIGSEGV/SIGABRT at exit about one time in three); everything is closed by now,
    # so skip finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def read_submit_log(path: Path) -> Iterator[dict[str, Any]]:
    """Read a ``--log`` file back (for tests and the demo)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":
    main()
