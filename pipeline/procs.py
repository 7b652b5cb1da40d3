"""Start and stop stage workers as child processes (demo, tests, benchmark)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from connectors.parent import PARENT_ENV
from pipeline.settings import ROOT, Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same `settings`.

    Kafka goes by its full address (KAFKA_BOOTSTRAP), so a child uses the broker its
    parent uses whatever KAFKA_PORT it inherits.
    """
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        RASSYLKA_TOPIC_PREFIX=settings.topic_prefix,
        RASSYLKA_PARTITIONS=str(settings.partitions),
        RASSYLKA_CONFIG_DIR=str(settings.config_dir),
        RASSYLKA_STATE_DIR=str(settings.state_dir),
        CLICKHOUSE_URL=settings.clickhouse_url,
        RASSYLKA_PHONE_HASH_KEY=settings.phone_hash_key,
        RASSYLKA_APP_ID=settings.app_id,
        RASSYLKA_KAFKA_WAIT_S=str(settings.kafka_wait_s),
        PYTHONUNBUFFERED="1",
    )
    env[PARENT_ENV] = str(os.getpid())  # the child stops when this process dies
    return env


def start_stage(
    settings: Settings,
    args: list[str],
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Run `rassylka <args>` as a child process with `settings`; output goes to `log_path`."""
    env = settings_env(settings)
    env.update(extra_env or {})
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """Stop a child cleanly (SIGTERM), killing it if it does not exit within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child: no clean-up, no flush — what a crash looks like."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def with_prefix(settings: Settings, prefix: str, app_id: str) -> Settings:
    """`settings` moved to its own topic namespace and consumer groups."""
    return replace(settings, topic_prefix=prefix, app_id=app_id)


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_FREE_PORTS_BELOW = 12_000  # how far below the ephemeral range `free_port` looks
_picked: set[int] = set()
_ports_rng = random.Random()  # its own: a test that seeds `random` neither moves nor repeats it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a child process to listen on.

    Taken below the system's ephemeral range when it can. The kernel hands ports of that
    range to outgoing connections (a Kafka client's, another child's), and one of them
    could take the port in the moment between this check and the child's bind: the child
    then fails to start. A port below the range only another explicit bind can take.
    Random, and never the same port twice in one process.
    """
    import socket

    low = ephemeral_low()
    for _ in range(200):
        port = _ports_rng.randrange(max(1024, low - _FREE_PORTS_BELOW), low)
        if port in _picked:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _picked.add(port)
        return port
    with socket.socket() as s:  # everything down there taken: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ephemeral_low() -> int:
    """The first port of the system's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


LISTENING = re.compile(r"listening on [\d.]+:(\d+) control http://[\d.]+:(\d+)")
"""The simulator's first line (both builds): its SMPP and control ports."""


def start_simulator(log_dir: Path, *flags: str, timeout: float = 20.0,
                    command: list[str] | None = None,
                    port: int = 0) -> tuple[subprocess.Popen[bytes], int, int]:
    """Run the SMSC simulator with `flags`; returns (process, SMPP port, control port) once
    it listens. RuntimeError, with its own output, if it does not start.

    It binds `port` (default 0: a free one it picks itself, so nothing can take the port
    between choosing and binding it) and a free control port, and says which on its first
    line. `command` runs another build of it taking the same flags (the benchmark's Go one)."""
    import time
    import uuid

    out_path = log_dir / f"smsc-{uuid.uuid4().hex[:8]}.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "connectors.smsc_sim"]), "--port", str(port),
             "--control-port", "0", *flags],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, PARENT_ENV: str(os.getpid())})
    deadline = time.monotonic() + timeout
    while not (bound := LISTENING.search(out_path.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            said = out_path.read_text(errors="replace").strip()[-2000:]
            raise RuntimeError(f"the SMSC simulator did not start: {said or 'no output'} "
                               f"(see {out_path})")
        time.sleep(0.05)
    return proc, int(bound[1]), int(bound[2])
