"""`make demo` end to end: the funnel report in ClickHouse equals the simulation's ground truth."""

from __future__ import annotations

import subprocess
import sys

from pipeline.procs import settings_env
from pipeline.settings import ROOT, Settings


def test_demo_report_equals_ground_truth(settings: Settings) -> None:
    env = settings_env(settings)
    for name in ("RASSYLKA_TOPIC_PREFIX", "RASSYLKA_APP_ID", "CLICKHOUSE_URL", "RASSYLKA_CONFIG_DIR"):
        env.pop(name, None)  # the demo picks its own namespace and a fresh embedded ClickHouse
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    truth = out[out.index("Ground truth of the simulation"):]
    for figure in ("sent", "delivered", "clicked", "converted", "revenue", "cost"):
        line = next(line for line in truth.splitlines() if line.startswith(f"│ {figure}"))
        assert "✓" in line, line
    assert "suppressed: opted_out" in out
    for reason in ("undecodable", "unknown_customer", "invalid_event"):
        assert reason in out
