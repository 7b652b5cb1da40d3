"""Children that do not outlive their parent.

The demo, the tests and the benchmark start workers and simulators as child processes
and stop them in a `finally`. A parent killed by a signal (SIGKILL, a crash) never runs
it, and its children would go on running, holding ports, consumer groups and chDB
folders. A child started with `RASSYLKA_PARENT_PID` set (`pipeline.procs` sets it) calls
`exit_with_parent()`: a daemon thread that sends the process SIGTERM, its clean stop,
once its parent is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PARENT_ENV = "RASSYLKA_PARENT_PID"


def exit_with_parent(interval_s: float = 1.0) -> None:
    """If `RASSYLKA_PARENT_PID` names this process's parent, stop (SIGTERM) when it dies."""
    value = os.environ.get(PARENT_ENV, "")
    if not value.isdigit() or int(value) != os.getppid():
        return
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
