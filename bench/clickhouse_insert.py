"""Insert throughput of the analytics writer: 200k `messages` rows into ClickHouse.

    .venv/bin/python bench/clickhouse_insert.py [--rows 200000] [--batch 200000] [--url URL]

Without --url it uses a fresh embedded chDB in a temporary folder. Prints rows/s for
mapping records to rows (pure Python) and for the inserts themselves (target: ≥100k/s).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.clickhouse import connect, migrate  # noqa: E402
from pipeline.analytics.rows import MESSAGE_COLUMNS, message_row  # noqa: E402
from pipeline.analytics.writer import BatchWriter, batch_token  # noqa: E402

START_MS = 1_709_280_000_000  # 2024-03-01


def outcome(n: int) -> dict:
    return {
        "request_id": f"{n:032x}",
        "message_id": f"{n:032x}",
        "status": "submitted" if n % 10 else "suppressed",
        "reason": None if n % 10 else "opted_out",
        "lane": "marketing" if n % 3 else "transactional",
        "rule_id": f"rule_{n % 20}",
        "template_id": f"tpl_{n % 20}",
        "variant": "ab"[n % 2],
        "campaign_id": f"camp_{n % 5}" if n % 3 else None,
        "customer_id": f"cust_{n}",
        "phone": f"+7916{n % 10_000_000:07d}",
        "region": "RU",
        "operator": ("MTS", "MegaFon", "Beeline", "Tele2")[n % 4],
        "gateway": "smpp-main",
        "segments": 1 + n % 2,
        "encoding": "UCS2",
        "cost": 2.5,
        "event_occurred_at_ms": START_MS + n * 10,
        "decided_at_ms": START_MS + n * 10 + 150,
        "attempts": 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200_000, help="rows per insert")
    parser.add_argument("--url", default=None, help="ClickHouse URL (default: temp chDB)")
    args = parser.parse_args()

    scratch = None if args.url else tempfile.mkdtemp(prefix="rassylka-bench-")
    url = args.url or f"chdb://{scratch}"
    client = connect(url)
    database = f"bench_{uuid.uuid4().hex[:8]}"
    migrate(client, database)
    writer = BatchWriter(client, "messages", MESSAGE_COLUMNS, database)

    records = [outcome(n) for n in range(args.rows)]
    t0 = time.perf_counter()
    rows = [message_row(r, "bench-key") for r in records]
    mapped = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        writer.insert(chunk, batch_token({("bench", 0): (start, start + len(chunk) - 1)}))
    inserted = time.perf_counter() - t0

    stored = client.command(f"SELECT count() FROM {database}.messages")
    client.command(f"DROP DATABASE {database}")
    print(f"ClickHouse: {client!r}")
    print(f"rows: {args.rows:,} in inserts of {args.batch:,}; stored {stored:,}")
    print(f"map records → rows: {mapped:6.2f}s  {args.rows / mapped:>12,.0f} rows/s")
    print(f"insert:             {inserted:6.2f}s  {args.rows / inserted:>12,.0f} rows/s")
    total = mapped + inserted
    print(f"map + insert:       {total:6.2f}s  {args.rows / total:>12,.0f} rows/s")
    client.close()
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
