"""The analytics store on a real embedded ClickHouse (chDB).

chDB hosts one engine per process, so the session shares one client on one temporary
path and every test gets a fresh, migrated database of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from connectors.clickhouse import Client, connect, migrate
from pipeline.analytics import report
from pipeline.analytics.rows import MAPPINGS, to_row
from pipeline.analytics.writer import (
    Batch,
    BatchWriter,
    Offset,
    SinkBuffer,
    write_with_retry,
)
from pipeline.errors import PermanentError, RetryableError

KEY = "test-key"
PHONE = "+79161234567"
DAY1 = dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.UTC)
DAY2 = dt.datetime(2024, 3, 2, 10, 0, tzinfo=dt.UTC)


def ms(moment: dt.datetime, plus_s: int = 0) -> int:
    return int(moment.timestamp() * 1000) + plus_s * 1000


@pytest.fixture(scope="session")
def client(chdb_client: Client) -> Client:
    return chdb_client


@pytest.fixture
def db(client: Client) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    assert migrate(client, name) == ["001_facts", "002_funnel", "003_redeliveries", "004_segments",
                                     "005_campaigns", "006_releases", "007_replies",
                                     "008_replies_across_midnight"]
    yield name
    client.command(f"DROP DATABASE IF EXISTS {name}")


def outcome(n: int, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "request_id": f"m{n}",
        "message_id": f"m{n}",
        "status": "submitted",
        "reason": None,
        "detail": None,
        "lane": "marketing",
        "rule_id": "promo",
        "template_id": "promo_t",
        "variant": "a" if n % 2 else "b",
        "campaign_id": "spring",
        "customer_id": f"c{n}",
        "phone": f"+7916{n:07d}",
        "region": "RU",
        "operator": "MTS",
        "gateway": "smpp-main",
        "gateway_message_ids": [f"g{n}"],
        "segments": 1,
        "encoding": "UCS2",
        "cost": 2.5,
        "event_occurred_at_ms": ms(DAY1),
        "decided_at_ms": ms(DAY1, n),
        "attempts": 1,
    }
    record.update(over)
    return record


def receipt(n: int, state: str = "DELIVRD") -> dict[str, Any]:
    return {
        "message_id": f"m{n}",
        "gateway_message_id": f"g{n}",
        "state": state,
        "error_code": None if state == "DELIVRD" else "001",
        "segment": 1,
        "segments": 1,
        "received_at_ms": ms(DAY1, 60 + n),
        "gateway": "smpp-main",
    }


def click(n: int, i: int = 0) -> dict[str, Any]:
    return {
        "click_id": f"k{n}-{i}",
        "code": f"abc{n}",
        "message_id": f"m{n}",
        "url": "https://shop.example/spring",
        "clicked_at_ms": ms(DAY1, 120 + n + i),
        "user_agent": "Mozilla/5.0",
    }


def conversion(n: int, revenue_minor: int) -> dict[str, Any]:
    return {
        "conversion_id": f"o{n}",
        "order_id": f"o{n}",
        "customer_id": f"c{n}",
        "message_id": f"m{n}",
        "touch": "click",
        "touch_at_ms": ms(DAY1, 120 + n),
        "revenue_minor": revenue_minor,
        "currency": "RUB",
        "converted_at_ms": ms(DAY1, 3600 + n),
        "rule_id": "promo",
        "campaign_id": "spring",
        "variant": "a" if n % 2 else "b",
    }


def writers(client: Client, db: str) -> dict[str, BatchWriter]:
    return {m.table: BatchWriter(client, m.table, m.columns, db) for m in MAPPINGS.values()}


def write(client: Client, db: str, schema: str, records: list[dict[str, Any]], token: str) -> None:
    mapping = MAPPINGS[schema]
    rows = [to_row(schema, r, KEY)[1] for r in records]
    BatchWriter(client, mapping.table, mapping.columns, db).insert(rows, token)


def seed_funnel(client: Client, db: str) -> None:
    """Ten messages m1..m10 on DAY1 (odd → variant a, even → b) plus two suppressed ones;
    m11 on DAY2 for another rule."""
    outcomes = [outcome(n) for n in range(1, 11)]
    outcomes += [
        outcome(20, status="suppressed", reason="opted_out", segments=0, cost=0.0),
        outcome(21, status="rejected", reason="invalid_number", phone=None, cost=0.0),
        outcome(
            11,
            rule_id="order_shipped",
            lane="transactional",
            campaign_id=None,
            decided_at_ms=ms(DAY2),
            variant="a",
        ),
    ]
    write(client, db, "send_outcome", outcomes, "outcomes-1")
    receipts = [receipt(n) for n in range(1, 9)] + [receipt(9, "UNDELIV"), receipt(11)]
    receipts.append({**receipt(1), "state": "ENROUTE"})  # an intermediate state too
    write(client, db, "delivery_receipt", receipts, "receipts-1")
    clicks = [click(1), click(1, 1), click(2), click(3), click(4)]  # m1 clicked twice
    write(client, db, "click", clicks, "clicks-1")
    write(client, db, "conversion", [conversion(1, 150_000), conversion(2, 99_900)], "conv-1")


def test_migrations_are_idempotent(client: Client, db: str) -> None:
    assert migrate(client, db) == []
    tables = {r[0] for r in client.rows(f"SELECT name FROM system.tables WHERE database = '{db}'")}
    assert {
        "messages",
        "receipts",
        "clicks",
        "conversions",
        "inbound",
        "replies",
        "consent_changes",
        "funnel_daily",
        "redeliveries",
        "profiles",
        "orders",
        "schema_migrations",
    } <= tables
    assert client.command(f"SELECT count() FROM {db}.schema_migrations") == 8


def test_funnel_counts_messages_once_each(client: Client, db: str) -> None:
    seed_funnel(client, db)
    rows = report.funnel(client, ["rule_id", "variant"], database=db)
    by_key = {(r["rule_id"], r["variant"]): r for r in rows}
    a, b = by_key[("promo", "a")], by_key[("promo", "b")]
    # variant a: m1 m3 m5 m7 m9 sent; m9 undelivered; m1 m3 clicked; m1 converted
    assert (a["sent"], a["delivered"], a["clicked"], a["converted"]) == (5, 4, 2, 1)
    assert a["revenue"] == 1500.0
    assert a["delivery_rate"] == 0.8 and a["click_rate"] == 0.5 and a["conversion_rate"] == 0.25
    # variant b: m2 m4 m6 m8 m10 sent (+ suppressed m20 and rejected m21 cost nothing)
    assert (b["sent"], b["delivered"], b["clicked"], b["converted"]) == (5, 4, 2, 1)
    assert b["revenue"] == 999.0 and b["cost"] == 12.5
    shipped = by_key[("order_shipped", "a")]
    assert (shipped["sent"], shipped["delivered"], shipped["clicked"]) == (1, 1, 0)
    assert shipped["click_rate"] == 0.0 and shipped["conversion_rate"] == 0.0

    total = report.funnel(client, [], database=db)
    assert len(total) == 1
    assert (total[0]["sent"], total[0]["delivered"], total[0]["clicked"]) == (11, 9, 4)
    assert total[0]["cost"] == 27.5


def test_same_batch_twice_is_stored_once(client: Client, db: str) -> None:
    buffer = SinkBuffer(max_rows=1000, max_age_s=60)
    for offset, n in enumerate(range(1, 101)):
        table, row = to_row("send_outcome", outcome(n), KEY)
        buffer.add(table, row, Offset("sms.outcomes", 0, offset))
    for offset, n in enumerate(range(1, 51)):
        table, row = to_row("delivery_receipt", receipt(n), KEY)
        buffer.add(table, row, Offset("sms.receipts", 2, 1000 + offset))
    batch = buffer.drain()
    replay = Batch(rows=batch.rows, token=batch.token, offsets=batch.offsets)

    assert write_with_retry(writers(client, db), batch) == {
        ("sms.outcomes", 0): 100,
        ("sms.receipts", 2): 1050,
    }
    write_with_retry(writers(client, db), replay)  # crashed before commit, read again

    for table, key, expected in (("messages", "message_id", 100), ("receipts", "message_id", 50)):
        count, unique = client.rows(f"SELECT count(), uniqExact({key}) FROM {db}.{table}")[0]
        assert count == unique == expected


def test_misaligned_replay_is_collapsed_by_final(client: Client, db: str) -> None:
    write(client, db, "send_outcome", [outcome(n) for n in range(1, 11)], "first")
    # after a restart the batch boundaries differ: another token, rows repeat
    write(client, db, "send_outcome", [outcome(n) for n in range(5, 16)], "second")
    assert client.command(f"SELECT count() FROM {db}.messages") == 21
    assert client.command(f"SELECT count() FROM {db}.messages FINAL") == 15
    assert report.funnel(client, [], database=db)[0]["sent"] == 15


def test_phone_numbers_never_stored_in_clear(client: Client, db: str) -> None:
    write(client, db, "send_outcome", [outcome(1, phone=PHONE)], "o")
    write(
        client,
        db,
        "inbound_message",
        [
            {
                "inbound_id": "i1",
                "from_number": PHONE,
                "to": "RASSYLKA",
                "text": f"STOP, this is {PHONE} aka {PHONE[1:]}",
                "received_at_ms": ms(DAY1),
                "gateway": "smpp-main",
            }
        ],
        "i",
    )
    write(
        client,
        db,
        "consent_change",
        [
            {
                "phone": PHONE,
                "scope": "marketing",
                "status": "opt_out",
                "source": "sms_reply",
                "changed_at_ms": ms(DAY1),
                "customer_id": "c1",
                "evidence": f"reply from {PHONE}",
            }
        ],
        "c",
    )
    columns = client.rows(
        f"SELECT table, name FROM system.columns WHERE database = '{db}' AND type LIKE '%String%'"
    )
    assert len(columns) > 20
    digits = PHONE[1:]
    for table, column in columns:
        found = client.command(
            f"SELECT count() FROM {db}.{table} WHERE position(toString({column}), '{digits}') > 0"
        )
        assert found == 0, f"{table}.{column} holds the number in clear"
    assert client.rows(f"SELECT phone_masked FROM {db}.messages") == [("+7916*****67",)]
    assert client.command(f"SELECT text FROM {db}.inbound") == (
        "STOP, this is +7916*****67 aka 7916*****67"
    )


def test_report_filters_and_period(client: Client, db: str) -> None:
    seed_funnel(client, db)
    only_a = report.funnel(client, ["variant"], {"rule": "promo", "variant": ["a"]}, database=db)
    assert [(r["variant"], r["sent"]) for r in only_a] == [("a", 5)]

    by_day = report.funnel(client, ["day"], database=db)
    assert [(r["day"], r["sent"]) for r in by_day] == [
        (dt.date(2024, 3, 1), 10),
        (dt.date(2024, 3, 2), 1),
    ]
    day2 = report.funnel(
        client, ["rule_id"], since="2024-03-02", until=dt.date(2024, 3, 2), database=db
    )
    assert [(r["rule_id"], r["sent"]) for r in day2] == [("order_shipped", 1)]
    nothing = report.funnel(client, ["rule_id"], {"campaign_id": "none"}, database=db)
    assert nothing == []
    spring = report.funnel(
        client,
        ["campaign_id", "operator", "region", "lane"],
        {"campaign": "spring"},
        until="2024-03-01",
        database=db,
    )
    assert len(spring) == 1 and spring[0]["sent"] == 10 and spring[0]["operator"] == "MTS"

    with pytest.raises(ValueError):
        report.funnel(client, ["phone_hash"], database=db)
    with pytest.raises(ValueError):
        report.funnel(client, [], {"status": "submitted"}, database=db)


def test_csv_json_and_table_outputs(client: Client, db: str) -> None:
    seed_funnel(client, db)
    rows = report.funnel(client, ["day", "variant"], {"rule_id": "promo"}, database=db)

    lines = report.to_csv(rows).splitlines()
    assert lines[0] == (
        "day,variant,sent,delivered,clicked,converted,"
        "delivery_rate,click_rate,conversion_rate,revenue,cost"
    )
    assert lines[1] == "2024-03-01,a,5,4,2,1,0.8,0.5,0.25,1500.0,12.5"
    assert len(lines) == 3

    parsed = json.loads(report.to_json(rows))
    assert parsed[1] == {
        "day": "2024-03-01",
        "variant": "b",
        "sent": 5,
        "delivered": 4,
        "clicked": 2,
        "converted": 1,
        "delivery_rate": 0.8,
        "click_rate": 0.5,
        "conversion_rate": 0.25,
        "revenue": 999.0,
        "cost": 12.5,
    }
    assert report.to_csv([]) == "" and report.to_json([]) == "[]"

    console = Console(width=200, record=True)
    console.print(report.render_table(rows))
    text = console.export_text()
    assert "2024-03-01" in text and "80.0%" in text and "1,500.00" in text


def test_example_queries_run(client: Client, db: str) -> None:
    seed_funnel(client, db)
    assert len(report.EXAMPLE_QUERIES) == 5
    for title, sql in report.EXAMPLE_QUERIES:
        client.rows(sql.replace("rassylka.", f"{db}."))  # must parse and run
        assert title


def test_bad_sql_is_permanent(client: Client, db: str) -> None:
    with pytest.raises(PermanentError):
        client.command("SELEC 1")
    with pytest.raises(PermanentError):
        client.insert("nope", [("x",)], ["id"], database=db)
    with pytest.raises(PermanentError):  # a row the driver cannot serialise
        BatchWriter(client, "clicks", MAPPINGS["click"].columns, db).insert([("x",)], "t")


def test_unreachable_server_is_retryable() -> None:
    with pytest.raises(RetryableError):
        connect("http://default:secret@127.0.0.1:1/default")


def test_second_chdb_path_in_one_process_is_refused(client: Client, tmp_path) -> None:
    if not client.embedded:
        pytest.skip("needs the embedded engine")
    with pytest.raises(PermanentError, match="one embedded engine per process"):
        connect(f"chdb://{tmp_path}")
    assert connect(client.url) is client


# --- batching and retry (pure: no database) ---


def test_buffer_is_due_on_size_or_age() -> None:
    now = [100.0]
    buffer = SinkBuffer(max_rows=3, max_age_s=5, clock=lambda: now[0])
    assert not buffer.due()
    buffer.add("clicks", ("r1",), Offset("t", 0, 7))
    assert not buffer.due()
    assert buffer.due(now=105.0)
    buffer.add("clicks", ("r2",), Offset("t", 0, 8))
    buffer.skip(Offset("t", 1, 3))  # dead-lettered record: no row, offset still moves
    buffer.add("messages", ("r3",), Offset("t", 1, 4))
    assert buffer.due() and len(buffer) == 3
    batch = buffer.drain()
    assert batch.rows == {"clicks": [("r1",), ("r2",)], "messages": [("r3",)]}
    assert batch.offsets == {("t", 0): 9, ("t", 1): 5}
    assert batch.row_count == 3 and not batch.empty
    assert len(buffer) == 0 and not buffer.due(now=1e9) and buffer.drain().empty


def test_token_depends_only_on_offsets_consumed() -> None:
    def fill(order: list[Offset]) -> str:
        buffer = SinkBuffer(clock=lambda: 0.0)
        for source in order:
            buffer.add("clicks", (source.offset,), source)
        return buffer.drain().token

    sources = [Offset("a", 0, 1), Offset("a", 0, 2), Offset("b", 3, 10)]
    assert fill(sources) == fill(list(reversed(sources)))
    assert fill(sources) != fill(sources[:2])
    assert len(fill(sources)) == 32


class FlakyWriter:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, []

    def insert(self, rows: list[Any], token: str) -> int:
        self.calls.append(token)
        if self.failures:
            self.failures -= 1
            raise self.error
        return len(rows)


def test_write_with_retry_backs_off_then_succeeds() -> None:
    flaky = FlakyWriter(3, RetryableError("down"))
    steady = FlakyWriter(0, RetryableError("never"))
    sleeps: list[float] = []
    batch = Batch(
        rows={"clicks": [("x",)], "messages": [("y",)]}, token="tok", offsets={("t", 0): 5}
    )
    offsets = write_with_retry(
        {"clicks": flaky, "messages": steady},
        batch,  # type: ignore[dict-item]
        sleep=sleeps.append,
        first_delay=0.1,
        max_delay=0.3,
    )
    assert offsets == {("t", 0): 5}
    assert sleeps == [0.1, 0.2, 0.3]
    assert flaky.calls == ["tok"] * 4 and steady.calls == ["tok"]


def test_write_with_retry_gives_up_and_does_not_retry_permanent() -> None:
    batch = Batch(rows={"clicks": [("x",)]}, token="tok", offsets={("t", 0): 5})
    sleeps: list[float] = []
    with pytest.raises(RetryableError):
        write_with_retry(
            {"clicks": FlakyWriter(100, RetryableError("down"))},
            batch,  # type: ignore[dict-item]
            sleep=sleeps.append,
            max_wait=1.0,
            first_delay=0.2,
        )
    assert sum(sleeps) <= 1.0 and sleeps == [0.2, 0.4]
    permanent = FlakyWriter(1, PermanentError("bad"))
    with pytest.raises(PermanentError):
        write_with_retry({"clicks": permanent}, batch, sleep=sleeps.append)  # type: ignore[dict-item]
    assert permanent.calls == ["tok"]


def test_shared_client_serves_threads(client: Client, db: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(part: int) -> int:
        records = [outcome(part * 100 + n) for n in range(1, 51)]
        write(client, db, "send_outcome", records, f"part-{part}")
        return client.command(f"SELECT count() FROM {db}.messages") or 0

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(8)))
    assert client.command(f"SELECT count() FROM {db}.messages") == 400
