"""The SMSC simulator picks its own free ports and says which; a taken port is one clear line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sendkit import simulator


def test_the_simulator_picks_free_ports_itself_and_reports_them(tmp_path: Path) -> None:
    with simulator(tmp_path) as one, simulator(tmp_path) as two:
        ports = {one.port, one.control_port, two.port, two.control_port}
        assert len(ports) == 4 and 0 not in ports
        assert one.health()["sessions"] == 0 and two.health()["sessions"] == 0
        with socket.create_connection(("127.0.0.1", one.port), timeout=5):
            pass  # its SMPP port answers


def test_a_taken_port_ends_the_simulator_with_the_flag_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"cannot listen .*choose another --port"):
            with simulator(tmp_path, port=port):
                pass
