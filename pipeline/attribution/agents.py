"""The attribution stage as Faust agents: outcomes, receipts, clicks and paid orders in,
conversions out. Decisions live in `pipeline.attribution.core` (pure).

Topology. Receipts and clicks name a message only; touches and orders are per customer.
Source topics are written by different producers (confluent-kafka, other systems), so their
partitioning is not trusted to line up; every input is re-keyed through two internal topics
this stage produces itself (same partitioner, same partition count):

    outcomes (submitted), receipts (DELIVRD), clicks ──► <app>-attribution-by-message (key message_id)
        agent `messages`: table `messages` message_id -> customer + rule/campaign/variant;
        a touch whose outcome has not arrived yet waits in table `unmatched` (bounded)
        ──► <app>-attribution-by-customer (key customer_id)  ◄── order_status_changed 'paid'
        agent `customers`: table `customers` customer_id -> touches, pending orders, credited
        ──► sms.conversions (key customer_id)

Tables are changelog-backed, so a restarted or moved worker recovers them. Internal records
are small JSON documents (state, not contracts). Undecodable or invalid input goes to the
dead-letter topic and the worker keeps running.

Known limit: `messages` keeps every submitted message (compacted changelog, no expiry yet).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import faust

from pipeline import avro, metrics, topics
from pipeline.attribution import core
from pipeline.deadletter import dead_letter
from pipeline.settings import Settings

log = logging.getLogger(__name__)

STAGE = "attribution"
MAX_UNMATCHED = 20
SOURCE_SCHEMAS = {
    topics.OUTCOMES: "send_outcome",
    topics.RECEIPTS: "delivery_receipt",
    topics.CLICKS: "click",
    topics.ORDER_STATUS: "order_status_changed",
}


@dataclass
class AttributionStats:
    """Counters of what the stage did."""

    counts: Counter[str] = field(default_factory=Counter)


def internal_topic(settings: Settings, name: str) -> str:
    """Full name of internal topic `name` (by-message / by-customer) of this deployment."""
    return f"{settings.app_id}-{STAGE}-{name}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def install_attribution(
    app: faust.App,
    settings: Settings,
    window_ms: int = core.DEFAULT_WINDOW_MS,
    grace_ms: int = core.DEFAULT_GRACE_MS,
) -> AttributionStats:
    """Declare the attribution stage's topics, tables and agents on `app`."""
    stats = AttributionStats()
    reg = avro.registry()
    schema_of = {settings.topic(name): schema for name, schema in SOURCE_SCHEMAS.items()}

    def topic(name: str, internal: bool = False) -> faust.TopicT:
        if internal:
            return app.topic(name, key_type=bytes, value_type=bytes,
                             partitions=settings.partitions, internal=True)
        return app.topic(name, key_type=bytes, value_type=bytes)

    sources = app.topic(
        *[settings.topic(n) for n in (topics.OUTCOMES, topics.RECEIPTS, topics.CLICKS)],
        key_type=bytes, value_type=bytes)
    orders_topic = topic(settings.topic(topics.ORDER_STATUS))
    by_message = topic(internal_topic(settings, "by-message"), internal=True)
    by_customer = topic(internal_topic(settings, "by-customer"), internal=True)
    conversions = topic(settings.topic(topics.CONVERSIONS))
    dlq = topic(settings.topic(topics.DEAD_LETTERS))

    def table(name: str) -> faust.TableT:
        return app.Table(name, default=None, key_type=bytes, value_type=bytes,
                         partitions=settings.partitions)

    messages = table("messages")
    unmatched = table("unmatched")
    customers = table("customers")

    dead_letters = metrics.dead_letters(STAGE)

    def seen(event: faust.types.EventT) -> None:
        metrics.events_in(event.message.topic).inc()

    async def send_dead_letter(event: faust.types.EventT, reason: str, error: str) -> None:
        msg = event.message
        stats.counts[f"dead_letter:{reason}"] += 1
        dead_letters(reason).inc()
        log.warning("dead letter from %s/%s@%s: %s: %s",
                    msg.topic, msg.partition, msg.offset, reason, error)
        record = dead_letter(STAGE, reason, error, msg.topic, msg.partition, msg.offset,
                             msg.key, msg.value)
        await dlq.send(key=msg.key, value=avro.encode("dead_letter", record))

    # ------------------------------------------------------------ stage 1: re-key inputs
    @app.agent(sources, name="attribution-ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            seen(event)
            try:
                await ingest_one(event)
            except Exception as exc:  # never let one record stop the worker
                log.exception("attribution ingest failed")
                await send_dead_letter(event, "attribution_error", f"{exc.__class__.__name__}: {exc}")

    async def ingest_one(event: faust.types.EventT) -> None:
        schema = schema_of[event.message.topic]
        try:
            record = avro.decode(schema, event.value or b"", reg)
        except avro.DecodeError as exc:
            await send_dead_letter(event, exc.reason, str(exc))
            return
        fact: dict[str, Any] | None = None
        if schema == "send_outcome":
            info = core.message_from_outcome(record)
            if info is not None:
                if not info.customer_id or not info.message_id:
                    await send_dead_letter(event, "invalid_outcome", "empty message or customer id")
                    return
                fact = {"fact": "message", **asdict(info)}
        elif schema == "delivery_receipt":
            if record["state"] == "DELIVRD":
                fact = {"fact": "touch", "kind": core.DELIVERED, "message_id": record["message_id"],
                        "at_ms": record["received_at_ms"]}
        else:
            fact = {"fact": "touch", "kind": core.CLICK, "message_id": record["message_id"],
                    "at_ms": record["clicked_at_ms"]}
        if fact is None:
            stats.counts[f"ignored:{schema}"] += 1
            return
        if not fact["message_id"]:
            await send_dead_letter(event, "invalid_touch", f"{schema} without message_id")
            return
        await by_message.send(key=str(fact["message_id"]).encode(), value=_json(fact))

    @app.agent(orders_topic, name="attribution-orders")
    async def ingest_orders(stream: faust.StreamT) -> None:
        async for event in stream.events():
            seen(event)
            try:
                record = avro.decode("order_status_changed", event.value or b"", reg)
            except avro.DecodeError as exc:
                await send_dead_letter(event, exc.reason, str(exc))
                continue
            if record["status"] != core.PAID:
                continue
            if not record["customer_id"] or not record["order_id"] or record["occurred_at_ms"] <= 0:
                await send_dead_letter(event, "invalid_order",
                                       "paid order needs customer_id, order_id, occurred_at_ms")
                continue
            order = {name: record[name] for name in core.ORDER_FIELDS}
            await by_customer.send(key=record["customer_id"].encode(),
                                   value=_json({"fact": "order", "order": order}))

    # ------------------------------------------------------ stage 2: message -> customer
    async def forward_touch(fact: dict[str, Any], info: core.MessageInfo) -> None:
        touch = core.touch_for(fact["kind"], int(fact["at_ms"]), info)
        await by_customer.send(key=info.customer_id.encode(),
                               value=_json({"fact": "touch", "touch": asdict(touch)}))
        stats.counts[f"touch:{touch.kind}"] += 1

    @app.agent(by_message, name="attribution-messages")
    async def join_messages(stream: faust.StreamT) -> None:
        async for event in stream.events():
            seen(event)
            try:
                fact = json.loads(event.value)
                key = event.key
                if fact["fact"] == "message":
                    fact.pop("fact")
                    info = core.MessageInfo(**fact)
                    messages[key] = _json(asdict(info))
                    waiting = unmatched.get(key)
                    if waiting is not None:
                        for early in json.loads(waiting):
                            await forward_touch(early, info)
                        unmatched.pop(key, None)
                    continue
                known = messages.get(key)
                if known is not None:
                    await forward_touch(fact, core.MessageInfo(**json.loads(known)))
                    continue
                # The outcome has not arrived yet: park the touch until it does.
                waiting_list = json.loads(unmatched.get(key) or b"[]")
                unmatched[key] = json.dumps((waiting_list + [fact])[-MAX_UNMATCHED:]).encode()
                stats.counts["touch_unmatched"] += 1
            except Exception as exc:
                log.exception("attribution join failed")
                await send_dead_letter(event, "attribution_error", f"{exc.__class__.__name__}: {exc}")

    # -------------------------------------------------- stage 3: per customer, attribute
    @app.agent(by_customer, name="attribution-customers")
    async def attribute(stream: faust.StreamT) -> None:
        async for event in stream.events():
            seen(event)
            try:
                fact = json.loads(event.value)
                state = core.CustomerState.from_bytes(customers.get(event.key))
                if fact["fact"] == "touch":
                    step = core.on_touch(state, core.Touch(**fact["touch"]), _now_ms(),
                                         window_ms, grace_ms)
                else:
                    step = core.on_order(state, fact["order"], _now_ms(), window_ms, grace_ms)
                    if not step.conversions:
                        stats.counts["order_unattributed"] += 1
                customers[event.key] = step.state.to_bytes()
                for conversion in step.conversions:
                    await conversions.send(key=conversion["customer_id"].encode(),
                                           value=avro.encode("conversion", conversion))
                    stats.counts["conversion"] += 1
            except Exception as exc:
                log.exception("attribution failed")
                await send_dead_letter(event, "attribution_error", f"{exc.__class__.__name__}: {exc}")

    return stats


def attribution_command(loglevel: str = "warn", window_days: float = 7.0,
                        metrics_port: int = 0) -> None:
    """Run an attribution worker until stopped (mounted as `rassylka attribution`); with
    `metrics_port`, serve /metrics, /healthz and /readyz there."""
    from pipeline.app import create_app
    from pipeline.topics import CATALOG, create_topics, ensure_topics, wait_until_ready

    settings = Settings.from_env()
    internal = [internal_topic(settings, "by-message"), internal_topic(settings, "by-customer")]
    create_topics(settings)
    ensure_topics(settings, internal)
    wait_until_ready(settings, [settings.topic(spec.name) for spec in CATALOG] + internal)
    health = metrics.Health()
    metrics.serve(metrics_port, health)
    app = create_app(settings, STAGE)
    install_attribution(app, settings, window_ms=int(window_days * 86_400_000))
    health.require("no rebalance in progress", lambda: not app.rebalancing)

    @app.timer(interval=1.0)
    async def beat() -> None:  # the event loop comes round: /healthz
        health.beat()

    json_logs = metrics.json_logs()  # keep --log-format json: Faust would replace the handlers
    if json_logs:
        from mode.utils.logging import level_number

        logging.getLogger().setLevel(level_number(loglevel))
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          override_logging=not json_logs)
    worker.execute_from_commandline()


if __name__ == "__main__":  # `python -m pipeline.attribution.agents [loglevel]`
    import sys

    attribution_command(*sys.argv[1:2])
