"""The Kannel side of the benchmark: Debian's Kannel against our SMSC simulator.

Needs `bearerbox` and `smsbox` (`make kannel` installs Debian's kannel package; `make test`
runs it first). Without them these tests fail, saying so: they never skip.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from connectors.smsc_sim import read_submit_log
from pipeline import bench_kannel
from pipeline.bench_kannel import KannelError, box_binary, kannel_bench
from pipeline.procs import start_simulator, stop


def _require_kannel() -> None:
    for name in ("bearerbox", "smsbox"):
        try:
            box_binary(name)
        except KannelError as exc:
            pytest.fail(str(exc))


def test_kannel_passes_every_message_to_the_simulator_exactly_once(tmp_path: Path) -> None:
    _require_kannel()
    sim_log = tmp_path / "submits.jsonl"
    sim, port, _control = start_simulator(tmp_path, "--log", str(sim_log), "--seed", "1")
    try:
        r = kannel_bench(
            tmp_path / "kannel",
            port,
            messages=300,
            concurrency=16,
            sim_log=sim_log,
            sim_pid=sim.pid,
        )
    finally:
        stop(sim)
    submits = list(read_submit_log(sim_log))
    assert {s["status"] for s in submits} == {0}, Counter(s["status"] for s in submits)
    per_destination = Counter(s["destination"] for s in submits)
    assert set(per_destination) == {f"7926{i:07d}" for i in range(300)}
    twice = {d: n for d, n in per_destination.items() if n > 1}
    assert not twice, f"submitted more than once: {twice}"
    assert {s["system_id"] for s in submits} == {"kannel"}
    text = bytes.fromhex(submits[0]["short_message"]).decode("utf-16-be")
    assert text.startswith("Напоминаем") and submits[0]["data_coding"] == 8

    assert r["messages"] == r["reached"] == 300 and r["duplicates"] == 0
    figures = {
        "per_s": r["per_s"],
        "elapsed_s": r["elapsed_s"],
        **{f"cpu_ms_per_message.{k}": v for k, v in r["cpu_ms_per_message"].items()},
    }
    bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v > 0)}
    assert not bad, f"not positive and finite: {bad}"
    assert set(r["cpu_ms_per_message"]) == {"bearerbox", "smsbox", "simulator", "total"}
    assert r["version"]["kannel"].startswith("1.")

    # Stopped: no box of this run outlives it.
    conf = r["config"]
    left = subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in left if int(pid) != os.getpid()], f"Kannel still running: {left}"


def test_a_missing_kannel_says_to_run_make_kannel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_kannel.shutil, "which", lambda _name: None)
    monkeypatch.setattr(bench_kannel.os, "access", lambda _path, _mode: False)
    with pytest.raises(KannelError, match="bearerbox not found: run `make kannel`"):
        box_binary("bearerbox")
