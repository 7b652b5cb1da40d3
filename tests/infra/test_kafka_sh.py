"""`infra/kafka/kafka.sh up` when a port it needs is taken: one line naming the knob, at once.

No broker is started: the ports are held by plain listening sockets, and the script must
refuse before fetching jars or starting Java. Its state goes to a private KAFKA_HOME_DIR
(sharing the fetched jars, read-only, when they are cached) so the shared broker's files
are never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import ROOT

SCRIPT = ROOT / "infra" / "kafka" / "kafka.sh"
CACHE = ROOT / "infra" / "kafka" / ".cache"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "kafka-home"
    home.mkdir()
    for libs in CACHE.glob("libs-*"):
        (home / libs.name).symlink_to(libs)
    yield home
    for pidfile in home.glob("broker-*.pid"):  # a broker the script should not have started
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def _listening(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    sock = _listening()
    yield sock
    sock.close()


def _free_port_below(sock: socket.socket) -> int:
    """A port p with p+1 held by `sock`, p itself free (the default controller port clash)."""
    port = sock.getsockname()[1] - 1
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        pytest.skip(f"port {port} is in use here")
    finally:
        probe.close()
    return port


def _up(home: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    full = {k: v for k, v in os.environ.items()
            if k not in ("KAFKA_BOOTSTRAP", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT")}
    full.update(KAFKA_HOME_DIR=str(home), **env)
    started = time.monotonic()
    run = subprocess.run([str(SCRIPT), "up"], env=full, capture_output=True, text=True, timeout=60)
    return run, time.monotonic() - started


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_client_port_taken_is_one_line_naming_kafka_port(home: Path, taken: socket.socket) -> None:
    port = taken.getsockname()[1]
    run, took = _up(home, KAFKA_PORT=str(port))
    assert run.returncode != 0
    lines = _lines(run.stderr + run.stdout)
    assert len(lines) == 1, lines
    assert "KAFKA_PORT" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert took < 5, "must refuse before fetching jars or starting Java"
    assert not list(home.glob("server-*.properties")), "nothing may be written before the check"


def test_controller_port_taken_is_one_line_naming_the_knob(home: Path, taken: socket.socket) -> None:
    port = _free_port_below(taken)  # the controller uses KAFKA_PORT+1 by default
    run, took = _up(home, KAFKA_PORT=str(port))
    assert run.returncode != 0
    lines = _lines(run.stderr + run.stdout)
    assert len(lines) == 1, lines
    assert "KAFKA_CONTROLLER_PORT" in lines[0] and f"127.0.0.1:{port + 1}" in lines[0]
    assert took < 5


def test_explicit_controller_port_taken(home: Path, taken: socket.socket) -> None:
    free = _listening()
    client_port = free.getsockname()[1]
    free.close()
    run, _ = _up(home, KAFKA_PORT=str(client_port),
                 KAFKA_CONTROLLER_PORT=str(taken.getsockname()[1]))
    assert run.returncode != 0
    [line] = _lines(run.stderr + run.stdout)
    assert "KAFKA_CONTROLLER_PORT" in line


@pytest.mark.parametrize("bad", ["abc", "0", "99999"])
def test_a_bad_kafka_port_is_one_line(home: Path, bad: str) -> None:
    run, _ = _up(home, KAFKA_PORT=bad)
    assert run.returncode != 0
    [line] = _lines(run.stderr + run.stdout)
    assert "KAFKA_PORT" in line
