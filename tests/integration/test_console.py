"""Console tools on the real broker: `produce`, `tail`, `deadletters list|replay`, `--version`.

Each command runs as a `rassylka` process with the test's settings, the way an operator
runs it; the checks read the topics directly.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from stages import profiles_read, settle, stage, wait_for

from pipeline import kafka_io, topics
from pipeline.procs import settings_env
from pipeline.samples import make_profile, order_event
from pipeline.settings import ROOT, Settings

NOW = int(time.time() * 1000)


def rassylka(settings: Settings, *args: str, stdin: str | None = None,
             timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`rassylka <args>` as a process with `settings`; its exit code and output."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          env=settings_env(settings), input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def test_version_prints_the_installed_version(settings: Settings) -> None:
    from importlib.metadata import version

    run = rassylka(settings, "--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"rassylka {version('rassylka')}"


def test_produced_events_are_tailed_decoded_and_garbage_shows_its_error(
        ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(7)
    events = [order_event(rng, f"cust-{i}", "shipped", NOW) for i in range(3)]
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")

    run = rassylka(ns, "produce", topics.ORDER_STATUS, "--json", str(source))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "published 3 order_status_changed record(s)" in run.stdout
    assert "3 acknowledged" in run.stdout
    kafka_io.publish(ns, topics.ORDER_STATUS, [(b"cust-x", b"not avro at all")])

    run = rassylka(ns, "tail", ns.topic(topics.ORDER_STATUS), "--from-beginning", "--max", "4",
                   "--timeout", "20", "--format", "json")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(rows) == 4
    good = {r["value"]["event_id"]: r for r in rows if "error" not in r}
    assert set(good) == {e["event_id"] for e in events}
    for event in events:
        row = good[event["event_id"]]
        assert row["topic"] == ns.topic(topics.ORDER_STATUS)
        assert row["key"] == event["customer_id"] and row["schema"] == "order_status_changed"
        assert row["value"]["order_id"] == event["order_id"]
        assert isinstance(row["offset"], int) and row["timestamp"] > NOW - 60_000
    [bad] = [r for r in rows if "error" in r]
    assert bad["key"] == "cust-x" and bad["value"] is None and "C3 01" in bad["error"]

    # --key filters; phone numbers are masked unless --unmask
    profile = make_profile(rng, 1) | {"phone": "+79161234567"}
    run = rassylka(ns, "produce", topics.PROFILES, "--json", "-", stdin=json.dumps([profile]))
    assert run.returncode == 0, run.stdout + run.stderr
    masked = rassylka(ns, "tail", topics.PROFILES, "--from-beginning", "--max", "1",
                      "--timeout", "20", "--format", "json", "--key", profile["customer_id"])
    assert json.loads(masked.stdout)["value"]["phone"] == "+7********67"
    shown = rassylka(ns, "tail", topics.PROFILES, "--from-beginning", "--max", "1",
                     "--timeout", "20", "--format", "json", "--unmask")
    assert json.loads(shown.stdout)["value"]["phone"] == "+79161234567"


def test_produce_with_one_bad_item_names_it_and_publishes_nothing(
        ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(8)
    events = [order_event(rng, f"cust-{i}", "paid", NOW) for i in range(3)]
    del events[1]["customer_id"]
    events[2]["amount_minor"] = "12.50"
    source = tmp_path / "events.json"
    source.write_text(json.dumps(events, indent=1), encoding="utf-8")

    run = rassylka(ns, "produce", topics.ORDER_STATUS, "--json", str(source))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert any("item 2: customer_id: missing" in line for line in lines), lines
    assert any("item 3: amount_minor" in line and "not an integer" in line for line in lines)
    assert not any("item 1" in line for line in lines)
    assert "nothing published" in lines[-1]
    assert settle(ns, topics.ORDER_STATUS, idle=2.0, timeout=10) == []

    unknown = rassylka(ns, "produce", "events.orders", "--json", str(source))
    assert unknown.returncode == 1
    assert "unknown topic 'events.orders'" in unknown.stderr
    assert "events.order_status" in unknown.stderr


def test_dead_letters_are_listed_and_replayed_once_after_the_fix(
        ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(9)
    profile = make_profile(rng, 1)
    event = order_event(rng, profile["customer_id"], "shipped", NOW)
    with stage(ns, ["router"], tmp_path):
        # an event for a customer without a profile, and bytes that are not an event
        kafka_io.publish(ns, topics.ORDER_STATUS, [(event["customer_id"], event)],
                         "order_status_changed")
        kafka_io.publish(ns, topics.ORDER_STATUS, [(b"junk", b"\x00garbage")])
        wait_for(ns, topics.DEAD_LETTERS, 2, timeout=60)

        listed = rassylka(ns, "deadletters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert sorted(r["reason"] for r in rows) == ["undecodable", "unknown_customer"]
        [missing] = [r for r in rows if r["reason"] == "unknown_customer"]
        assert missing["source_topic"] == ns.topic(topics.ORDER_STATUS)
        assert missing["event_id"] == event["event_id"] and missing["replayed_at_ms"] is None
        table = rassylka(ns, "deadletters", "list", "--topic", topics.ORDER_STATUS)
        assert table.returncode == 0, table.stderr
        assert "unknown_customer" in table.stdout and "undecodable" in table.stdout
        assert "Per reason" in table.stdout

        dry = rassylka(ns, "deadletters", "replay", "--reason", "unknown_customer", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would replay 1 original record(s) (events.order_status: 1)" in dry.stdout
        asked = rassylka(ns, "deadletters", "replay", "--reason", "unknown_customer")
        assert asked.returncode == 1 and "--yes" in asked.stderr  # no terminal to ask on

        # the fix: the customer's profile; then the replay routes the event
        kafka_io.publish(ns, topics.PROFILES, [(profile["customer_id"], profile)],
                         "customer_profile")
        profiles_read(ns)
        first = rassylka(ns, "deadletters", "replay", "--reason", "unknown_customer", "--yes")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "replayed 1 original record(s)" in first.stdout
        second = rassylka(ns, "deadletters", "replay", "--reason", "unknown_customer", "--yes")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "nothing to replay" in second.stdout and "skipped 1 already replayed" in second.stdout

        requests = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, 1, timeout=60)
        requests = settle(ns, topics.REQUESTS_TRANSACTIONAL, idle=3.0)
    assert [r.record["event_id"] for r in requests] == [event["event_id"]]
    copies = [m for m in settle(ns, topics.ORDER_STATUS, idle=2.0)
              if m.record and m.record["event_id"] == event["event_id"]]
    assert len(copies) == 2  # the original and exactly one replay

    listed = rassylka(ns, "deadletters", "list", "--json", "--reason", "unknown_customer")
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["replayed_at_ms"] >= NOW
