"""`make demo`: the three doors an event can come in by, side by side.

A third of the sample events is posted to the HTTP API (`rassylka api`, with a key made
for the demo), the rest is published to Kafka directly, and a few sample customers have
orders created, paid and shipped in an ERP database (the demo's own PostgreSQL database,
with `infra/postgres`'s outbox table and example `orders` trigger), which Debezium in
Kafka Connect streams and the `rassylka outbox` stage turns into events. All three end as
the same Avro events on the same topics; the demo prints, per door, the events, the
requests the router made of them and the SMS the sender submitted.

The outbox door needs PostgreSQL and Kafka Connect (`make demo` starts both); when they
do not answer, the demo says so in one line and goes on with the other two doors.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline import kafka_io, outbox, topics
from pipeline.errors import RassylkaError
from pipeline.kafka_io import Received
from pipeline.settings import ROOT, Settings

SQL = ROOT / "infra" / "postgres"
OUTBOX_CUSTOMERS = 4  # 3 outbox rows each: order created, paid, shipped


@dataclass
class Doors:
    """Which event came in by which door (event ids), and what is left to clean up."""

    api: set[str] = field(default_factory=set)
    kafka: set[str] = field(default_factory=set)
    outbox: set[str] = field(default_factory=set)
    outbox_rows: int = 0
    outbox_orders: str = ""  # the prefix of the order ids the demo's ERP wrote
    outbox_note: str = ""
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def door(self, event_id: str) -> str:
        if event_id in self.api:
            return "HTTP API"
        if event_id in self.outbox:
            return "database outbox"
        return "Kafka (direct)" if event_id in self.kafka else "other"

    def close(self) -> None:
        for step in reversed(self.cleanup):
            try:
                step()
            except (RassylkaError, OSError):
                pass


def start_api(settings: Settings, start: Callable[[list[str], str], Any], port: int) -> str:
    """Start `rassylka api` on `port` with a key for the demo; returns the key."""
    from pipeline.api.keys import create_key

    _entry, key = create_key(settings, "demo", ["events", "profiles", "consents"])
    start(["api", "--host", "127.0.0.1", "--port", str(port)], "api")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return key
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP API on 127.0.0.1:{port} did not start within 60 s")
        time.sleep(0.3)


def post_events(port: int, key: str, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """POST `events` ((type, event) pairs) as one batch; returns the event ids of the 202."""
    body = json.dumps({"events": [{"type": t, "event": e} for t, e in events]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events:batch", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "Idempotency-Key": f"demo-{int(time.time())}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the HTTP API answered {exc.code}: {exc.read()[:500]!r}") from None
    return [str(i) for i in answer["event_ids"]]


def open_outbox(settings: Settings, start: Callable[[list[str], str], Any],
                customers: list[str], doors: Doors) -> None:
    """Create the demo's ERP database and connector, start the outbox stage and write the
    customers' orders; on PostgreSQL or Connect not answering, note why and return."""
    base = outbox.Database.from_env()
    db = replace(base, database=settings.app_id.lower())
    name = outbox.slot_name(settings)
    try:
        base.sql(f"CREATE DATABASE {db.database}", database="postgres", atomic=False)
    except RassylkaError as exc:
        doors.outbox_note = (f"outbox door skipped: PostgreSQL does not answer ({exc}); "
                             f"`make postgres-up connect-up` starts it")
        return
    doors.cleanup.append(lambda: base.sql(f"DROP DATABASE IF EXISTS {db.database} WITH (FORCE)",
                                          database="postgres", atomic=False))
    db.sql((SQL / "outbox.sql").read_text(encoding="utf-8"))
    db.sql((SQL / "orders_example.sql").read_text(encoding="utf-8"))
    try:
        outbox.create_connector(name, outbox.connector_config(settings, db, name))
    except RassylkaError as exc:
        doors.outbox_note = (f"outbox door skipped: Kafka Connect does not run the connector "
                             f"({exc}); `make connect-up` starts it")
        return
    doors.cleanup.append(lambda: outbox.drop_slot(db, name))
    doors.cleanup.append(lambda: outbox.delete_connector(name))
    start(["outbox"], "outbox")
    doors.outbox_orders = f"{settings.app_id}-"
    doors.outbox_rows = outbox.insert_sample_orders(db, customers, prefix=doors.outbox_orders)


def wait_outbox_events(settings: Settings, doors: Doors, timeout: float = 90.0) -> None:
    """Until the outbox stage has published an event for every row written (bounded)."""
    if not doors.outbox_rows:
        return
    def ours(m: Received) -> bool:
        return bool(m.record) and str(m.record.get("order_id")).startswith(doors.outbox_orders)

    got = kafka_io.read_topic(settings, topics.ORDER_STATUS,
                              lambda m: sum(1 for x in m if ours(x)) >= doors.outbox_rows, timeout)
    doors.outbox = {m.record["event_id"] for m in got if ours(m)}


def print_doors(console: Console, doors: Doors, requests: list[Received],
                outcomes: list[Received]) -> bool:
    """Per door: events, requests routed of them, SMS submitted; True when every door
    that took events also led to submitted SMS."""
    events = Counter({"Kafka (direct)": len(doors.kafka), "HTTP API": len(doors.api),
                      "database outbox": len(doors.outbox)})
    door_of_request = {r.record["request_id"]: doors.door(r.record["event_id"]) for r in requests}
    routed = Counter(door_of_request.values())
    submitted = Counter(door_of_request.get(o.record["request_id"], "other") for o in outcomes
                        if o.record["status"] == "submitted")
    table = Table(title="Three doors, one path: events → router → requests → sender → SMS",
                  title_justify="left")
    for column, justify in (("door", "left"), ("events", "right"), ("requests", "right"),
                            ("SMS submitted", "right")):
        table.add_column(column, justify=justify)
    for door in ("Kafka (direct)", "HTTP API", "database outbox"):
        table.add_row(door, str(events[door]), str(routed[door]), str(submitted[door]))
    console.print(table)
    if doors.outbox_note:
        console.print(f"[yellow]{doors.outbox_note}[/yellow]", highlight=False)
    return all(routed[d] > 0 and submitted[d] > 0 for d in events if events[d])


def split_for_api(events: list[tuple[str, dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    """Every third sample event goes to the HTTP API, the others to Kafka."""
    to_api = [(topics.EVENT_TOPICS[t], e) for i, (t, e) in enumerate(events) if i % 3 == 1]
    direct = [(t, e) for i, (t, e) in enumerate(events) if i % 3 != 1]
    return to_api, direct


def outbox_customers(profiles: list[dict[str, Any]], audience: frozenset[str]) -> list[str]:
    """Customers with a profile who are in no campaign segment (so the campaign's funnel
    stays the campaign's own)."""
    return [p["customer_id"] for p in profiles if p["customer_id"] not in audience][:OUTBOX_CUSTOMERS]

