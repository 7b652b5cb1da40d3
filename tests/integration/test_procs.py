"""Children started by the demo, the tests or the benchmark do not outlive their parent.

Regression: a demo that died by SIGSEGV (its `finally` never ran) left its router,
sender, sink and simulator running for an hour, holding ports, consumer groups and the
chDB folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.settings import ROOT

PARENT = """
import sys, time
from pathlib import Path
from pipeline.procs import start_simulator
sim, port, control = start_simulator(Path(sys.argv[1]))
print(sim.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie waiting for its reaper is gone too
        return fh.read().split()[2] != "Z"


def test_a_killed_parent_takes_its_children_with_it(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()  # SIGKILL: no finally, no clean-up
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(child), "the simulator outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
