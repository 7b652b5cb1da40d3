"""Throughput of the analytics sink: N outcome records in Kafka → rows stored in ClickHouse.

    .venv/bin/python bench/sink_throughput.py [--records 200000] [--workers 1]
        [--batch-rows N] [--url URL]

Publishes N `send_outcome` records to a fresh topic namespace on the local broker
(KAFKA_BOOTSTRAP, default 127.0.0.1:19092; start it with `infra/kafka/kafka.sh up`), then
starts `rassylka sink` worker(s) as child processes and times them draining the topic:
from the first committed batch to the last but one (steady state: start-up excluded, and
the last batch too, which is stored when its oldest record is a second old, the sink's
`max_age_s`, not when it is full) and from process start to the last commit (wall
clock). Then it stops the sink, checks through `rassylka analytics query` that exactly N
rows were stored, and deletes the run's topics. Without --batch-rows the sink runs with
its own default batch size, as deployed.

Progress is read from the sink group's committed offsets with one consumer kept open: a
fresh `progress()` per poll costs ~40 ms of CPU, which this 2-core machine's sink would
feel.

Without --url each run uses a fresh embedded chDB in a temporary folder; chDB allows one
process per data folder, so --workers > 1 needs a ClickHouse server (--url http://...).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from clickhouse_insert import outcome  # noqa: E402

from pipeline import avro, kafka_io, topics  # noqa: E402
from pipeline.procs import settings_env, start_stage, stop  # noqa: E402
from pipeline.settings import Settings  # noqa: E402


def steady_rate(commits: list[tuple[float, int]]) -> float:
    """Rows per second from the first commit seen to the last but one: neither the
    start-up nor the final, partial batch (flushed by age) counts. With fewer than three
    commits there is no such span, and the rate runs to the last one."""
    (t0, d0), (t1, d1) = commits[0], commits[-2] if len(commits) > 2 else commits[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")


def publish(settings: Settings, count: int) -> float:
    """Publish `count` encoded outcomes as fast as the broker takes them; returns seconds."""
    encoded = [avro.encode("send_outcome", outcome(n)) for n in range(count)]
    prod = kafka_io.producer(settings, **{"linger.ms": 50, "batch.size": 1_000_000,
                                          "queue.buffering.max.messages": 500_000})
    topic = settings.topic(topics.OUTCOMES)
    t0 = time.perf_counter()
    for n, value in enumerate(encoded):
        while True:
            try:
                prod.produce(topic, key=f"{n:032x}".encode(), value=value)
                break
            except BufferError:
                prod.poll(0.05)
    if prod.flush(60):
        raise RuntimeError("records left undelivered")
    return time.perf_counter() - t0


class Committed:
    """Offsets the sink group has committed on the outcomes topic, summed over partitions."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                                  "group.id": f"{settings.app_id}-sink",
                                  "enable.auto.commit": False})
        self.partitions = [TopicPartition(settings.topic(topics.OUTCOMES), p)
                           for p in range(settings.partitions)]

    def __call__(self) -> int:
        return sum(max(tp.offset, 0) for tp in self.consumer.committed(self.partitions, 10))

    def close(self) -> None:
        self.consumer.close()


def query(settings: Settings, sql: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "analytics", "query", sql, "--format", "json"],
        cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=120,
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=None,
                        help="rows per batch (default: the sink's own)")
    parser.add_argument("--url", default=None, help="ClickHouse URL (default: temp chDB)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.workers > 1 and not args.url:
        parser.error("--workers > 1 needs a ClickHouse server (--url): chDB is one process")

    scratch = Path(tempfile.mkdtemp(prefix="rassylka-sink-bench-"))
    tag = uuid.uuid4().hex[:8]
    settings = replace(
        Settings.from_env(),
        topic_prefix=f"bench{tag}.",
        app_id=f"bench{tag}",
        partitions=args.partitions,
        clickhouse_url=args.url or f"chdb://{scratch / 'clickhouse'}",
        state_dir=scratch / "state",
    )
    try:
        topics.create_topics(settings)
        seconds = publish(settings, args.records)
        print(f"published {args.records:,} outcomes in {seconds:.1f}s "
              f"({args.records / seconds:,.0f}/s) to {settings.topic(topics.OUTCOMES)}")

        extra = ["--stats-interval", "5"]
        if args.batch_rows:
            extra += ["--batch-rows", str(args.batch_rows)]
        committed = Committed(settings)
        started = time.perf_counter()
        procs = [start_stage(settings, ["sink", *extra], scratch / f"sink-{i}.log")
                 for i in range(args.workers)]
        commits: list[tuple[float, int]] = []  # (when first seen, rows committed) per commit
        done, end = 0, args.records
        try:
            while time.perf_counter() - started < args.timeout:
                done = committed()
                now = time.perf_counter()
                if done and (not commits or done > commits[-1][1]):
                    commits.append((now, done))
                if done >= end:
                    break
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a sink exited early; see {scratch}")
                time.sleep(0.02)
            finished = time.perf_counter()
        finally:
            committed.close()
            for proc in procs:
                stop(proc)
        if done < end or not commits:
            raise SystemExit(f"sink did not drain within {args.timeout}s: {done}/{end}")

        stored = query(settings, "SELECT count() AS n, uniqExact(message_id) AS u "
                                 "FROM rassylka.messages")[0]
        steady = steady_rate(commits)
        wall = args.records / (finished - started)
        result = {
            "records": args.records,
            "workers": args.workers,
            "partitions": args.partitions,
            "batch_rows": args.batch_rows,  # null: the sink's default
            "clickhouse": "chdb" if not args.url else "server",
            "stored_rows": stored["n"],
            "unique_ids": stored["u"],
            "steady_rows_per_s": None if math.isnan(steady) else round(steady),  # one commit: none
            "wall_rows_per_s_incl_startup": round(wall),
            "drain_seconds": round(finished - started, 2),
        }
        print(json.dumps(result, indent=2))
        print(f"sink: {steady:,.0f} rows/s steady, {wall:,.0f} rows/s including start-up "
              f"({finished - started:.1f}s for {args.records:,}); stored {stored['n']:,} rows")
        if stored["n"] != args.records:
            raise SystemExit(f"expected {args.records} rows, stored {stored['n']}")
    finally:
        topics.drop_namespace(settings)  # left behind, every run adds its partitions to the broker
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
