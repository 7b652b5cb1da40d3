"""Helpers for integration tests: run stage workers against the real broker and wait on topics."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import kafka_io, topics
from pipeline.kafka_io import Received
from pipeline.procs import kill, start_stage, stop
from pipeline.settings import Settings


def profiles_read(settings: Settings, timeout: float = 45.0) -> None:
    """Wait until a running router has read every profile published so far."""
    from pipeline.offsets import wait_committed_to_end

    assert wait_committed_to_end(settings, "router", topics.PROFILES, timeout), \
        f"the router did not read the profiles within {timeout} s"


def read_raw(settings: Settings, full_topic: str, until: Callable[[list[Received]], bool],
             timeout: float = 45.0) -> list[Received]:
    """Read a topic by its full name (no catalog prefix)."""
    from dataclasses import replace

    return kafka_io.read_topic(replace(settings, topic_prefix=""), full_topic, until, timeout)


def wait_for(settings: Settings, topic: str, count: int, timeout: float = 45.0) -> list[Received]:
    """Read catalog topic `topic` until it holds at least `count` messages (bounded)."""
    got = kafka_io.read_topic(settings, topic, lambda msgs: len(msgs) >= count, timeout)
    assert len(got) >= count, f"{topic}: expected {count} messages within {timeout}s, got {len(got)}"
    return got


def settle(settings: Settings, topic: str, idle: float = 3.0, timeout: float = 30.0) -> list[Received]:
    """Read everything on `topic` until nothing new arrives for `idle` seconds."""
    return kafka_io.read_topic(settings, topic, None, timeout, idle=idle)


@contextmanager
def stage(settings: Settings, args: list[str], log_dir: Path,
          extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `rassylka <args>` for the duration of the block; its log goes to `log_dir`.

    The log's end is printed (pytest shows it with the failure) when the stage failed or
    the block raised: a test's temporary folder does not outlive a CI run."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # by start time (sorted names keep the order), and unique: two stages started in the
    # same millisecond wrote into one file
    log = log_dir / f"{args[0]}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}.log"
    proc = start_stage(settings, args, log, extra_env)
    failed = False
    try:
        yield proc
    except BaseException:
        failed = True
        raise
    finally:
        if proc.poll() is None:
            stop(proc)
        elif proc.returncode not in (0, -9, -15):
            failed = True
        if failed:
            print(f"--- the end of {log.name} ---")
            print(log.read_text(errors="replace")[-6000:])


__all__ = ["profiles_read", "kill", "read_raw", "settle", "stage", "topics", "wait_for"]
