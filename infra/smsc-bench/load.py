"""CPU per submit_sm of an SMSC simulator: smsc_sim.py ("python") or the Go one ("go").

    .venv/bin/python infra/smsc-bench/load.py --sim go -n 50000 [--client gateway] [--rate 1000]

Starts the simulator as the benchmark does (--log, --receipt-delay-ms 100-500, --seed 1),
binds 2 transceivers like the sender, and submits `n` submit_sm with registered_delivery=1,
either pipelined on raw connectors.smpp_session sessions (--client session, a window per
bind) or through the sender's connectors.smpp.SmppGateway (--client gateway), as fast as
they are answered or at --rate submits/s; every receipt is acknowledged. The simulator's
CPU time (utime + stime of all its threads, /proc/<pid>/stat) is read just after the binds
and after the last receipt. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import smpp34  # noqa: E402

from connectors.gateway import OutboundSms  # noqa: E402
from connectors.smpp import SmppGateway, SmppRoute  # noqa: E402
from connectors.smpp_session import (  # noqa: E402
    DELIVER_SM,
    SUBMIT_SM,
    BindRequest,
    Pdu,
    SmppSession,
    connect,
    pdu_body,
)
from pipeline.fast_smsc import start_fast_simulator  # noqa: E402
from pipeline.procs import start_simulator, stop  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def drive(
    port: int, n: int, binds: int, window: int, pid: int, rate: float
) -> dict[str, float]:
    receipts = 0
    done = asyncio.Event()

    def on_request(session: SmppSession, pdu: Pdu) -> None:
        nonlocal receipts
        if pdu.command_id == DELIVER_SM:
            session.respond(pdu, 0, b"\x00")
            receipts += 1
            if receipts >= n:
                done.set()

    sessions = [
        await connect("127.0.0.1", port, BindRequest("rassylka", "secret", ""), on_request)
        for _ in range(binds)
    ]
    text = "Счёт INV-1 на 1 500 ₽ ждёт оплаты".encode("utf-16-be")
    bodies = [
        pdu_body(
            smpp34.SubmitSm(
                "SHOPRU",
                f"7926{i:07d}",
                text,
                source_addr_ton=5,
                dest_addr_ton=1,
                dest_addr_npi=1,
                registered_delivery=1,
                data_coding=8,
            ).encode()
        )
        for i in range(min(n, 1000))
    ]
    next_i = 0
    accepted = 0

    async def pump(session: SmppSession) -> None:
        nonlocal next_i, accepted
        loop = asyncio.get_running_loop()
        while next_i < n:
            i = next_i
            next_i += 1
            if rate > 0:
                wait = t0 + i / rate - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            answer = await session.call(SUBMIT_SM, bodies[i % len(bodies)], timeout=30)
            accepted += answer.status == 0

    await asyncio.sleep(0.5)
    cpu0, t0 = cpu_s(pid), asyncio.get_running_loop().time()
    await asyncio.gather(*(pump(s) for s in sessions for _ in range(window)))
    t_submitted = asyncio.get_running_loop().time()
    await asyncio.wait_for(done.wait(), 120)
    cpu1, t1 = cpu_s(pid), asyncio.get_running_loop().time()
    for s in sessions:
        await s.unbind()
    return {
        "accepted": accepted,
        "receipts": receipts,
        "cpu_s": cpu1 - cpu0,
        "wall_s": t1 - t0,
        "submit_rate_per_s": n / (t_submitted - t0),
    }


async def drive_gateway(
    port: int, n: int, binds: int, window: int, pid: int, rate: float
) -> dict[str, float]:
    """The same through connectors.smpp.SmppGateway, the sender's client (validity set,
    receipts acknowledged as the sender does once recorded)."""
    route = SmppRoute(
        "127.0.0.1", port, "rassylka", "secret", binds=binds, window=window, rate_per_bind=1e6
    )
    gateway = SmppGateway(route)
    await gateway.start()
    await gateway.wait_bound()
    loop = asyncio.get_running_loop()
    receipts = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal receipts
        async for event in gateway.events():
            event.ack()
            receipts += 1
            if receipts >= n:
                done.set()

    consumer = asyncio.create_task(consume())
    text = "Счёт INV-1 на 1 500 ₽ ждёт оплаты".encode("utf-16-be")
    next_i = 0
    accepted = 0

    async def worker() -> None:
        nonlocal next_i, accepted
        while next_i < n:
            i = next_i
            next_i += 1
            if rate > 0:
                wait = t0 + i / rate - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            sms = OutboundSms(
                f"m{i}",
                "SHOPRU",
                f"+7926{i:07d}",
                8,
                0,
                [text],
                valid_until_ms=int(time.time() * 1000) + 3_600_000,
            )
            result = await gateway.send(sms)
            accepted += result.ok

    await asyncio.sleep(0.5)
    cpu0, t0 = cpu_s(pid), loop.time()
    await asyncio.gather(*(worker() for _ in range(binds * window * 2)))
    t_submitted = loop.time()
    await asyncio.wait_for(done.wait(), 120)
    cpu1, t1 = cpu_s(pid), loop.time()
    await gateway.close()
    await consumer
    return {
        "accepted": accepted,
        "receipts": receipts,
        "cpu_s": cpu1 - cpu0,
        "wall_s": t1 - t0,
        "submit_rate_per_s": n / (t_submitted - t0),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sim", choices=["go", "python"], default="go")
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--binds", type=int, default=2)
    p.add_argument("--window", type=int, default=32)
    p.add_argument(
        "--client",
        choices=["session", "gateway"],
        default="session",
        help="raw pipelined SmppSession, or the sender's SmppGateway",
    )
    p.add_argument(
        "--rate", type=float, default=0, help="submits/s in all (0: as fast as answered)"
    )
    a = p.parse_args()
    start = start_fast_simulator if a.sim == "go" else start_simulator
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "submits.jsonl"
        proc, port, _ = start(
            Path(tmp), "--log", str(log), "--receipt-delay-ms", "100-500", "--seed", "1"
        )
        try:
            run = drive if a.client == "session" else drive_gateway
            result = asyncio.run(run(port, a.n, a.binds, a.window, proc.pid, a.rate))
        finally:
            stop(proc)
        lines = sum(1 for _ in log.open())
    result.update(
        client=a.client,
        sim=a.sim,
        n=a.n,
        rate=a.rate,
        logged=lines,
        cpu_us_per_submit=round(result["cpu_s"] / a.n * 1e6, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
