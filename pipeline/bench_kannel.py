"""Kannel side by side with Rassylka: submit_sm/s and CPU per message against our simulator.

Kannel (Debian's ``kannel`` package: ``make kannel``) runs as a bearerbox with one
``smsc = smpp`` transceiver bind to the SMSC simulator and an smsbox whose HTTP
``/cgi-bin/sendsms`` an aiohttp client in this process feeds at a fixed concurrency, one
message per request, each to its own number. Both boxes run on free ports with a config
written into the log folder (no store, receipts off unless asked, quiet logs) and are
stopped (SIGTERM, then SIGKILL) when the run ends; they also die with this process.

Measured, from the first request to the last accepted submit_sm in the simulator's
JSONL log: messages/s reaching the simulator, and CPU (user + system, from
``/proc/<pid>/stat``) per message of bearerbox and smsbox — and of the simulator when its
pid is given. The load generator's own CPU is not counted (as the Kafka publisher's is
not in Rassylka's figures). One run per call: the caller repeats.

Run it alone (starts its own simulator)::

    python -m pipeline.bench_kannel --messages 20000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.bench_procs import SimLog
from pipeline.procs import free_port, stop

INSTALL_HINT = "run `make kannel` (installs Debian's kannel package)"
SYSTEM_ID = "kannel"  # the simulator takes any system_id and password
PASSWORD = "bench"
SMSC_ID = "sim"
SENDER = "SHOPRU"
TEXT = "Напоминаем: до 31.12.2026 нужно оплатить счёт №INV-{i:05d} на 1 500 ₽."
VALIDITY_MIN = 1440  # Rassylka's submits carry a validity period too
DEFAULT_WINDOW = 1000  # max-pending-submits; Kannel's own default (10) caps it at ~10/RTT


class KannelError(RuntimeError):
    """Kannel is missing, did not start or did not pass every message on."""


def box_binary(name: str) -> str:
    """The path of a Kannel box (`bearerbox`, `smsbox`); /usr/sbin is often off a user's PATH."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise KannelError(f"{name} not found: {INSTALL_HINT}")
    return found


def kannel_version() -> dict[str, str]:
    """{'kannel': '1.4.5', 'package': '1.4.5-12'} (package empty when not from dpkg)."""
    out = subprocess.run(
        [box_binary("bearerbox"), "--version"], capture_output=True, text=True, timeout=10
    )
    m = re.search(r"version `([^']+)'", out.stdout + out.stderr)
    package = ""
    if shutil.which("dpkg-query"):
        q = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "kannel"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        package = q.stdout.strip() if q.returncode == 0 else ""
    return {"kannel": m.group(1) if m else "unknown", "package": package}


def write_config(
    log_dir: Path,
    smsc_port: int,
    ports: dict[str, int],
    *,
    window: int,
    binds: int,
    store: bool,
    log_level: int,
) -> Path:
    """kannel.conf for one run: bearerbox, one smsc group per bind, smsbox, a sendsms user."""
    q = lambda v: json.dumps(str(v))  # noqa: E731 - Kannel strings are double-quoted, \-escaped
    store_lines = (
        f"store-type = file\nstore-location = {q(log_dir / 'kannel.store')}\n" if store else ""
    )  # no store-location: no store at all
    core = f"""group = core
admin-port = {ports["admin"]}
admin-interface = "127.0.0.1"
admin-password = {q(PASSWORD)}
status-password = {q(PASSWORD)}
admin-allow-ip = "127.0.0.1"
smsbox-port = {ports["smsbox"]}
smsbox-interface = "127.0.0.1"
box-allow-ip = "127.0.0.1"
log-file = {q(log_dir / "kannel-bearerbox.log")}
log-level = {log_level}
dlr-storage = internal
{store_lines}"""
    smscs = "".join(
        f"""
group = smsc
smsc = smpp
smsc-id = {SMSC_ID}
host = "127.0.0.1"
port = {smsc_port}
transceiver-mode = true
smsc-username = {q(SYSTEM_ID)}
smsc-password = {q(PASSWORD)}
system-type = ""
max-pending-submits = {window}
enquire-link-interval = 30
reconnect-delay = 1
"""
        for _ in range(binds)
    )
    smsbox = f"""
group = smsbox
bearerbox-host = "127.0.0.1"
bearerbox-port = {ports["smsbox"]}
sendsms-port = {ports["sendsms"]}
sendsms-interface = "127.0.0.1"
log-file = {q(log_dir / "kannel-smsbox.log")}
log-level = {log_level}

group = sendsms-user
username = {q(SYSTEM_ID)}
password = {q(PASSWORD)}
max-messages = 1
"""
    path = log_dir / "kannel.conf"
    path.write_text(core + smscs + smsbox, encoding="utf-8")
    return path


# ------------------------------------------------------------------ processes
def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: the box gets SIGTERM when this process dies (a crashed bench leaves none)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _start_box(name: str, conf: Path, log_dir: Path, log_level: int) -> subprocess.Popen[bytes]:
    out = open(log_dir / f"kannel-{name}.out", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [box_binary(name), "-v", str(log_level), str(conf)],
            cwd=log_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
    finally:
        out.close()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(admin: int) -> str:
    url = f"http://127.0.0.1:{admin}/status.txt?password={PASSWORD}"
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read().decode("utf-8", "replace")


def _check_alive(procs: dict[str, subprocess.Popen[bytes]], log_dir: Path) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            out = log_dir / f"kannel-{name}.out"
            raise KannelError(
                f"{name} exited with {proc.returncode} at start-up; see {out}:\n{_tail(out)}"
            )


def _wait_listening(
    port: int, procs: dict[str, subprocess.Popen[bytes]], log_dir: Path, timeout: float = 30.0
) -> None:
    """Until bearerbox accepts connections on `port` (its smsbox port)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(procs, log_dir)
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise KannelError(
        f"bearerbox did not open its smsbox port {port} within {timeout:.0f} s; "
        f"see {log_dir}/kannel-bearerbox.out and kannel-bearerbox.log"
    )


def _wait_online(
    admin: int,
    procs: dict[str, subprocess.Popen[bytes]],
    log_dir: Path,
    binds: int,
    timeout: float = 30.0,
) -> None:
    """Until bearerbox reports every SMPP bind online and the smsbox connected."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        _check_alive(procs, log_dir)
        try:
            text = _status(admin)
        except OSError:
            time.sleep(0.1)
            continue
        smsc = [line for line in text.splitlines() if f"{SMSC_ID}[" in line]
        online = sum("(online" in line for line in smsc)
        if online >= binds and "smsbox:" in text and re.search(r"smsbox:.*on-line", text):
            return
        time.sleep(0.1)
    raise KannelError(
        f"Kannel's SMPP link to the simulator did not come online within "
        f"{timeout:.0f} s; bearerbox status:\n{text.strip()}\nsee {log_dir}/kannel-*.log"
    )


# ------------------------------------------------------------------ load
def _requests(sendsms: int, count: int, first: int, dlr_url: str | None) -> list[str]:
    base = f"http://127.0.0.1:{sendsms}/cgi-bin/sendsms?"
    out = []
    for i in range(first, first + count):
        params = {
            "username": SYSTEM_ID,
            "password": PASSWORD,
            "from": SENDER,
            "to": f"+7926{i:07d}",
            "text": TEXT.format(i=i),
            "charset": "UTF-8",
            "coding": "2",
            "validity": str(VALIDITY_MIN),
        }
        if dlr_url:
            params.update({"dlr-mask": "3", "dlr-url": f"{dlr_url}?n={i}&s=%d"})
        out.append(base + urllib.parse.urlencode(params))
    return out


async def _load(urls: list[str], concurrency: int) -> dict[str, Any]:
    import aiohttp
    from yarl import URL

    statuses: dict[int, int] = {}
    errors: list[str] = []
    queue = iter(urls)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for url in queue:
                async with session.get(URL(url, encoded=True)) as resp:
                    body = await resp.text(errors="replace")
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status >= 300 and len(errors) < 5:
                    errors.append(f"HTTP {resp.status}: {body.strip()[:200]}")

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"elapsed_s": elapsed, "client_cpu_s": cpu, "statuses": statuses, "errors": errors}


class _Receipts:
    """A dlr-url endpoint in this process: counts Kannel's delivery reports."""

    def __init__(self) -> None:
        self.count = 0
        self.port = free_port()
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def dlr(_: web.Request) -> web.Response:
            self.count += 1
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/dlr", dlr)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _sent_by_bearerbox(admin: int) -> int:
    """Messages bearerbox has had accepted by the SMSC (its status page), for runs without a log."""
    m = re.search(r"SMS: received \d+ \(\d+ queued\), sent (\d+)", _status(admin))
    return int(m.group(1)) if m else 0


async def _run(
    urls: list[str],
    concurrency: int,
    receipts: _Receipts | None,
    wait_done: Callable[[], tuple[bool, float | None]],
    timeout: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    if receipts is not None:
        await receipts.start()
    try:
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.time()
        load = await _load(urls, concurrency)
        deadline = time.monotonic() + timeout
        done, last = wait_done()
        while not done and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            done, last = wait_done()
        if receipts is not None:  # their handling is part of each message's cost
            while receipts.count < len(urls) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        if receipts is not None:
            await receipts.stop()
    return {
        "t0": t0,
        "last": last,
        "load": load,
        "done": done,
        "cpu_s": {name: cpu1[name] - cpu0[name] for name in pids},
    }


def kannel_bench(
    log_dir: Path,
    smsc_port: int,
    messages: int = 20_000,
    concurrency: int = 32,
    sim_log: Path | None = None,
    sim_pid: int | None = None,
    *,
    first: int = 0,
    window: int = DEFAULT_WINDOW,
    binds: int = 1,
    receipts: bool = False,
    store: bool = False,
    log_level: int = 3,
    timeout: float | None = None,
) -> dict[str, Any]:
    """One Kannel run against the simulator on `smsc_port`: `messages` sendsms requests.

    Destinations are +7926{first..first+messages-1} (give each run in one simulator log its
    own `first`, or not: only lines written after the start are read). Throughput counts
    the accepted submit_sm (status 0) of these destinations in `sim_log` from the first
    request to the last of them; without `sim_log`, until bearerbox's status page says all
    were sent (to 50 ms). `receipts` asks for delivery reports (dlr-mask 3) to a counting
    endpoint here and waits for all of them before reading the CPU; `store` gives
    bearerbox a file store in `log_dir`. Raises KannelError when Kannel is missing, does
    not start, refuses a request or loses a message.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    version = kannel_version()
    for name in ("bearerbox", "smsbox"):
        box_binary(name)
    ports = {"admin": free_port(), "smsbox": free_port(), "sendsms": free_port()}
    conf = write_config(
        log_dir, smsc_port, ports, window=window, binds=binds, store=store, log_level=log_level
    )
    timeout = timeout if timeout is not None else max(60.0, messages / 200)
    wanted = {f"7926{i:07d}" for i in range(first, first + messages)}
    log = SimLog.from_end(sim_log) if sim_log is not None else None
    seen: dict[str, int] = {}
    duplicates = 0
    refused: dict[int, int] = {}

    def wait_done() -> tuple[bool, float | None]:
        nonlocal duplicates
        if log is None:
            return _sent_by_bearerbox(ports["admin"]) >= messages, time.time()
        for s in log.read_new():
            dest = s["destination"]
            if dest not in wanted:
                continue
            if s["status"] != 0:
                refused[s["status"]] = refused.get(s["status"], 0) + 1
            elif dest in seen:
                duplicates += 1
            else:
                seen[dest] = s["at_ms"]
        return len(seen) >= messages, (max(seen.values()) / 1000 if seen else None)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["bearerbox"] = _start_box("bearerbox", conf, log_dir, log_level)
        _wait_listening(ports["smsbox"], procs, log_dir)  # smsbox gives up if it is not yet
        procs["smsbox"] = _start_box("smsbox", conf, log_dir, log_level)
        _wait_online(ports["admin"], procs, log_dir, binds)
        pids = {name: p.pid for name, p in procs.items()}
        if sim_pid is not None:
            pids["simulator"] = sim_pid
        dlr = _Receipts() if receipts else None
        urls = _requests(
            ports["sendsms"], messages, first, f"http://127.0.0.1:{dlr.port}/dlr" if dlr else None
        )
        run = asyncio.run(_run(urls, concurrency, dlr, wait_done, timeout, pids))
        status_page = _status(ports["admin"])
    finally:
        for proc in (procs.get("smsbox"), procs.get("bearerbox")):
            if proc is not None:
                stop(proc, 10.0)  # SIGTERM is Kannel's clean shutdown
    load = run["load"]
    if load["errors"]:
        raise KannelError(
            f"smsbox refused {sum(n for s, n in load['statuses'].items() if s >= 300)}"
            f" of {messages} requests, e.g. {load['errors'][0]}; see {log_dir}"
        )
    reached = len(seen) if log is not None else messages
    if not run["done"]:
        raise KannelError(
            f"only {reached} of {messages} messages reached the simulator within "
            f"{timeout:.0f} s (refused by it: {refused or 'none'}); bearerbox "
            f"status:\n{status_page.strip()}"
        )
    if receipts and dlr is not None and dlr.count < messages:
        raise KannelError(f"only {dlr.count} of {messages} delivery reports came back")
    elapsed = run["last"] - run["t0"]
    cpu = run["cpu_s"]
    per_msg = {name: round(cpu[name] * 1000 / messages, 4) for name in cpu}
    per_msg["total"] = round((cpu["bearerbox"] + cpu["smsbox"]) * 1000 / messages, 4)
    return {
        "messages": messages,
        "reached": reached,
        "duplicates": duplicates,
        "refused_by_simulator": refused,
        "elapsed_s": elapsed,
        "per_s": reached / elapsed,
        "http_s": load["elapsed_s"],
        "http_per_s": messages / load["elapsed_s"],
        "cpu_ms_per_message": per_msg,
        "cpu_s": cpu,
        "client_cpu_ms_per_message": round(load["client_cpu_s"] * 1000 / messages, 4),
        "concurrency": concurrency,
        "window": window,
        "binds": binds,
        "receipts": receipts,
        "store": store,
        "version": version,
        "config": str(conf),
        "destinations": seen if log is not None else {},
    }


# ------------------------------------------------------------------ command line
def _finite(x: float) -> bool:
    return math.isfinite(x) and x > 0


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.procs import start_simulator, stop
    from pipeline.settings import ROOT

    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench_kannel",
        description="Kannel's submit_sm/s and CPU per message against the SMSC simulator.",
    )
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--runs", type=int, default=1, help="repetitions, each on a fresh Kannel")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="max-pending-submits")
    p.add_argument("--binds", type=int, default=1, help="SMPP binds (smsc groups)")
    p.add_argument("--receipts", action="store_true", help="ask for and wait for delivery reports")
    p.add_argument("--store", action="store_true", help="bearerbox with a file store")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    console = Console()
    tag = time.strftime("%H%M%S") + os.urandom(2).hex()
    log_dir = ROOT / ".run" / "bench-kannel" / tag
    log_dir.mkdir(parents=True, exist_ok=True)
    sim_log = log_dir / "submits.jsonl"
    try:
        box_binary("bearerbox")
        box_binary("smsbox")
    except KannelError as exc:
        console.print(f"[red]{exc}")
        return 1
    runs: list[dict[str, Any]] = []
    sim, port, _control = start_simulator(
        log_dir, "--log", str(sim_log), "--receipt-delay-ms", "100-500", "--seed", "1"
    )
    try:
        for n in range(a.runs):
            with progress.status(console,
                                 f"[bold]Kannel run {n + 1}/{a.runs}: {a.messages:,} messages ..."):
                r = kannel_bench(
                    log_dir / f"run{n + 1}",
                    port,
                    a.messages,
                    a.concurrency,
                    sim_log,
                    sim.pid,
                    first=n * a.messages,
                    window=a.window,
                    binds=a.binds,
                    receipts=a.receipts,
                    store=a.store,
                )
            r.pop("destinations")
            runs.append(r)
            c = r["cpu_ms_per_message"]
            console.log(
                f"run {n + 1}: {r['per_s']:,.0f} submit_sm/s, {c['total']:.3f} ms CPU per "
                f"message (bearerbox {c['bearerbox']:.3f}, smsbox {c['smsbox']:.3f})"
            )
    except KannelError as exc:
        console.print(f"[red]{exc}")
        return 1
    finally:
        stop(sim)
    version = runs[0]["version"]
    table = Table(
        title=f"Kannel {version['kannel']} ({version['package'] or 'not from dpkg'}), "
        f"{a.messages:,} messages, {a.concurrency} HTTP connections, "
        f"{a.binds} bind(s), window {a.window}"
        + (", receipts" if a.receipts else "")
        + (", store" if a.store else "")
    )
    for col in (
        "run",
        "submit_sm/s",
        "sendsms/s",
        "bearerbox ms/msg",
        "smsbox ms/msg",
        "Kannel ms/msg",
        "simulator ms/msg",
    ):
        table.add_column(col, justify="right")
    for i, r in enumerate(runs, 1):
        c = r["cpu_ms_per_message"]
        table.add_row(
            str(i),
            f"{r['per_s']:,.0f}",
            f"{r['http_per_s']:,.0f}",
            f"{c['bearerbox']:.3f}",
            f"{c['smsbox']:.3f}",
            f"{c['total']:.3f}",
            f"{c['simulator']:.3f}",
        )
    console.print(table)
    console.print(f"logs and kannel.conf: {log_dir}")
    if a.json is not None:
        a.json.write_text(json.dumps({"runs": runs}, indent=2, ensure_ascii=False))
    return 0 if all(_finite(r["per_s"]) for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
