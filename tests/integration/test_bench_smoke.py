"""`make bench` on a small load: every section runs and reports what the README quotes.

The figures themselves are measured by `make bench`, never asserted here; this only keeps
the benchmark working (a benchmark that breaks silently reports nothing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from confluent_kafka.admin import AdminClient
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
                     kannel=True, flood=True, results=results)
    assert code == 0
    r = json.loads(results.read_text())
    assert r["throughput"]["reached"] == 600 and len(r["throughput"]["runs"]) == 2
    for name in ("router", "sender", "broker", "simulator"):
        assert r["cpu_us_per_event"][name] > 0, name
    assert sorted(r["latency_ms"]) == ["100", "50"]
    assert all(lat["measured"] == lat["offered"] for lat in r["latency_ms"].values())
    # each rate runs as many times as the throughput: the percentiles are their medians
    assert all(len(lat["p99_runs"]) == 2 and lat["offered"] == 2 * int(rate)
               for rate, lat in r["latency_ms"].items())
    assert r["kannel"]["reached"] == 300 and r["kannel"]["duplicates"] == 0
    assert r["kannel"]["ratio_throughput"] > 0 and r["kannel"]["ratio_cpu"] > 0
    assert r["faust_floor"]["events"] >= 600
    so = r["scale_out"]
    assert (so["submitted"], so["lost"], so["doubled"]) == (300, 0, 0)
    for stage in ("router", "sender"):
        members = so[f"{stage}_partitions"]
        assert len(members) == 2 and all(members), (stage, members)
    fl = r["latency_under_flood_ms"]
    assert fl["measured"] == fl["offered"] == 2 * 100 and len(fl["p99_runs"]) == 2
    assert fl["saturated"] and fl["marketing_per_s"] > 0  # the flood was there all along
    assert r["state"]["consent"] == 1_000 and r["state"]["ledger"] == 1_000
    assert r["sender_restart_s"] > 0
    text = console.export_text()
    assert "Rassylka ÷ Kannel" in text and "scale-out" in text and "saturates the route" in text


def test_the_sink_bench_stores_every_row_and_leaves_no_topic_behind(kafka_bootstrap: str) -> None:
    """Every run of `bench/sink_throughput.py` used to leave its topics on the broker:
    a day of `make bench` added thousands of partitions and slowed every later run."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sink_throughput.py"), "--records", "20000"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "stored 20,000 rows" in run.stdout
    prefix = re.search(r" to (bench\w+\.)", run.stdout)
    assert prefix is not None, run.stdout
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    left = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix.group(1))]
    assert left == []
