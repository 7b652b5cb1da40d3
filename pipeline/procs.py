"""Start and stop stage workers as child processes (demo, tests, benchmark)."""

from __future__ import annotations

import os
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulator(log_dir: Path, *flags: str, timeout: float = 20.0,
                    command: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
    """Run the SMSC simulator with `flags` on free ports; returns (process, SMPP port,
    control port) once its control channel answers. RuntimeError if it does not start.

    `command` runs another build of it taking the same flags (the benchmark's Go one)."""
    import time
    import urllib.request

    port, control = free_port(), free_port()
    out = open(log_dir / f"smsc-{port}.out", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [*(command or [sys.executable, "-m", "connectors.smsc_sim"]), "--port", str(port),
         "--control-port", str(control), *flags],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, PARENT_ENV: str(os.getpid())})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{control}/health", timeout=2).close()
            return proc, port, control
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"the SMSC simulator did not start; see {log_dir}/smsc-{port}.out")
