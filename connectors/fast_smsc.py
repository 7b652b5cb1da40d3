"""Start the fast Go SMSC simulator (`infra/smsc-bench`) the way `pipeline.procs.start_simulator`
starts `connectors.smsc_sim`: same flags, same JSONL log, same control channel, real SMPP
over TCP, at a fraction of the CPU per submit_sm (for the benchmark).

The binary is built by `infra/smsc-bench/build.sh` when missing or older than its source
(`make smsc-bench` does the same); that needs the Go toolchain.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

from connectors.parent import PARENT_ENV
from pipeline.procs import free_port, stop
from pipeline.settings import ROOT

BUILD_SCRIPT = ROOT / "infra" / "smsc-bench" / "build.sh"
BINARY = ROOT / "infra" / "smsc-bench" / ".cache" / "smsc-bench"
MAKE_TARGET = "make smsc-bench"


def build_fast_simulator(binary: Path | None = None, timeout: float = 600.0) -> Path:
    """Build the simulator if needed (`build.sh`); its path. RuntimeError naming the make
    target when it cannot be built (no Go toolchain, compile error)."""
    binary = binary or Path(os.environ.get("SMSC_BENCH_BIN") or BINARY)
    run = subprocess.run(
        [str(BUILD_SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SMSC_BENCH_BIN": str(binary)},
    )
    if run.returncode != 0 or not binary.exists():
        detail = (run.stderr or run.stdout).strip()[-2000:]
        raise RuntimeError(
            f"the fast SMSC simulator is not built; run `{MAKE_TARGET}` "
            f"(needs Go on PATH): {detail}"
        )
    return binary


def start_fast_simulator(
    log_dir: Path, *flags: str, timeout: float = 20.0
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Run the Go SMSC simulator with smsc_sim's `flags` on free ports; returns (process,
    SMPP port, control port) once its control channel answers. RuntimeError if it cannot
    be built or does not start."""
    binary = build_fast_simulator()
    port, control = free_port(), free_port()
    out = open(log_dir / f"smsc-{port}.out", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--control-port", str(control), *flags],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, PARENT_ENV: str(os.getpid())},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{control}/health", timeout=2).close()
            return proc, port, control
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"the fast SMSC simulator did not start; see {log_dir}/smsc-{port}.out")
