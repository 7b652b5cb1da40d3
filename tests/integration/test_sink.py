"""The analytics sink on the real broker and a real embedded ClickHouse (chDB).

The sink runs as a child process (`rassylka sink`). chDB lets one process hold a data
folder, and this test process may open only one chDB path for the whole session, so
results are read by another child, `rassylka analytics query ... --format json` (what
analysts use too), after the sink has stopped. Progress is read from Kafka: the sink
commits offsets only after their rows are stored, so "committed == end offsets" means
"everything is in ClickHouse".
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from stages import stage, wait_for

from pipeline import avro, kafka_io, topics
from pipeline.analytics.sink import AFTER_INSERT, FAULT_ENV, progress
from pipeline.procs import kill, settings_env, start_stage, stop
from pipeline.settings import ROOT, Settings

pytestmark = pytest.mark.integration

PHONE = "+79161234567"
START_MS = 1_709_280_000_000  # 2024-03-01


def outcome(n: int, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "request_id": f"req-{n:08d}",
        "message_id": f"msg-{n:08d}",
        "status": "submitted" if n % 10 else "suppressed",
        "reason": None if n % 10 else "opted_out",
        "detail": None,
        "lane": "marketing" if n % 3 else "transactional",
        "rule_id": f"rule_{n % 4}",
        "template_id": "tpl",
        "variant": "ab"[n % 2],
        "campaign_id": "spring" if n % 3 else None,
        "customer_id": f"cust-{n}",
        "phone": f"+7916{n % 10_000_000:07d}",
        "region": "RU-MOW",
        "operator": ("MTS", "MegaFon", "Beeline", "Tele2")[n % 4],
        "gateway": "smpp",
        "gateway_message_ids": [f"g{n}"],
        "segments": 1,
        "encoding": "UCS2",
        "cost": 2.5,
        "event_occurred_at_ms": START_MS + n,
        "decided_at_ms": START_MS + n + 100,
        "attempts": 1,
    }
    record.update(over)
    return record


def publish_outcomes(ns: Settings, numbers: range) -> None:
    kafka_io.publish(ns, topics.OUTCOMES,
                     ((f"req-{n:08d}", outcome(n)) for n in numbers), "send_outcome")


def query(ns: Settings, sql: str) -> list[dict[str, Any]]:
    """Rows of `sql` read by a `rassylka analytics query` child (the sink must be stopped)."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "analytics", "query", sql, "--format", "json"],
        cwd=ROOT, env=settings_env(ns), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def one(ns: Settings, sql: str) -> dict[str, Any]:
    rows = query(ns, sql)
    assert len(rows) == 1, rows
    return rows[0]


def wait_stored(ns: Settings, proc: subprocess.Popen[bytes], at_least: int,
                timeout: float = 60.0) -> int:
    """Wait until the sink has committed every record on its topics (≥ `at_least`)."""
    deadline = time.monotonic() + timeout
    done = end = 0
    while time.monotonic() < deadline:
        done, end = progress(ns)
        if end >= at_least and done >= end:
            return done
        assert proc.poll() is None, f"sink exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"sink stored {done} of {end} records within {timeout}s")


def wait_committed(ns: Settings, proc: subprocess.Popen[bytes], at_least: int,
                   timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = progress(ns)
        if done >= at_least:
            return done
        assert proc.poll() is None, f"sink exited with {proc.returncode}"
        time.sleep(0.02)
    raise AssertionError(f"sink did not commit {at_least} records within {timeout}s")


def log_text(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("sink-*.log")))


def test_batches_store_every_record_exactly_once(ns: Settings, tmp_path: Path) -> None:
    publish_outcomes(ns, range(12_000))
    with stage(ns, ["sink", "--stats-interval", "1"], tmp_path) as proc:
        wait_stored(ns, proc, 12_000)
        assert stop(proc) == 0
    stored = one(ns, "SELECT count() AS n, uniqExact(message_id) AS ids, "
                     "countIf(phone_hash = '') AS unhashed FROM rassylka.messages")
    assert stored == {"n": 12_000, "ids": 12_000, "unhashed": 0}
    log = log_text(tmp_path)
    assert "stored[messages=12000]" in log
    batches = int(log.rsplit("batches=", 1)[1].split()[0])
    assert 3 <= batches <= 30  # 5,000-row batches, plus age-bounded partial ones


def test_crashes_and_replays_leave_each_message_once(ns: Settings, tmp_path: Path) -> None:
    publish_outcomes(ns, range(6_000))
    args = ["sink", "--batch-rows", "100", "--session-timeout", "6"]
    killed_at = [0]
    for _ in range(2):  # SIGKILL twice, mid-stream
        proc = start_stage(ns, args, tmp_path / f"sink-{len(killed_at)}.log")
        try:
            wait_committed(ns, proc, killed_at[-1] + 500)
        finally:
            kill(proc)
        killed_at.append(progress(ns)[0])
    assert killed_at[1] < killed_at[2] < 6_000, killed_at
    publish_outcomes(ns, range(6_000))  # a producer that published everything twice
    with stage(ns, args, tmp_path) as proc:
        wait_stored(ns, proc, 12_000)
        assert stop(proc) == 0
    stored = one(ns, "SELECT count() AS n, uniqExact(message_id) AS ids "
                     "FROM rassylka.messages FINAL")
    assert stored == {"n": 6_000, "ids": 6_000}
    raw = one(ns, "SELECT count() AS n FROM rassylka.messages")["n"]
    assert 6_000 <= raw <= 12_000 + 2 * 200  # duplicates only where tokens could not match
    report = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "report", "--by", "variant", "--format", "json"],
        cwd=ROOT, env=settings_env(ns), capture_output=True, text=True, timeout=120,
    )
    assert report.returncode == 0, report.stderr
    sent = {row["variant"]: row["sent"] for row in json.loads(report.stdout)}
    assert sent == {"a": 2_400, "b": 3_000}  # every 10th (all even: "a") is suppressed


def test_clickhouse_outage_holds_offsets_then_catches_up(ns: Settings, tmp_path: Path) -> None:
    fault = tmp_path / "clickhouse-down"
    fault.write_text("")
    with stage(ns, ["sink", "--stats-interval", "1"], tmp_path,
               extra_env={FAULT_ENV: str(fault)}) as proc:
        publish_outcomes(ns, range(3_000))
        deadline = time.monotonic() + 30  # until the sink met the outage (bounded)
        log = log_text(tmp_path)
        while not ("injected outage" in log and "paused" in log) and time.monotonic() < deadline:
            time.sleep(0.5)
            log = log_text(tmp_path)
        time.sleep(2)  # and went on retrying for a while
        assert proc.poll() is None, "the sink must survive the outage"
        assert progress(ns) == (0, 3_000)  # nothing committed: nothing was stored
        assert "injected outage" in log and "paused" in log
        fault.unlink()
        wait_stored(ns, proc, 3_000, timeout=30)
        assert stop(proc) == 0
    assert "ClickHouse answers again" in log_text(tmp_path)
    stored = one(ns, "SELECT count() AS n, uniqExact(message_id) AS ids FROM rassylka.messages")
    assert stored == {"n": 3_000, "ids": 3_000}


def test_lost_insert_acknowledgement_is_deduplicated_by_token(
    ns: Settings, tmp_path: Path
) -> None:
    # Every attempt reaches ClickHouse, then fails as if the answer was lost; the sink
    # retries the same batch with the same token, and ClickHouse keeps one copy.
    fault = tmp_path / "lost-acks"
    fault.write_text(AFTER_INSERT)
    with stage(ns, ["sink"], tmp_path, extra_env={FAULT_ENV: str(fault)}) as proc:
        publish_outcomes(ns, range(2_000))
        # bounded, not a fixed sleep: a loaded machine takes seconds to migrate and join
        deadline = time.monotonic() + 60
        while "acknowledgement lost" not in log_text(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "acknowledgement lost" in log_text(tmp_path)
        time.sleep(1.0)  # a few retries of the same batch, none committed
        assert progress(ns)[0] == 0
        fault.unlink()
        wait_stored(ns, proc, 2_000, timeout=30)
        assert stop(proc) == 0
    # plain count(), no FINAL: the repeats were dropped at insert time
    assert one(ns, "SELECT count() AS n FROM rassylka.messages") == {"n": 2_000}


FACTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "receipts": (topics.RECEIPTS, "delivery_receipt", {
        "message_id": "msg-00000001", "gateway_message_id": "g1", "state": "DELIVRD",
        "error_code": None, "segment": 1, "segments": 1, "received_at_ms": START_MS + 5,
        "gateway": "smpp",
    }),
    "clicks": (topics.CLICKS, "click", {
        "click_id": "k1", "code": "abc", "message_id": "msg-00000001",
        "url": "https://shop.example/p/1", "clicked_at_ms": START_MS + 6, "user_agent": "UA",
    }),
    "conversions": (topics.CONVERSIONS, "conversion", {
        "conversion_id": "v1", "order_id": "o1", "customer_id": "cust-1",
        "message_id": "msg-00000001", "touch": "click", "touch_at_ms": START_MS + 6,
        "revenue_minor": 129_900, "currency": "RUB", "converted_at_ms": START_MS + 7,
        "rule_id": "rule_1", "campaign_id": "spring", "variant": "b",
    }),
    "inbound": (topics.INBOUND, "inbound_message", {
        "inbound_id": "i1", "from_number": PHONE, "to": "SHOP",
        "text": f"СТОП, это {PHONE[1:]}", "received_at_ms": START_MS + 8, "gateway": "smpp",
    }),
    "consent_changes": (topics.CONSENT, "consent_change", {
        "phone": PHONE, "scope": "marketing", "status": "opt_out", "source": "sms_reply",
        "changed_at_ms": START_MS + 9, "customer_id": "cust-1", "evidence": f"СТОП from {PHONE}",
    }),
}


def test_every_fact_topic_lands_in_its_table_with_phones_hashed(
    ns: Settings, tmp_path: Path
) -> None:
    publish_outcomes(ns, range(1, 2))
    kafka_io.publish(ns, topics.OUTCOMES, [("req-x", outcome(2, phone=PHONE))], "send_outcome")
    for topic, schema, record in FACTS.values():
        kafka_io.publish(ns, topic, [(b"k", record)], schema)
    kafka_io.publish(ns, topics.CONSENT, [(f"{PHONE}|marketing", None)])  # a tombstone
    with stage(ns, ["sink"], tmp_path) as proc:
        wait_stored(ns, proc, 8)
        assert stop(proc) == 0
    digits = PHONE[1:]
    tables = {"messages": 2, **dict.fromkeys(FACTS, 1)}
    for table, count in tables.items():
        rows = query(ns, f"SELECT * FROM rassylka.{table}")
        assert len(rows) == count, (table, rows)
        for row in rows:
            clear = [k for k, v in row.items() if isinstance(v, str) and digits in v]
            assert not clear, f"{table}: phone number in clear in {clear}: {row}"
    inbound = one(ns, "SELECT sender_hash, sender_masked, text FROM rassylka.inbound")
    consent = one(ns, "SELECT phone_hash FROM rassylka.consent_changes")
    message = one(ns, "SELECT phone_hash FROM rassylka.messages WHERE message_id = 'msg-00000002'")
    assert len(inbound["sender_hash"]) == 32 and inbound["sender_masked"] == "+7916*****67"
    assert inbound["sender_hash"] == consent["phone_hash"] == message["phone_hash"]
    assert inbound["text"].startswith("СТОП")
    conversion = one(ns, "SELECT revenue_minor, touch FROM rassylka.conversions")
    assert conversion == {"revenue_minor": 129_900, "touch": "click"}


def test_segments_of_long_replies_are_joined_in_order_in_the_replies_view(
    ns: Settings, tmp_path: Path
) -> None:
    """Each segment of a concatenated reply is a row of `inbound` with its place; the
    `replies` view gives one row per reply, its text joined in order whatever order the
    segments came in (and a segment stored twice counted once), `complete` = 0 while one
    is missing; a reply of one segment (written before segments had a place) is its row."""
    def segment(n: int, ref: int | None, seg: int, of: int, text: str, sender: str = PHONE
                ) -> tuple[bytes, dict[str, Any]]:
        return (sender.encode(), {
            "inbound_id": f"s{n}", "from_number": sender, "to": "SHOP", "text": text,
            "received_at_ms": START_MS + n, "gateway": "smpp",
            "part_ref": ref, "segment": seg, "segments": of})
    other = "+79160000042"
    records = [segment(1, 7, 3, 3, "world."), segment(2, 7, 1, 3, "Hello, "),
               segment(3, 7, 2, 3, "big "), segment(4, 7, 2, 3, "big "),  # stored twice
               segment(5, 7, 1, 2, "same reference, "),  # another reply: 2 segments
               segment(6, 7, 1, 2, "another sender ", other)]  # one of two: incomplete
    kafka_io.publish(ns, topics.INBOUND, records, "inbound_message")
    kafka_io.publish(ns, topics.INBOUND, [(b"k", FACTS["inbound"][2])], "inbound_message")
    with stage(ns, ["sink"], tmp_path) as proc:
        wait_stored(ns, proc, len(records) + 1)
        assert stop(proc) == 0
    rows = query(ns, "SELECT reply_id, text, segments, segments_received, complete "
                     "FROM rassylka.replies ORDER BY reply_id")
    assert [(r["reply_id"], r["segments"], r["segments_received"], r["complete"])
            for r in rows] == [("i1", 1, 1, 1), ("s1", 3, 3, 1), ("s5", 2, 1, 0), ("s6", 2, 1, 0)]
    assert rows[1]["text"] == "Hello, big world."
    assert rows[0]["text"].startswith("СТОП")


def test_a_reply_whose_segments_straddle_midnight_is_one_row_of_the_replies_view(
    ns: Settings, tmp_path: Path
) -> None:
    """Regression: the view put a long reply's segments together within a UTC day, so
    "Hello, " at 23:59:59.5 and "world." at 00:00:00.7 were two incomplete replies. They are
    one now; the same reference again after more than an hour is another reply."""
    midnight = START_MS + 86_400_000  # 2024-03-02 00:00 UTC

    def segment(name: str, at_ms: int, seg: int, text: str) -> tuple[bytes, dict[str, Any]]:
        return (PHONE.encode(), {
            "inbound_id": name, "from_number": PHONE, "to": "SHOP", "text": text,
            "received_at_ms": at_ms, "gateway": "smpp", "part_ref": 9, "segment": seg,
            "segments": 2})
    records = [segment("m1", midnight - 500, 1, "Hello, "), segment("m2", midnight + 700, 2, "world."),
               segment("m3", midnight + 3 * 3_600_000, 1, "Later, "),
               segment("m4", midnight + 3 * 3_600_000 + 900, 2, "again.")]
    kafka_io.publish(ns, topics.INBOUND, records, "inbound_message")
    with stage(ns, ["sink"], tmp_path) as proc:
        wait_stored(ns, proc, len(records))
        assert stop(proc) == 0
    rows = query(ns, "SELECT reply_id, text, segments_received, complete "
                     "FROM rassylka.replies ORDER BY reply_id")
    assert [(r["reply_id"], r["text"], r["segments_received"], r["complete"]) for r in rows] == [
        ("m1", "Hello, world.", 2, 1), ("m3", "Later, again.", 2, 1)]


def test_poison_records_become_dead_letters_and_the_sink_goes_on(
    ns: Settings, tmp_path: Path
) -> None:
    bad_header = b"not avro at all"
    bad_body = avro.encode("send_outcome", outcome(1))[:14]
    wrong_topic = avro.encode("click", FACTS["clicks"][2])
    with stage(ns, ["sink"], tmp_path) as proc:
        publish_outcomes(ns, range(0, 100))
        kafka_io.publish(ns, topics.OUTCOMES, [(b"p1", bad_header), (b"p2", bad_body),
                                               (b"p3", wrong_topic)])
        publish_outcomes(ns, range(100, 200))
        wait_stored(ns, proc, 203)
        letters = wait_for(ns, topics.DEAD_LETTERS, 3, timeout=30)
        assert proc.poll() is None
        assert stop(proc) == 0
    records = sorted((m.record for m in letters if m.record), key=lambda d: d["key"])
    assert [(d["stage"], d["reason"], d["key"], d["value"]) for d in records] == [
        ("sink", "undecodable", b"p1", bad_header),
        ("sink", "undecodable", b"p2", bad_body),
        ("sink", "undecodable", b"p3", wrong_topic),
    ]
    assert all(d["source_topic"] == ns.topic(topics.OUTCOMES) and d["error"] for d in records)
    assert one(ns, "SELECT count() AS n FROM rassylka.messages") == {"n": 200}
