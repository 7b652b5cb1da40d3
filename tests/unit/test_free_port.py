"""`free_port`: ports for child processes to listen on, out of the kernel's way."""

from __future__ import annotations

import random
import socket

import pytest

from pipeline import procs
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
        monkeypatch.setattr(procs._ports_rng, "randrange", lambda _low, _high: next(offered))
        assert free_port() != taken


def test_free_port_neither_draws_from_nor_follows_the_global_random() -> None:
    """Regression: `free_port` drew from the module `random`, so a test that seeds it for
    reproducible data got other data once a port was taken in between."""
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    free_port()
    assert [random.random() for _ in range(3)] == expected, "free_port moved the global stream"
