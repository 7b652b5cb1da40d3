"""The database outbox end to end: PostgreSQL -> Debezium in Kafka Connect -> the outbox stage.

Real PostgreSQL (logical replication), a real Connect worker with Debezium and the real
broker. Rows are written before the connector exists (snapshot), before, during and after a
SIGKILL of the Connect worker, and across a SIGKILL of the stage; each must become exactly
one Avro event. Each test has its own database, replication slot, connector and topics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from stages import kill, read_raw, settle, stage, topics

from pipeline import avro, kafka_io, outbox
from pipeline.outbox import Database
from pipeline.settings import ROOT, Settings

CONNECT = ROOT / "infra" / "connect" / "connect.sh"
SQL = ROOT / "infra" / "postgres"


@pytest.fixture
def erp(ns: Settings, postgres: Database) -> Iterator[Database]:
    """A database of the test's own with the outbox DDL and the example orders table."""
    db = replace(postgres, database=ns.app_id)
    postgres.sql(f"CREATE DATABASE {db.database}", database="postgres", atomic=False)
    db.sql((SQL / "outbox.sql").read_text())
    db.sql((SQL / "orders_example.sql").read_text())
    yield db
    postgres.sql(f"DROP DATABASE IF EXISTS {db.database} WITH (FORCE)", database="postgres",
                 atomic=False)


@pytest.fixture
def connector(ns: Settings, erp: Database, connect_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The test's Debezium connector (created by the test), deleted with its slot afterwards."""
    name = outbox.slot_name(ns)
    yield name, outbox.connector_config(ns, erp, name)
    outbox.delete_connector(name, connect_url)
    outbox.drop_slot(erp, name)


def insert_rows(db: Database, tag: str, count: int, pause_s: float = 0.0) -> None:
    """`count` order_status_changed outbox rows, each committed on its own."""
    db.sql(f"""
        DO $$ BEGIN
          FOR i IN 1..{count} LOOP
            INSERT INTO outbox (aggregate_type, aggregate_id, type, payload)
            VALUES ('order', '{tag}-' || i, 'order_status_changed', jsonb_build_object(
              'customer_id', 'cust-' || (i % 7), 'order_id', '{tag}-' || i, 'status', 'paid',
              'attributes', jsonb_build_object('batch', '{tag}')));
            COMMIT;
            PERFORM pg_sleep({pause_s});
          END LOOP;
        END $$;""", atomic=False)


def connect_pid() -> int:
    done = subprocess.run([str(CONNECT), "pid"], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_each_outbox_row_becomes_one_event_across_sigkills(
        ns: Settings, erp: Database, connector: tuple[str, dict[str, str]], connect_url: str,
        tmp_path: Path) -> None:
    if os.environ.get("CONNECT_URL"):
        pytest.skip("an external Connect worker (CONNECT_URL): this test kills the local one")
    started = time.monotonic()
    name, config = connector
    # Before the connector exists: picked up by its snapshot. Three rows per order (trigger).
    assert outbox.insert_sample_orders(erp, [f"cust-{n}" for n in range(5)], prefix="S-") == 15
    outbox.create_connector(name, config, connect_url)
    bad = erp.sql("INSERT INTO outbox (aggregate_type, aggregate_id, type, payload) VALUES "
                  "('order', 'X-1', 'no_such_event', '{\"customer_id\": \"c\"}') RETURNING id")
    bad_id = bad.split()[0]
    logs = tmp_path / "logs"
    with stage(ns, ["outbox", "--worker-id", "0"], logs) as first:
        insert_rows(erp, "before", 30)
        writer = threading.Thread(target=insert_rows, args=(erp, "during", 150, 0.04))
        writer.start()
        time.sleep(2.0)
        os.kill(connect_pid(), signal.SIGKILL)  # Debezium re-sends what it had not committed
        time.sleep(1.0)
        kill(first)  # the stage dies too, mid-transaction or between two
    with stage(ns, ["outbox", "--worker-id", "0"], logs):
        subprocess.run([str(CONNECT), "up"], check=True, timeout=180,
                       env={**os.environ, "KAFKA_BOOTSTRAP": ns.kafka_bootstrap})
        outbox.create_connector(name, config, connect_url, timeout=120)  # waits for its task
        writer.join(60)
        assert not writer.is_alive()
        insert_rows(erp, "after", 30)
        rows = set(erp.sql("SELECT id FROM outbox").split())
        wanted = rows - {bad_id}
        assert len(wanted) == 15 + 30 + 150 + 30

        # Debezium's repeats are not left to chance: copies of ten change records, again,
        # each on its partition (Connect's partitioner puts every copy of a row on one).
        raw = read_raw(ns, ns.topic(topics.OUTBOX_CHANGES), lambda m: len(m) >= 10, 30)
        again = kafka_io.producer(ns)
        for m in raw[:10]:
            again.produce(m.topic, key=m.key, value=m.value, partition=m.partition)
        assert again.flush(30) == 0

        def covered(msgs: list[kafka_io.Received]) -> bool:
            return {m.record["event_id"] for m in msgs if m.record} >= wanted

        kafka_io.read_topic(ns, topics.ORDER_STATUS, covered, timeout=120)
        events = settle(ns, topics.ORDER_STATUS, idle=5.0, timeout=60)

    ids = Counter(avro.decode("order_status_changed", m.value or b"")["event_id"] for m in events)
    assert set(ids) == wanted, (f"missing {len(wanted - set(ids))}, "
                                f"unexpected {len(set(ids) - wanted)}")
    repeated = {i: n for i, n in ids.items() if n > 1}
    assert not repeated, f"{len(repeated)} rows became more than one event: {list(repeated)[:5]}"
    changes = read_raw(ns, ns.topic(topics.OUTBOX_CHANGES), lambda m: False, 5)
    copies = Counter(json.loads(m.value)["after"]["id"] for m in changes if m.value)
    print(f"{len(rows)} rows, {len(changes)} change records ({sum(n > 1 for n in copies.values())} "
          f"rows came more than once), {len(events)} events, "
          f"{time.monotonic() - started:.0f} s")

    letters = settle(ns, topics.DEAD_LETTERS, idle=2.0, timeout=20)
    assert [(m.record["reason"], m.record["event_id"]) for m in letters if m.record] == \
        [("unknown_event_type", bad_id)]


def change(after: dict[str, object] | None, op: str = "c") -> bytes:
    return json.dumps({"before": None, "after": after, "op": op}).encode()


ROW = {"id": "r-1", "aggregate_type": "order", "aggregate_id": "A-1",
       "type": "order_status_changed", "created_at": "2026-12-01T10:00:00.5Z",
       "payload": json.dumps({"customer_id": "c-1", "order_id": "A-1", "status": "paid"})}


def test_a_row_becomes_its_contracts_event_and_bad_rows_say_why() -> None:
    """The pure part, without a broker: what a row becomes, and each reason for a dead letter."""
    row = outbox.parse_change(change(ROW))
    assert isinstance(row, outbox.OutboxRow)
    event = outbox.to_event(row)
    assert (event.topic, event.key, event.event_id) == (topics.ORDER_STATUS, b"c-1", "r-1")
    record = avro.decode("order_status_changed", event.value)
    assert (record["occurred_at_ms"], record["source"]) == (1796119200500, "outbox")
    assert outbox.parse_change(change(ROW, op="u")) == "op:u"
    assert outbox.parse_change(None) == "tombstone"
    cases = {
        b"not json": "undecodable",
        b'{"no": "op"}': "undecodable",
        change({**ROW, "type": "nope"}): "unknown_event_type",
        change({**ROW, "payload": '{"order_id": "A-1"}'}): "invalid_payload",
        change({**ROW, "payload": '{"customer_id": "c", "status": "paid"}'}): "invalid_payload",
        change({k: v for k, v in ROW.items() if k != "type"}): "invalid_row",
    }
    for value, reason in cases.items():
        with pytest.raises(outbox.BadRow) as caught:
            row = outbox.parse_change(value)
            assert isinstance(row, outbox.OutboxRow)
            outbox.to_event(row)
        assert caught.value.reason == reason, value
