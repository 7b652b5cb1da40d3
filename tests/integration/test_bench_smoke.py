"""`make bench` on a small load: every section runs and reports what the README quotes.

The figures themselves are measured by `make bench`, never asserted here; this only keeps
the benchmark working (a benchmark that breaks silently reports nothing)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from pipeline.bench import run_bench
from pipeline.settings import ROOT, Settings


def test_the_bench_runs_every_section_and_counts_each_event_once(settings: Settings,
                                                                  tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    console = Console(record=True, width=220)
    code = run_bench(replace(settings, config_dir=ROOT / "config"), console, events=300,
                     rate=100, seconds=1, state_numbers=1_000, sink_records=0, restart=True,
                     campaign_profiles=0, runs=2, api=False, scale_out=True, faust=True,
                     kannel=True, results=results)
    assert code == 0
    r = json.loads(results.read_text())
    assert r["throughput"]["reached"] == 600 and len(r["throughput"]["runs"]) == 2
    for name in ("router", "sender", "broker", "simulator"):
        assert r["cpu_us_per_event"][name] > 0, name
    assert sorted(r["latency_ms"]) == ["100", "50"]
    assert all(lat["measured"] == lat["offered"] for lat in r["latency_ms"].values())
    assert r["kannel"]["reached"] == 300 and r["kannel"]["duplicates"] == 0
    assert r["kannel"]["ratio_throughput"] > 0 and r["kannel"]["ratio_cpu"] > 0
    assert r["faust_floor"]["events"] >= 600
    so = r["scale_out"]
    assert (so["submitted"], so["lost"], so["doubled"]) == (300, 0, 0)
    for stage in ("router", "sender"):
        members = so[f"{stage}_partitions"]
        assert len(members) == 2 and all(members), (stage, members)
    assert r["state"]["consent"] == 1_000 and r["state"]["ledger"] == 1_000
    assert r["sender_restart_s"] > 0
    text = console.export_text()
    assert "Rassylka ÷ Kannel" in text and "scale-out" in text
