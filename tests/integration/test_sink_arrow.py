"""The sink's bulk path on a real embedded ClickHouse (chDB) and the real broker.

Rows sent in Arrow format (`ArrowRows`) must be stored exactly as the same rows sent as
tuples (the driver's Native format), dedup tokens included; and a sink fed outcomes that
are regular, broken, redelivered or out of the usual range stores each once, as the
per-record path maps it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stages import stage, wait_for
from test_sink import PHONE, START_MS, one, outcome, query, wait_stored

from connectors import clickhouse
from connectors.clickhouse import ArrowRows, Client, migrate
from pipeline import avro, kafka_io, topics
from pipeline.analytics.rows import MESSAGE_COLUMNS, MESSAGE_SCHEMA, message_row, to_row
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

KEY = "test-key"
SELECT = "SELECT {columns} FROM {{db}}.messages ORDER BY message_id".format(columns=", ".join(
    f"toUnixTimestamp64Milli({c}) AS {c}" if c in ("event_time", "decided_at") else c
    for c in MESSAGE_COLUMNS))  # the row tuple's columns, times as epoch ms


@pytest.fixture(scope="module")
def client(chdb_client: Client) -> Client:
    return chdb_client


@pytest.fixture
def dbs(client: Client) -> Iterator[tuple[str, str]]:
    names = (f"t_arrow_{uuid.uuid4().hex[:10]}", f"t_native_{uuid.uuid4().hex[:10]}")
    for name in names:
        migrate(client, name)
    yield names
    for name in names:
        client.command(f"DROP DATABASE IF EXISTS {name}")


def rows() -> list[tuple[Any, ...]]:
    records = [
        outcome(1),
        outcome(2, reason="opted_out", campaign_id=None, region=None, phone=None,
                config_version="v3@0123abcd"),
        outcome(3, customer_id="клиент 🎉", cost=-0.0, attempts=0, segments=65_535),
        outcome(4, event_occurred_at_ms=0, decided_at_ms=4_102_444_799_999),
        outcome(5, decided_at_ms=START_MS + 86_400_000 * 40),  # another month: another part
    ]
    return [message_row(r, KEY) for r in records]


def test_arrow_rows_are_stored_as_native_rows_are(client: Client, dbs: tuple[str, str]) -> None:
    arrow_db, native_db = dbs
    expected = rows()
    block = ArrowRows(MESSAGE_SCHEMA, [expected[:2]])
    block.extend(ArrowRows(MESSAGE_SCHEMA, [expected[2:]]).to_arrow())
    client.insert("messages", block, MESSAGE_COLUMNS, database=arrow_db, token="t1")
    client.insert("messages", expected, MESSAGE_COLUMNS, database=native_db, token="t1")
    stored = client.rows(SELECT.format(db=arrow_db))
    assert stored == client.rows(SELECT.format(db=native_db))
    assert stored == sorted(expected, key=lambda row: row[1])
    client.insert("messages", block, MESSAGE_COLUMNS, database=arrow_db, token="t1")  # a retry
    assert client.command(f"SELECT count() FROM {arrow_db}.messages") == 5


def test_a_row_arrow_cannot_hold_is_refused(client: Client, dbs: tuple[str, str]) -> None:
    bad = ArrowRows(MESSAGE_SCHEMA, [[message_row(outcome(1, segments=70_000), KEY)]])
    with pytest.raises(clickhouse.ClickHouseRejected):
        client.insert("messages", bad, MESSAGE_COLUMNS, database=dbs[0], token="t")


def test_the_sink_stores_bulk_and_one_by_one_outcomes_once(ns: Settings, tmp_path: Path) -> None:
    regular = [outcome(n) for n in range(3_000)]
    odd = [
        outcome(3_000, reason="duplicate", detail="redelivered"),  # → redeliveries
        outcome(3_001, decided_at_ms=5_000_000_000_000),  # past 2100: one by one
        outcome(3_002, phone="8 (916) 123-45-67", customer_id="клиент"),
        outcome(3_003, phone=PHONE, gateway_message_ids=[f"g{i}" for i in range(80)]),
    ]
    broken = avro.encode("send_outcome", outcome(3_004))[:25]
    published = regular[:1_500] + odd + regular[1_500:]
    kafka_io.publish(ns, topics.OUTCOMES,
                     ((r["request_id"], r) for r in published), "send_outcome")
    kafka_io.publish(ns, topics.OUTCOMES, [(b"broken", broken)])
    with stage(ns, ["sink"], tmp_path) as proc:
        wait_stored(ns, proc, len(published) + 1)
        letters = wait_for(ns, topics.DEAD_LETTERS, 1, timeout=30)
        proc.terminate()
        proc.wait(30)
    assert [m.record["key"] for m in letters if m.record] == [b"broken"]
    messages = [r for r in published if r["reason"] != "duplicate"]
    expected = sorted((to_row("send_outcome", r, ns.phone_hash_key)[1] for r in messages),
                      key=lambda row: row[1])
    stored = query(ns, SELECT.format(db="rassylka"))
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected, strict=True):
        assert list(got.values()) == list(want), (got, want)
    assert one(ns, "SELECT count() AS n FROM rassylka.redeliveries") == {"n": 1}
