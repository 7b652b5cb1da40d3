"""`free_port`: ports for child processes to listen on, out of the kernel's way."""

from __future__ import annotations

import random
import socket

import pytest

from pipeline.procs import ephemeral_low, free_port


def test_free_ports_are_below_the_ephemeral_range_distinct_and_free() -> None:
    """Regression: `free_port` took the kernel's choice, a port of the ephemeral range. A
    Kafka client's outgoing connection could take it before the child bound it, and the
    child (the simulator in CI, once) did not start. Below the range only an explicit bind
    can take it."""
    low = ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert all(1024 <= port < low for port in ports), (low, ports)
    assert len(set(ports)) == len(ports), "never the same port twice"
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free


def test_a_port_someone_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        offered = iter([taken, taken + 1 if taken + 1 < ephemeral_low() else taken - 1])
        monkeypatch.setattr(random, "randrange", lambda _low, _high: next(offered))
        assert free_port() != taken
