"""Errors at the command line are one or two lines: what failed, where, what to do.

Each test runs `rassylka` as a process, the way people and `pipeline.procs` do, and
checks the whole output, the exit code and the time it takes. No broker is needed: the
point is what happens when there is none, or when the configuration or ClickHouse is
not usable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.settings import ROOT

DEAD = "127.0.0.1:1"  # nothing listens on port 1


def rassylka(*args: str, timeout: float = 40, **env: str) -> tuple[int, list[str], float]:
    """(exit code, non-empty output lines, seconds) of `rassylka <args>`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RASSYLKA_", "KAFKA_"))}
    full.update({"KAFKA_BOOTSTRAP": DEAD, "CLICKHOUSE_URL": "", **env})
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=timeout)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    return run.returncode, lines, time.monotonic() - started


@pytest.mark.parametrize("command", [["topics", "create"], ["router"], ["sender"], ["sink"],
                                     ["attribution"], ["redirect", "--dev", "--port", "0"]])
def test_broker_unreachable_is_one_short_message(command: list[str], tmp_path: Path) -> None:
    code, lines, took = rassylka(*command, RASSYLKA_KAFKA_WAIT_S="2",
                                 RASSYLKA_STATE_DIR=str(tmp_path / "state"),
                                 CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}")
    assert code != 0
    assert len(lines) <= 3, lines
    assert any(DEAD in line and "make kafka-up" in line for line in lines), lines
    assert "Traceback" not in "\n".join(lines)
    assert took < 20


def test_broker_unreachable_with_the_default_wait_ends_within_20_s() -> None:
    code, lines, took = rassylka("topics", "create")
    assert code != 0
    assert len(lines) <= 3, lines
    assert any("waiting" in line for line in lines), "says that it is waiting"
    assert f"Kafka is not reachable at {DEAD}" in lines[-1]
    assert took < 20


def test_debug_shows_the_traceback() -> None:
    code, lines, _ = rassylka("--debug", "topics", "create", RASSYLKA_KAFKA_WAIT_S="1")
    assert code != 0
    assert "KafkaUnreachable" in "\n".join(lines)
    assert len(lines) > 3


def test_invalid_rules_at_router_start_name_the_file(fixture_config: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(fixture_config, config)
    rules = config / "rules.yaml"
    rules.write_text(rules.read_text().replace("template: order_paid", "tempalte: order_paid"))
    code, lines, took = rassylka("router", RASSYLKA_CONFIG_DIR=str(config))
    assert code != 0
    assert len(lines) <= 3, lines
    text = "\n".join(lines)
    # the first problem, by line: the rule lost its template (the misspelt key is line 33)
    assert f"{rules}:28: rules[1] (order_paid): needs exactly one of 'template:'" in text
    assert f"rassylka rules validate --config-dir {config}" in text
    assert took < 20


def test_invalid_limits_at_sender_start_name_the_file(fixture_config: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(fixture_config, config)
    (config / "limits.yaml").write_text("allowed_regions: [\n")
    code, lines, _ = rassylka("sender", RASSYLKA_CONFIG_DIR=str(config))
    assert code != 0
    assert len(lines) <= 3, lines
    # the broker is down too: the config error is what to fix (after the broker's wait line)
    assert any(line.startswith(f"error: {config / 'limits.yaml'}") for line in lines), lines


@pytest.mark.parametrize("wait", ["5", "soon"])
def test_a_receipt_wait_that_could_record_a_receipt_twice_is_refused(wait: str) -> None:
    code, lines, took = rassylka("sender", RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S=wait)
    assert code == 1
    assert lines[0] == (f"error: RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S={wait} is not a number of "
                        "seconds of at least 30: a receipt a dead sender had recorded could be "
                        "recorded again before its partitions reach a live one"), lines
    assert "set it to 30 or more" in lines[1] and len(lines) == 2, lines
    assert took < 10, "refused before waiting for the broker"


def test_redirect_without_a_secret_refuses_in_one_line() -> None:
    code, lines, took = rassylka("redirect", "--port", "0")
    assert code != 0
    assert len(lines) == 1, lines
    assert "RASSYLKA_LINK_SECRET" in lines[0]
    assert took < 20


def test_chdb_folder_in_use_by_another_process(tmp_path: Path) -> None:
    folder = tmp_path / "clickhouse"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from connectors.clickhouse import connect\n"
         f"connect('chdb://{folder}').command('SELECT 1')\n"
         "print('ready', flush=True)\n"
         "time.sleep(120)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        for args in (["analytics", "query", "SELECT 1"], ["report"]):
            code, lines, _ = rassylka(*args, CLICKHOUSE_URL=f"chdb://{folder}")
            assert code != 0
            assert len(lines) <= 3, lines
            text = "\n".join(lines)
            assert f"ClickHouse data folder {folder} is in use by another process" in text
            assert f"pid {holder.pid}" in text and "CLICKHOUSE_URL" in text
            assert "Traceback" not in text and "Cannot lock file" not in text
    finally:
        holder.kill()
        holder.wait(10)


def test_report_says_where_it_reads(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RASSYLKA_", "KAFKA_"))}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", "--format", "csv"],
                         cwd=ROOT, env=dict(full, CLICKHOUSE_URL=url), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"reading {url}" in run.stderr
    assert run.stdout.startswith("sent,delivered"), "stdout stays the report"
