"""`make demo` end to end: the funnel report in ClickHouse equals the simulation's ground truth,
for the demo's requests and for its campaign (plan, test, decision, rollout)."""

from __future__ import annotations

import subprocess
import sys

from pipeline.procs import settings_env
from pipeline.settings import ROOT, Settings


def test_demo_report_equals_ground_truth(settings: Settings, postgres: object,
                                        connect_url: str) -> None:
    env = settings_env(settings) | {"CONNECT_URL": connect_url}
    for name in ("RASSYLKA_TOPIC_PREFIX", "RASSYLKA_APP_ID", "CLICKHOUSE_URL", "RASSYLKA_CONFIG_DIR"):
        env.pop(name, None)  # the demo picks its own namespace and a fresh embedded ClickHouse
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    truth = out[out.index("Ground truth of the simulation"):]
    for figure in ("sent", "delivered", "clicked", "converted", "revenue", "cost"):
        line = next(line for line in truth.splitlines() if line.startswith(f"│ {figure}"))
        assert "✓" in line, line
    assert "suppressed: opted_out" in out
    for reason in ("undecodable", "unknown_customer", "invalid_event"):
        assert reason in out
    # Three doors (Kafka, the HTTP API, the database outbox), one path: each door's events
    # became requests and submitted SMS.
    doors = out[out.index("Three doors, one path"):]
    for door in ("Kafka (direct)", "HTTP API", "database outbox"):
        line = next(line for line in doors.splitlines() if line.startswith(f"│ {door}"))
        events, requests, submitted = (int(c.strip()) for c in line.split("│")[2:5])
        assert events > 0 and requests > 0 and submitted > 0, line
    assert "outbox door skipped" not in out
    # The campaign: its plan, the decision for the variant customers prefer, the rollout,
    # and its funnel by phase and variant in ClickHouse equal to the ground truth.
    assert "$ rassylka campaign plan demo_sale" in out
    assert "3,000 in the audience" in out, "the plan counts both segments' customers"
    assert "Decision: rollout → b" in out
    assert "campaign demo_sale done" in out
    funnel = out[out.index("Campaign demo_sale by phase and variant (ClickHouse)"):]
    rows = [line for line in funnel.splitlines()
            if line.startswith(("│ test", "│ holdout", "│ rollout"))]
    cells = [[cell.strip() for cell in row.split("│")[1:3]] for row in rows]
    assert cells == [["test", "a"], ["test", "b"], ["holdout", "—"], ["rollout", "b"]], rows
    for row in rows:
        assert row.count("✓") == 7 and "✗" not in row, row
