"""Start and stop stage workers as child processes (demo, tests, benchmark)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.settings import ROOT, Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same `settings`."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        RASSYLKA_TOPIC_PREFIX=settings.topic_prefix,
        RASSYLKA_PARTITIONS=str(settings.partitions),
        RASSYLKA_CONFIG_DIR=str(settings.config_dir),
        RASSYLKA_STATE_DIR=str(settings.state_dir),
        CLICKHOUSE_URL=settings.clickhouse_url,
        RASSYLKA_PHONE_HASH_KEY=settings.phone_hash_key,
        RASSYLKA_APP_ID=settings.app_id,
        PYTHONUNBUFFERED="1",
    )
    return env


def start_stage(
    settings: Settings,
    args: list[str],
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Run `rassylka <args>` as a child process with `settings`; output goes to `log_path`."""
    env = settings_env(settings)
    env.update(extra_env or {})
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """Stop a child cleanly (SIGTERM), killing it if it does not exit within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child: no clean-up, no flush — what a crash looks like."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def with_prefix(settings: Settings, prefix: str, app_id: str) -> Settings:
    """`settings` moved to its own topic namespace and consumer groups."""
    return replace(settings, topic_prefix=prefix, app_id=app_id)
