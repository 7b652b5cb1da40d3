"""Follow-ups that depend on behaviour: a second message after a delay, unless something
happens first.

A rule with `follow_up: {after, rule, unless}` schedules, for every event it matches, a
follow-up that rule `rule` (`trigger: follow_up`) renders `after` later, for instance a
payment reminder → an "overdue" notice in 3 days unless the order is paid
(`unless: {event: order_status_changed, when: {status: paid}, match: [order_id]}`), or a
promotion → a reminder in 2 days unless the customer clicked (`unless: {clicked: true}`).

`FollowUps` runs in the campaign worker, on its own consumer group over the event topics,
`sms.outcomes` and `sms.clicks`. Pending follow-ups live in the compacted
`followups.pending` (so they survive restarts); each cycle is one Kafka transaction with
the pending changes, the follow-up events that fell due and the input offsets, so an
event that cancels a follow-up really cancels it, and a due follow-up goes out once. A
follow-up goes out as the original event again, on its topic, with event id
`<event id>~<rule>` and `attributes.follow_up_rule` naming the rule that renders it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from pipeline import avro, kafka_io, topics
from pipeline.router.core import idempotency_key
from pipeline.rules.matching import condition_holds, event_matches, follow_up_rule
from pipeline.rules.model import Rule, RuleSet
from pipeline.settings import Settings
from pipeline.state.store import read_partitions

log = logging.getLogger(__name__)


def follow_up_id(event_id: str, rule_id: str) -> str:
    return hashlib.blake2b(f"{event_id}|{rule_id}".encode(), digest_size=12).hexdigest()


class Pending:
    """Pending follow-ups by id, indexed the ways the hot paths look them up: by customer
    (a cancelling event), by request and message id (a click), and by due time."""

    def __init__(self, rows: dict[str, dict[str, Any]] | None = None) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.by_customer: dict[str, set[str]] = defaultdict(set)
        self.by_request: dict[str, str] = {}
        self.by_message: dict[str, str] = {}
        self.due_heap: list[tuple[int, str]] = []
        for fid, record in (rows or {}).items():
            self.add(fid, record)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, fid: object) -> bool:
        return fid in self.rows

    def add(self, fid: str, record: dict[str, Any]) -> None:
        self.rows[fid] = record
        self.by_customer[record["customer_id"]].add(fid)
        if record["unless_clicked"]:
            self.by_request[record["request_id"]] = fid
            if record["message_id"]:
                self.by_message[record["message_id"]] = fid
        heapq.heappush(self.due_heap, (record["due_ms"], fid))

    def drop(self, fid: str) -> dict[str, Any]:
        record = self.rows.pop(fid)
        self.by_customer[record["customer_id"]].discard(fid)
        if not self.by_customer[record["customer_id"]]:
            del self.by_customer[record["customer_id"]]
        self.by_request.pop(record["request_id"], None)
        if record["message_id"]:
            self.by_message.pop(record["message_id"], None)
        return record  # its due_heap entry is skipped when it comes up

    def sent_as(self, fid: str, message_id: str) -> dict[str, Any]:
        """The first message went out as `message_id` (a click on it cancels)."""
        record = self.rows[fid] = {**self.rows[fid], "message_id": message_id}
        self.by_message[message_id] = fid
        return record

    def next_due_ms(self) -> int | None:
        while self.due_heap and self.due_heap[0][1] not in self.rows:
            heapq.heappop(self.due_heap)  # sent or cancelled since it was pushed
        return self.due_heap[0][0] if self.due_heap else None

    def pop_due(self, now_ms: int) -> list[str]:
        """Ids of the follow-ups due at `now_ms`, earliest first; they stay pending until
        `drop` (a failed transaction rebuilds the whole table from its snapshot)."""
        out = []
        while self.due_heap and self.due_heap[0][0] <= now_ms:
            due_ms, fid = heapq.heappop(self.due_heap)
            if fid in self.rows and self.rows[fid]["due_ms"] == due_ms:
                out.append(fid)
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.rows)  # records are replaced, never changed in place


class FollowUps:
    """Schedules, cancels and sends follow-ups; `cycle()` does one transaction's worth."""

    def __init__(self, settings: Settings, ruleset: RuleSet, worker_id: str = "0") -> None:
        self.settings = settings
        self.triggers: dict[str, list[Rule]] = defaultdict(list)  # event type → rules
        self.cancellers: dict[str, list[Rule]] = defaultdict(list)
        for rule in ruleset.rules:
            if rule.follow_up is not None:
                self.triggers[rule.event].append(rule)
                if rule.follow_up.unless_event:
                    self.cancellers[rule.follow_up.unless_event].append(rule)
        self.enabled = bool(self.triggers)
        self.schema_of = {settings.topic(n): s for n, s in topics.EVENT_TOPICS.items()}
        self.topic_of = {s: t for t, s in self.schema_of.items()}
        self.pending_topic = settings.topic(topics.FOLLOW_UPS)
        self.outcomes_topic = settings.topic(topics.OUTCOMES)
        self.clicks_topic = settings.topic(topics.CLICKS)
        self.pending = Pending()
        self.worker_id = worker_id
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.sent = self.cancelled = self.scheduled = 0
        self._partitions: int | None = None

    # ----------------------------------------------------------------- set-up
    def start(self) -> None:
        if not self.enabled:
            return
        rows: dict[str, dict[str, Any]] = {}
        for _p, key, value in read_partitions(self.settings.kafka_bootstrap, self.pending_topic, [0]):
            if value is None:
                rows.pop(key.decode(), None)
            else:
                rows[key.decode()] = json.loads(value)
        self.pending = Pending(rows)
        group = f"{self.settings.app_id}-followups"
        self.producer = self._new_producer()
        self.consumer = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap, "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "enable.partition.eof": False,
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000,
        })
        self.consumer.subscribe([*self.schema_of, self.outcomes_topic, self.clicks_topic])
        log.info("follow-ups: %d pending, rules %s", len(self.pending),
                 sorted(r.id for rules in self.triggers.values() for r in rules))

    def _new_producer(self) -> Producer:
        producer = Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "transactional.id": f"{self.settings.app_id}-followups-{self.worker_id}",
            "linger.ms": 5, **kafka_io.TRANSACTIONAL_PRODUCER})
        producer.init_transactions(60)
        return producer

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()

    # ------------------------------------------------------------------ cycle
    def cycle(self, now_ms: int | None = None) -> None:
        if not self.enabled or self.consumer is None or self.producer is None:
            return
        msgs = [m for m in self.consumer.consume(1000, 0) if m.error() is None]
        now_ms = now_ms or int(time.time() * 1000)
        # A follow-up falls due only once every input is read up to now: the event that
        # cancels it may be waiting there (after a restart, say).
        next_due = self.pending.next_due_ms()
        due = self.pending.pop_due(now_ms) if (
            not msgs and next_due is not None and next_due <= now_ms and self._caught_up()) else []
        if not msgs and not due:
            return
        before = self.pending.snapshot()
        changes: dict[str, dict[str, Any] | None] = {}
        out: list[tuple[str, bytes, bytes]] = []
        try:
            self.producer.begin_transaction()
            for msg in msgs:
                self._read(msg, changes)
            for fid in due:
                if fid in self.pending:
                    out.append(self._due(self.pending.drop(fid)))
                    changes[fid] = None
            for fid, value in changes.items():
                self.producer.produce(self.pending_topic, key=fid.encode(),
                                      value=None if value is None else json.dumps(value).encode())
            for topic, key, value in out:
                self.producer.produce(topic, key=key, value=value)
            if msgs:
                positions = self.consumer.position(self.consumer.assignment())
                kafka_io.send_offsets(self.producer, [tp for tp in positions if tp.offset >= 0],
                                      self.consumer.consumer_group_metadata())
            kafka_io.commit_transaction(self.producer)
            self.sent += len(out)
        except KafkaException as exc:
            log.warning("follow-ups: transaction failed (%s); reading again from the last commit",
                        exc.args[0] if exc.args else exc)
            self.pending = Pending(before)
            try:
                self.producer = kafka_io.abort_or_renew(self.producer, self._new_producer,
                                                        "follow-ups")
            except KafkaException:
                pass  # the broker is away: the next cycle's transaction tries again
            for tp in self.consumer.committed(self.consumer.assignment(), timeout=30):
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    def _caught_up(self) -> bool:
        """True when this worker reads every input partition (it is the only one: the
        pending follow-ups are not split between workers) and has read each to its end."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        if self._partitions is None:
            meta = self.consumer.list_topics(timeout=10)
            self._partitions = sum(len(meta.topics[t].partitions) for t in
                                   [*self.schema_of, self.outcomes_topic, self.clicks_topic]
                                   if t in meta.topics)
        if len(assignment) < self._partitions:
            log.debug("follow-ups: %d of %d input partitions assigned: not sending",
                      len(assignment), self._partitions)
            return False
        positions = self.consumer.position(assignment)
        unread = [tp for tp in positions if tp.offset < 0]  # nothing fetched yet: where it starts
        if unread:
            start = {(tp.topic, tp.partition): tp.offset
                     for tp in self.consumer.committed(unread, timeout=10)}
            positions = [TopicPartition(tp.topic, tp.partition, start[(tp.topic, tp.partition)])
                         if tp.offset < 0 else tp for tp in positions]
        for tp in positions:
            _low, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            if high > 0 and tp.offset < high:
                log.debug("follow-ups: %s[%d] at %d of %d: not sending", tp.topic, tp.partition,
                          tp.offset, high)
                return False
        return True

    def _read(self, msg: Any, changes: dict[str, dict[str, Any] | None]) -> None:
        topic = msg.topic()
        try:
            if topic in self.schema_of:
                self._event(self.schema_of[topic], avro.decode(self.schema_of[topic], msg.value() or b""),
                            changes)
            elif topic == self.outcomes_topic:
                self._outcome(avro.decode("send_outcome", msg.value() or b""), changes)
            elif topic == self.clicks_topic:
                self._click(avro.decode("click", msg.value() or b""), changes)
        except avro.DecodeError:
            pass  # the router and the sink dead-letter undecodable input; nothing to schedule

    def _event(self, schema: str, event: dict[str, Any], changes: dict[str, dict[str, Any] | None]) -> None:
        if not event.get("event_id") or not event.get("customer_id"):
            return
        for rule in self.cancellers.get(schema, ()):
            assert rule.follow_up is not None
            if not _conditions_hold(rule.follow_up.unless_when, event):
                continue
            for fid in list(self.pending.by_customer.get(event["customer_id"], ())):
                p = self.pending.rows[fid]
                if p["rule_id"] == rule.id and all(
                        str(p["match"].get(f)) == str(event.get(f)) for f in rule.follow_up.match):
                    self.pending.drop(fid)
                    changes[fid] = None
                    self.cancelled += 1
        if follow_up_rule(event):
            return  # a follow-up event itself schedules no further follow-up of its trigger
        for rule in self.triggers.get(schema, ()):
            assert rule.follow_up is not None
            if not event_matches(rule, event):
                continue
            fid = follow_up_id(event["event_id"], rule.id)
            if fid in self.pending:
                continue
            record = {"rule_id": rule.id, "follow_up_rule": rule.follow_up.rule,
                      "customer_id": event["customer_id"], "schema": schema,
                      "due_ms": int(event["occurred_at_ms"]) + rule.follow_up.after_s * 1000,
                      "match": {f: event.get(f) for f in rule.follow_up.match},
                      "request_id": idempotency_key(event["event_id"], rule.id, event["customer_id"]),
                      "message_id": None, "unless_clicked": rule.follow_up.unless_clicked,
                      "event": event}
            self.pending.add(fid, record)
            changes[fid] = record
            self.scheduled += 1

    def _outcome(self, outcome: dict[str, Any], changes: dict[str, dict[str, Any] | None]) -> None:
        if outcome["status"] != "submitted" or not outcome.get("message_id"):
            return
        fid = self.pending.by_request.get(outcome["request_id"])
        if fid is not None:
            changes[fid] = self.pending.sent_as(fid, outcome["message_id"])

    def _click(self, click: dict[str, Any], changes: dict[str, dict[str, Any] | None]) -> None:
        fid = self.pending.by_message.get(click["message_id"])
        if fid is not None:
            self.pending.drop(fid)
            changes[fid] = None
            self.cancelled += 1

    def _due(self, p: dict[str, Any]) -> tuple[str, bytes, bytes]:
        event = dict(p["event"])
        event["attributes"] = {**(event.get("attributes") or {}), "follow_up_rule": p["follow_up_rule"],
                               "follow_up_of": p["rule_id"]}
        event["event_id"] = f"{event['event_id']}~{p['follow_up_rule']}"
        event["occurred_at_ms"] = int(time.time() * 1000)
        topic = self.topic_of[p["schema"]]
        return topic, str(p["customer_id"]).encode(), avro.encode(p["schema"], event)


def _conditions_hold(conditions: Any, event: dict[str, Any]) -> bool:
    return all(condition_holds(c, event) for c in conditions)

