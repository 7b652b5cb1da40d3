"""Start the fast Go SMSC simulator (`infra/smsc-bench`) the way `pipeline.procs.start_simulator`
starts `connectors.smsc_sim`: same flags, same JSONL log, same control channel, real SMPP
over TCP, at a fraction of the CPU per submit_sm (for the benchmark).

The binary is built by `infra/smsc-bench/build.sh` when missing or older than its source
(`make smsc-bench` does the same); that needs the Go toolchain.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipeline.procs import start_simulator
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
    return start_simulator(log_dir, *flags, timeout=timeout,
                           command=[str(build_fast_simulator())])
