"""Process-level parts of `make bench`: the simulator's log, CPU per process, the bare
Faust floor, scale-out.

* `SimLog` follows the SMSC simulator's JSONL log of submit_sm (each bench customer has
  its own number, so a destination says which event a submit belongs to).
* `CpuMeter` reads each process's CPU seconds (user + system) from /proc, so a run can
  say how much CPU the router, the sender, the broker and the simulator spent per event.
* `faust_floor` runs a Faust agent that does nothing but consume the bench's events in
  batches (`take_events`): the cost of Faust's own consumption on this machine, printed
  next to the router's (which left Faust for exactly-once transactions, see README).
* `scale_out` runs two routers and two senders on one set of topics and checks that the
  partitions are spread over them and that every event reached the SMSC exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.settings import ROOT, Settings

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class SimLog:
    """Follows the simulator's JSONL log of submit_sm."""

    path: Path
    offset: int = 0

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]

    @classmethod
    def from_end(cls, path: Path) -> SimLog:
        """Follows `path` from where it ends now (earlier lines are someone else's run)."""
        return cls(path, path.stat().st_size if path.exists() else 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:`port` (the broker), None if unknown."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    marker = "pid="
    at = out.find(marker)
    if at < 0:
        return None
    digits = out[at + len(marker):].split(",", 1)[0]
    return int(digits) if digits.isdigit() else None


class CpuMeter:
    """CPU seconds spent by named groups of processes between `start` and `stop`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: pids for name, pids in groups.items() if pids}
        self._before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        self.spent = {name: after[name] - self._before.get(name, 0.0) for name in after}
        return self.spent

    def per_event_us(self, events: int) -> dict[str, float]:
        """µs of CPU per event for each group (and `total`), from the last start/stop."""
        out = {name: seconds / events * 1e6 for name, seconds in self.spent.items()}
        out["total"] = sum(out.values())
        return out


FAUST_FLOOR = """
import asyncio, json, os, sys, time
import faust
topic_name, count, bootstrap, group, datadir, result = sys.argv[1:7]
count = int(count)
sys.argv[1:] = sys.argv[7:]  # the rest is Faust's own command line
app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                web_enabled=False, consumer_auto_offset_reset="earliest",
                broker_max_poll_records=2000, stream_buffer_maxsize=16384,
                key_serializer="raw", value_serializer="raw",
                worker_redirect_stdouts=False, datadir=datadir)
topic = app.topic(topic_name, key_type=bytes, value_type=bytes)
seen = {"n": 0, "t0": None, "cpu0": None}

@app.agent(topic)
async def floor(stream):
    async for batch in stream.take_events(1000, within=1.0):
        if seen["t0"] is None:
            seen["t0"], seen["cpu0"] = time.monotonic(), time.process_time()
        seen["n"] += len(batch)
        if seen["n"] >= count:
            elapsed = time.monotonic() - seen["t0"]
            cpu = time.process_time() - seen["cpu0"]
            with open(result, "w") as out:
                json.dump({"events": seen["n"], "events_per_s": seen["n"] / elapsed,
                           "cpu_us_per_event": cpu / seen["n"] * 1e6}, out)
            os._exit(0)

app.main()
"""


def faust_floor(settings: Settings, topic: str, count: int, log_dir: Path,
                timeout: float = 300.0) -> dict[str, Any]:
    """A bare Faust agent (aiokafka driver) consuming `count` records of `topic`: events/s
    and CPU µs per event of the consuming process, timed from its first batch."""
    import tempfile
    import uuid

    group = f"{settings.app_id}-faust-floor-{uuid.uuid4().hex[:6]}"
    datadir = tempfile.mkdtemp(prefix="bench-faust-")
    result = log_dir / "faust-floor.json"
    with open(log_dir / "faust-floor.log", "ab") as log:
        subprocess.run([sys.executable, "-c", FAUST_FLOOR, topic, str(count),
                        settings.kafka_bootstrap, group, datadir, str(result), "worker",
                        "--loglevel", "warn"],
                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if not result.exists():
        raise RuntimeError(f"the bare Faust agent gave no result; see {log_dir}/faust-floor.log")
    return json.loads(result.read_text())


def wait_for(condition: Any, timeout: float, every: float = 0.1) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return bool(condition())


def group_spread(settings: Settings, group: str) -> list[list[str]]:
    """The partitions each member of consumer group `group` holds ('topic[p]'), one list per
    member, as the broker reports them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    [future] = admin.describe_consumer_groups([group], request_timeout=15).values()
    described = future.result(timeout=20)
    return sorted(sorted(f"{tp.topic.removeprefix(settings.topic_prefix)}[{tp.partition}]"
                         for tp in member.assignment.topic_partitions)
                  for member in described.members)
