"""Insert throughput of the analytics writer: 200k `messages` rows into ClickHouse.

    .venv/bin/python bench/clickhouse_insert.py [--rows 200000] [--batch 200000] [--url URL]

Without --url it uses a fresh embedded chDB in a temporary folder. Prints rows/s for both
ways the sink turns encoded outcomes into stored rows: one by one (fastavro decode and
`message_row`, tuples inserted in the driver's Native format) and in bulk
(`OutcomeColumns` decodes and maps a batch column by column, inserted in Arrow format).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.clickhouse import connect, migrate  # noqa: E402
from pipeline import avro  # noqa: E402
from pipeline.analytics.rows import MESSAGE_COLUMNS, OutcomeColumns, message_row  # noqa: E402
from pipeline.analytics.sink import decode_registry  # noqa: E402
from pipeline.analytics.writer import BatchWriter, batch_token  # noqa: E402

START_MS = 1_709_280_000_000  # 2024-03-01
KEY = "bench-key"


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


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    began = time.perf_counter()
    return fn(), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200_000, help="rows per insert")
    parser.add_argument("--url", default=None, help="ClickHouse URL (default: temp chDB)")
    args = parser.parse_args()

    scratch = None if args.url else tempfile.mkdtemp(prefix="rassylka-bench-")
    url = args.url or f"chdb://{scratch}"
    client = connect(url)
    databases = [f"bench_{uuid.uuid4().hex[:8]}" for _ in ("tuples", "arrow")]
    for database in databases:
        migrate(client, database)
    contract = avro.registry().contract("send_outcome")
    bulk = OutcomeColumns.for_schemas(contract.schema, contract.schema)
    assert bulk is not None
    encoded = [avro.encode("send_outcome", outcome(n)) for n in range(args.rows)]
    chunks = [encoded[start:start + args.batch] for start in range(0, args.rows, args.batch)]

    def insert(batches: list, database: str) -> None:
        writer = BatchWriter(client, "messages", MESSAGE_COLUMNS, database)
        for i, rows in enumerate(batches):
            writer.insert(rows, batch_token({("bench", i): (0, len(rows) - 1)}))

    registry = decode_registry()  # as the sink decodes one by one
    tuples, decode_map = timed(lambda: [
        [message_row(avro.decode("send_outcome", value, registry), KEY) for value in chunk]
        for chunk in chunks])
    _, insert_tuples = timed(lambda: insert(tuples, databases[0]))  # type: ignore[arg-type]
    blocks, bulk_map = timed(lambda: [bulk.messages(chunk, avro.HEADER_LEN, KEY)[0]
                                      for chunk in chunks])
    _, insert_arrow = timed(lambda: insert(blocks, databases[1]))  # type: ignore[arg-type]

    stored = [client.command(f"SELECT count() FROM {database}.messages FINAL")
              for database in databases]
    for database in databases:
        client.command(f"DROP DATABASE {database}")
    print(f"ClickHouse: {client!r}")
    print(f"rows: {args.rows:,} in inserts of {args.batch:,}; stored {stored[0]:,} one by one, "
          f"{stored[1]:,} in bulk")
    for label, seconds in (("one by one: decode + map", decode_map),
                           ("           insert (Native)", insert_tuples),
                           ("           together", decode_map + insert_tuples),
                           ("in bulk:   decode + map", bulk_map),
                           ("           insert (Arrow)", insert_arrow),
                           ("           together", bulk_map + insert_arrow)):
        print(f"{label:27s} {seconds:6.2f}s  {args.rows / seconds:>12,.0f} rows/s")
    client.close()
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
