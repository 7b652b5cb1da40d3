"""The sender stage's worker: moves requests through the decision chain to the gateway.

Exactly-once with Kafka transactions, at-most-once on the wire for marketing:

* Each cycle runs one Kafka transaction that records the results of submits that
  finished, publishes receipts, inbound replies and consent changes, decides newly
  consumed and newly due held requests, moves a rate-limited slice of the send queue
  to "on the wire" (ledger entries), and commits the input offsets. Only after that
  commit are the slice's submit_sm sent.
* State (dedup ledger, queue, holds, caps, receipt correlation) lives in memory per
  input partition and in a compacted changelog written in the same transaction.
* After a crash the new owner of a partition restores it: queued requests are queued
  again (they never reached the wire); requests that were on the wire with no recorded
  result are *in doubt*: transactional ones are sent again (a payment reminder must
  not be lost), marketing ones end as failed/in_doubt_not_resent (a duplicate promotion
  is worse than a missing one).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import signal
import struct
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connectors.gateway import Gateway, GatewayInbound, GatewayReceipt, OutboundSms, SubmitResult
from pipeline import avro, topics
from pipeline.deadletter import dead_letter
from pipeline.sender.caps import CapState, record_send
from pipeline.sender.consent import ConsentState, apply_change
from pipeline.sender.content import check_content
from pipeline.sender.core import Send, SenderPolicy, decide
from pipeline.sender.decision import Reject
from pipeline.sender.dedup import LedgerEntry, record
from pipeline.sender.expiry import Hold, check_expiry
from pipeline.sender.numbers import normalise
from pipeline.sender.stop_words import consent_changes_for_stop
from pipeline.sender.throttle import PriorityGate, TokenBucket
from pipeline.settings import Settings
from pipeline.sms.encoding import encode_sms
from pipeline.state.store import PartitionedStore, read_partitions, watermarks

log = logging.getLogger(__name__)

LEDGER, QUEUED, WIRE, CONTENT, CAPS, HOLD, GATEWAY_ID = b"L", b"Q", b"W", b"C", b"F", b"H", b"G"
FINAL_RECEIPT_STATES = frozenset({"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED"})
_UNTIL = struct.Struct("<q")
UNCORRELATED_RECEIPT_WAIT_MS = 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Job:
    """A request cleared to send, waiting for (or on) the wire."""

    partition: int
    request: dict[str, Any]
    raw: bytes
    send: Send
    attempts: int = 1
    not_before_ms: int = 0
    epoch: int = 0  # the partition's ownership epoch when the job went on the wire


@dataclass
class SenderStats:
    """What the worker did since start; printed on exit and readable by the benchmark."""

    outcomes: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    receipts: int = 0
    inbound: int = 0
    resent_in_doubt: int = 0
    cycles: int = 0
    transactions: int = 0
    commit_s: float = 0.0
    transaction_s: float = 0.0
    longest_transaction_s: float = 0.0

    def count(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


class ConsentView:
    """Every worker's read-only view of all consent (a global table over the consent topic)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.CONSENT)
        self.bootstrap = settings.kafka_bootstrap
        self.states: dict[str, ConsentState] = {}
        self.consumer: Consumer | None = None

    def load(self) -> int:
        """Read the whole consent topic; then keep following it with `poll()`."""
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"consent-view-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        })
        meta = consumer.list_topics(self.topic, timeout=15).topics[self.topic]
        partitions = list(meta.partitions)
        ends = {}
        for p in partitions:
            ends[p] = watermarks(consumer, self.topic, p)[1]
        for _p, _key, value in read_partitions(self.bootstrap, self.topic, partitions):
            self._apply(value)
        consumer.assign([TopicPartition(self.topic, p, ends[p]) for p in partitions])
        self.consumer = consumer
        return len(self.states)

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            change = avro.decode("consent_change", value)
            self.states[change["phone"]] = apply_change(self.states.get(change["phone"]), change)
        except Exception as exc:  # a bad consent record must not stop sending
            log.warning("ignoring unreadable consent record: %s", exc)

    def apply_local(self, change: dict[str, Any]) -> None:
        self.states[change["phone"]] = apply_change(self.states.get(change["phone"]), change)

    def poll(self) -> None:
        if self.consumer is None:
            return
        for msg in self.consumer.consume(1000, 0):
            if not msg.error():
                self._apply(msg.value())

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


class SenderWorker:
    """One sender process: a transactional consume → decide → send loop over both lanes."""

    def __init__(self, settings: Settings, policy: SenderPolicy, gateway: Gateway,
                 route_rate: float, worker_id: str = "0", max_in_flight: int = 1024,
                 cycle_s: float = 0.02) -> None:
        self.settings = settings
        self.policy = policy
        self.gateway = gateway
        self.worker_id = worker_id
        # Priority is decided in `queue`; whatever is on the wire waits in the gateway's
        # FIFO window. Put more there than the gateway can have unanswered and a slow SMSC
        # makes a payment reminder wait behind a marketing backlog: so keep the wire to
        # twice the gateway's window (enough to keep the window full between cycles).
        route = getattr(gateway, "route", None)
        window = int(getattr(route, "binds", 0) or 0) * int(getattr(route, "window", 0) or 0)
        self.max_in_flight = min(max_in_flight, 2 * window) if window > 0 else max_in_flight
        self.cycle_s = cycle_s
        self.stats = SenderStats()
        self.lane_topics = {
            settings.topic(topics.REQUESTS_TRANSACTIONAL): "transactional",
            settings.topic(topics.REQUESTS_MARKETING): "marketing",
        }
        self.group = f"{settings.app_id}-sender"
        self.store = PartitionedStore(settings.kafka_bootstrap, f"{self.group}-state-changelog",
                                      settings.partitions)
        self.consent = ConsentView(settings)
        self.bucket = TokenBucket(route_rate, max(1.0, route_rate / 10))
        self.queue: PriorityGate[Job] = PriorityGate()
        self.holds: list[tuple[int, int, str]] = []  # (until_ms, partition, request_id)
        self.gateway_ids: dict[str, tuple[int, str, int, int]] = {}  # gw id -> (p, msg id, seg, n)
        self.finished: deque[tuple[Job, SubmitResult]] = deque()
        self.events: deque[GatewayReceipt | GatewayInbound] = deque()
        self.pending_receipts: deque[tuple[int, GatewayReceipt]] = deque()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.owned: set[int] = set()
        # Bumped whenever a partition is given up: a submit that was on the wire before
        # then is the next owner's (in doubt) and its late result must not be recorded.
        self.epochs: dict[int, int] = {}
        self.stopping = False
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self._pending_in_doubt: list[tuple[int, dict[str, Any]]] = []
        self._consumer_failed: KafkaError | None = None

    # ---------------------------------------------------------------- set-up
    def _connect(self) -> None:
        s = self.settings
        self.producer = Producer({
            "bootstrap.servers": s.kafka_bootstrap,
            "transactional.id": f"{self.group}-{self.worker_id}",
            "linger.ms": 2,
            "compression.type": "lz4",
            "transaction.timeout.ms": 60_000,
        })
        self.producer.init_transactions(30)
        self.consumer = self._new_consumer()

    def _new_consumer(self) -> Consumer:
        s = self.settings
        consumer = Consumer({
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": self.group,
            # Static membership: a restarted worker takes its old place without a rebalance.
            "group.instance.id": f"{self.group}-{self.worker_id}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": 120_000,
            "fetch.wait.max.ms": 10,
            "error_cb": self._on_consumer_error,
        })
        consumer.subscribe(list(self.lane_topics), on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_revoke)
        return consumer

    def _on_consumer_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() == KafkaError._FATAL:
            self._consumer_failed = error

    def _rejoin(self, error: Any) -> None:
        """Replace a consumer that failed fatally (e.g. a static member fenced after its
        session timed out while the broker was away): give up its partitions, as a
        rebalance would, and join the group again with a new consumer."""
        assert self.consumer is not None
        log.error("consumer failed fatally (%s); joining the group again", error)
        self._on_revoke(self.consumer, [TopicPartition("", p) for p in set(self.owned)])
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError):
            pass
        self.consumer = self._new_consumer()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions} - self.owned
        if not new:
            return
        self.store.restore(new)
        self.owned |= new
        self._recover(new)
        log.info("sender %s owns partitions %s", self.worker_id, sorted(self.owned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        if not gone & self.owned:
            return
        self.owned -= gone
        for p in gone:
            self.epochs[p] = self.epochs.get(p, 0) + 1
        self.store.drop(gone)
        self._pending_in_doubt = [x for x in self._pending_in_doubt if x[0] not in gone]
        self.queue = _filtered(self.queue, lambda job: job.partition not in gone)
        self.holds = [h for h in self.holds if h[1] not in gone]
        heapq.heapify(self.holds)
        self.gateway_ids = {k: v for k, v in self.gateway_ids.items() if v[0] not in gone}

    def _recover(self, partitions: set[int]) -> None:
        """Rebuild queue, holds and receipt index of `partitions` from restored state."""
        for p in partitions:
            for key, value in self.store.items(p):
                kind, rest = key[:1], key[1:]
                if kind == HOLD:
                    heapq.heappush(self.holds, (_UNTIL.unpack_from(value)[0], p, rest.decode()))
                elif kind == GATEWAY_ID:
                    msg_id, seg, total = value.decode().split("|")
                    self.gateway_ids[rest.decode()] = (p, msg_id, int(seg), int(total))
                elif kind == QUEUED:
                    self._requeue(p, value, attempts=1)
                elif kind == WIRE:
                    request = avro.decode("notification_request", value)
                    if request["lane"] == "transactional":
                        self.stats.resent_in_doubt += 1
                        self._requeue(p, value, attempts=2)
                    else:
                        self._pending_in_doubt.append((p, request))

    def _requeue(self, partition: int, raw: bytes, attempts: int) -> None:
        request = avro.decode("notification_request", raw)
        number = normalise(request["phone"], request["country"] or "RU", self.policy.allowed_regions)
        verdict = check_content(request["text"], request["lane"], request["sender_id"],
                                self.policy.content, request["allow_transliteration"])
        if isinstance(number, Reject) or isinstance(verdict, Reject):  # config changed since
            self._pending_in_doubt.append((partition, request))
            return
        job = Job(partition, request, raw, Send(number, verdict, None), attempts)
        self.queue.push(job, request["lane"], request["priority"])

    # ------------------------------------------------------------ main loop
    async def run(self, stop_after_idle_s: float | None = None) -> SenderStats:
        """Run until SIGTERM/SIGINT (or idle for `stop_after_idle_s`); returns the stats."""
        self.store.ensure_topic()
        self.consent.load()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass
        await self.gateway.start()
        events_task = asyncio.create_task(self._pump_events())
        await asyncio.to_thread(self._connect)
        last_activity = time.monotonic()
        try:
            while not self.stopping:
                busy = await self._cycle()
                if busy:
                    last_activity = time.monotonic()
                elif stop_after_idle_s and time.monotonic() - last_activity > stop_after_idle_s:
                    break
                await asyncio.sleep(0 if busy else self.cycle_s)
            await self._drain()
        finally:
            events_task.cancel()
            await self.gateway.close()
            if self.consumer is not None:
                self.consumer.close()
            self.consent.close()
        return self.stats

    def stop(self) -> None:
        self.stopping = True

    async def _pump_events(self) -> None:
        async for event in self.gateway.events():
            self.events.append(event)

    async def _drain(self, timeout: float = 10.0) -> None:
        """On a clean stop: wait for submits on the wire and record their results."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(self._transaction, False, False)

    async def _cycle(self) -> bool:
        """One transaction's worth of work; True when anything happened.

        The transaction runs in a thread: its blocking Kafka calls (commit, offsets) then
        overlap with the event loop's SMPP traffic instead of stalling it.
        """
        assert self.consumer is not None
        dispatch = await asyncio.to_thread(self._transaction, True, True)
        for job in dispatch:
            task = asyncio.create_task(self._submit(job))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        self.stats.cycles += 1
        return bool(dispatch) or bool(self.finished) or bool(self.events)

    # --------------------------------------------------------- transaction
    def _transaction(self, consume: bool, dispatch: bool) -> list[Job]:
        assert self.producer is not None and self.consumer is not None
        producer = self.producer
        msgs = self.consumer.consume(1000, 0) if consume else []
        fatal = self._consumer_failed or next(
            (m.error() for m in msgs if m.error() is not None
             and (m.error().fatal() or m.error().code() == KafkaError._FATAL)), None)
        if fatal is not None:
            self._consumer_failed = None
            self._rejoin(fatal)
            return []
        self.consent.poll()
        now = now_ms()
        if not (msgs or self.finished or self.events or self.pending_receipts
                or self._pending_in_doubt or (self.holds and self.holds[0][0] <= now)
                or (dispatch and self.queue)):
            return []
        # Receipts and replies this transaction publishes: put back if it aborts.
        taken: list[GatewayReceipt | GatewayInbound] = []
        while self.events:
            taken.append(self.events.popleft())
        waiting_before = deque(self.pending_receipts)
        began = time.monotonic()
        producer.begin_transaction()
        try:
            self._record_results(producer, now)
            self._handle_events(producer, now, taken)
            for p, request in self._pending_in_doubt:
                self._finish(producer, p, request, Reject("failed", "in_doubt_not_resent",
                             "on the wire when a worker stopped; marketing is not resent"), None, now)
                self.store.delete(producer, p, WIRE + request["request_id"].encode())
            self._pending_in_doubt = []
            for msg in msgs:
                self._handle_request(producer, msg, now)
            self._release_holds(producer, now)
            out = self._take_for_wire(producer, now) if dispatch else []
            if msgs:
                positions = self.consumer.position(self.consumer.assignment())
                producer.send_offsets_to_transaction(
                    [tp for tp in positions if tp.offset >= 0],
                    self.consumer.consumer_group_metadata(), 30)
            started = time.monotonic()
            _commit(producer)
            ended = time.monotonic()
            self.stats.commit_s += ended - started
            self.stats.transactions += 1
            self.stats.transaction_s += ended - began
            self.stats.longest_transaction_s = max(self.stats.longest_transaction_s, ended - began)
        except KafkaException:
            log.exception("transaction failed; aborting and rewinding to the last commit")
            self.events.extendleft(reversed(taken))
            self.pending_receipts = waiting_before
            _abort(producer)
            self._rewind()
            return []
        return out

    def _rewind(self) -> None:
        """After an abort, re-read input from the committed offsets and restore state."""
        assert self.consumer is not None
        owned = set(self.owned)
        self._on_revoke(self.consumer, [TopicPartition("", p) for p in owned])
        committed = self.consumer.committed(self.consumer.assignment(), timeout=30)
        for tp in committed:
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
        self._on_assign(self.consumer, [TopicPartition("", p) for p in owned])

    def _handle_request(self, producer: Producer, msg: Any, now: int) -> None:
        p = msg.partition()
        if msg.error():
            return
        raw = msg.value()
        try:
            request = avro.decode("notification_request", raw or b"")
        except avro.DecodeError as exc:
            self._dead_letter(producer, msg, exc.reason, str(exc))
            return
        problem = invalid_request(request)
        if problem:
            self._dead_letter(producer, msg, "invalid_request", problem)
            return
        self._decide(producer, p, request, raw, now)

    def _dead_letter(self, producer: Producer, msg: Any, reason: str, error: str) -> None:
        record_ = dead_letter("sender", reason, error, msg.topic(), msg.partition(), msg.offset(),
                              msg.key(), msg.value())
        producer.produce(self.settings.topic(topics.DEAD_LETTERS), key=msg.key(),
                         value=avro.encode("dead_letter", record_))
        self.stats.count(f"dead_letter:{reason}")

    def _decide(self, producer: Producer, p: int, request: dict[str, Any], raw: bytes, now: int) -> None:
        decision = decide(request, self.policy, _View(self, p), now)
        rid = request["request_id"].encode()
        if isinstance(decision, Reject):
            self._finish(producer, p, request, decision, None, now)
        elif isinstance(decision, Hold):
            self.store.put(producer, p, HOLD + rid, _UNTIL.pack(decision.until_ms) + raw)
            heapq.heappush(self.holds, (decision.until_ms, p, request["request_id"]))
            self.stats.count(f"held:{decision.reason}")
        else:
            window = request["dedup_window_s"]
            self.store.put(producer, p, LEDGER + rid, record("sending", now, window).to_bytes())
            self.store.put(producer, p, QUEUED + rid, raw)
            if decision.content_key:
                self.store.put(producer, p, CONTENT + decision.content_key.encode(),
                               record("sending", now, window).to_bytes())
            lane = request["lane"]
            if lane in self.policy.caps:
                caps_key = CAPS + lane[:1].encode() + decision.number.e164.encode()
                current = self.store.get(p, caps_key)
                state = record_send(CapState.from_bytes(current) if current else None, now,
                                    self.policy.caps[lane])
                self.store.put(producer, p, caps_key, state.to_bytes())
            self.queue.push(Job(p, request, raw, decision), lane, request["priority"])

    def _release_holds(self, producer: Producer, now: int) -> None:
        while self.holds and self.holds[0][0] <= now:
            _until, p, rid = heapq.heappop(self.holds)
            value = self.store.get(p, HOLD + rid.encode())
            if value is None:
                continue
            self.store.delete(producer, p, HOLD + rid.encode())
            raw = value[_UNTIL.size:]
            self._decide(producer, p, avro.decode("notification_request", raw), raw, now)

    def _take_for_wire(self, producer: Producer, now: int) -> list[Job]:
        """Move a rate-limited, priority-ordered slice of the queue onto the wire."""
        out: list[Job] = []
        budget = self.max_in_flight - len(self.in_flight)
        now_s = time.monotonic()
        deferred: list[Job] = []
        while budget > 0 and self.queue:
            job = self.queue.peek()
            assert job is not None
            if job.not_before_ms > now:
                deferred.append(self.queue.pop())  # type: ignore[arg-type]
                continue
            gone = check_expiry(job.request, now)
            if gone is not None:
                self.queue.pop()
                self._finish(producer, job.partition, job.request, gone, None, now)
                self.store.delete(producer, job.partition, QUEUED + job.request["request_id"].encode())
                continue
            if self.bucket.try_take(now_s, job.send.verdict.encoded.segments) > 0:
                break
            self.queue.pop()
            rid = job.request["request_id"].encode()
            self.store.delete(producer, job.partition, QUEUED + rid)
            self.store.put(producer, job.partition, WIRE + rid, job.raw)
            job.epoch = self.epochs.get(job.partition, 0)
            out.append(job)
            budget -= 1
        for job in deferred:
            self.queue.push(job, job.request["lane"], job.request["priority"])
        return out

    async def _submit(self, job: Job) -> None:
        request = job.request
        encoded = encode_sms(job.send.verdict.text_to_send,
                             zlib.crc32(request["request_id"].encode()) & 0xFF)
        sms = OutboundSms(
            message_id=request["request_id"],
            source=request["sender_id"],
            destination=job.send.number.e164,
            data_coding=encoded.data_coding,
            esm_class=encoded.esm_class,
            parts=encoded.short_messages(),
            priority=1 if request["lane"] == "transactional" else 0,
        )
        try:
            result = await self.gateway.send(sms)
        except Exception as exc:  # a gateway bug must not lose the message
            log.exception("gateway send raised")
            result = SubmitResult(request["request_id"], [], False, 0, f"in_doubt: {exc}", True)
        self.finished.append((job, result))

    def _record_results(self, producer: Producer, now: int) -> None:
        while self.finished:
            job, result = self.finished.popleft()
            p, request = job.partition, job.request
            if p not in self.owned or job.epoch != self.epochs.get(p, 0):
                continue  # the partition moved (maybe back): its owner treats the send as in doubt
            rid = request["request_id"].encode()
            if result.ok:
                self.store.delete(producer, p, WIRE + rid)
                self.store.put(producer, p, LEDGER + rid,
                               record("sent", now, request["dedup_window_s"]).to_bytes())
                total = len(result.gateway_message_ids)
                for i, gw_id in enumerate(result.gateway_message_ids, 1):
                    self.gateway_ids[gw_id] = (p, request["request_id"], i, total)
                    self.store.put(producer, p, GATEWAY_ID + gw_id.encode(),
                                   f"{request['request_id']}|{i}|{total}".encode())
                self._outcome(producer, request, "submitted", None, None, job, result, now)
                self.stats.submitted += 1
            elif result.retryable and not (result.error or "").startswith("in_doubt"):
                self.store.delete(producer, p, WIRE + rid)
                self.store.put(producer, p, QUEUED + rid, job.raw)
                job.not_before_ms = now + min(5000, 200 * job.attempts)
                job.attempts += 1
                self.queue.push(job, request["lane"], request["priority"])
            elif result.retryable and request["lane"] == "transactional":
                self.stats.resent_in_doubt += 1
                job.attempts += 1
                self.queue.push(job, request["lane"], request["priority"])
                self.store.delete(producer, p, WIRE + rid)
                self.store.put(producer, p, QUEUED + rid, job.raw)
            else:
                self.store.delete(producer, p, WIRE + rid)
                reason = "in_doubt_not_resent" if result.retryable else "gateway_rejected"
                self._finish(producer, p, request,
                             Reject("failed", reason, result.error or f"status {result.status}"),
                             job, now, result)

    def _finish(self, producer: Producer, p: int, request: dict[str, Any], reject: Reject,
                job: Job | None, now: int, result: SubmitResult | None = None) -> None:
        rid = request["request_id"].encode()
        if reject.reason != "duplicate":
            self.store.put(producer, p, LEDGER + rid,
                           record("final", now, request["dedup_window_s"]).to_bytes())
        self._outcome(producer, request, reject.status, reject.reason, reject.detail, job, result, now)

    def _outcome(self, producer: Producer, request: dict[str, Any], status: str, reason: str | None,
                 detail: str | None, job: Job | None, result: SubmitResult | None, now: int) -> None:
        number = job.send.number if job else None
        verdict = job.send.verdict if job else None
        outcome = {
            "request_id": request["request_id"],
            "message_id": request["request_id"],
            "status": status,
            "reason": reason,
            "detail": detail,
            "lane": request["lane"],
            "rule_id": request["rule_id"],
            "template_id": request["template_id"],
            "variant": request["variant"],
            "campaign_id": request["campaign_id"],
            "customer_id": request["customer_id"],
            "phone": number.e164 if number else None,
            "region": number.region if number else None,
            "operator": number.operator if number else None,
            "gateway": getattr(self.gateway, "name", None) if result else None,
            "gateway_message_ids": list(result.gateway_message_ids) if result else [],
            "segments": verdict.encoded.segments if verdict and status == "submitted" else 0,
            "encoding": verdict.encoded.encoding if verdict else None,
            "cost": verdict.cost if verdict and status == "submitted" else 0.0,
            "event_occurred_at_ms": request["event_occurred_at_ms"],
            "decided_at_ms": now,
            "attempts": job.attempts if job else 1,
        }
        producer.produce(self.settings.topic(topics.OUTCOMES), key=request["request_id"].encode(),
                         value=avro.encode("send_outcome", outcome))
        self.stats.count(status if reason is None else f"{status}:{reason}")

    def _handle_events(self, producer: Producer, now: int,
                       taken: list[GatewayReceipt | GatewayInbound]) -> None:
        for event in taken:
            if isinstance(event, GatewayReceipt):
                self.pending_receipts.append((now, event))
            else:
                self._inbound(producer, event, now)
        waiting: deque[tuple[int, GatewayReceipt]] = deque()
        while self.pending_receipts:
            arrived, receipt = self.pending_receipts.popleft()
            known = self.gateway_ids.get(receipt.gateway_message_id)
            if known is None:
                if now - arrived < UNCORRELATED_RECEIPT_WAIT_MS:
                    waiting.append((arrived, receipt))
                else:
                    log.warning("receipt for unknown SMSC id %s dropped after %d ms",
                                receipt.gateway_message_id, UNCORRELATED_RECEIPT_WAIT_MS)
                    self.stats.count("receipt:uncorrelated")
                continue
            p, message_id, seg, total = known
            producer.produce(self.settings.topic(topics.RECEIPTS), key=message_id.encode(),
                             value=avro.encode("delivery_receipt", {
                                 "message_id": message_id,
                                 "gateway_message_id": receipt.gateway_message_id,
                                 "state": receipt.state,
                                 "error_code": receipt.error_code,
                                 "segment": seg,
                                 "segments": total,
                                 "received_at_ms": receipt.received_at_ms,
                                 "gateway": getattr(self.gateway, "name", None),
                             }))
            self.stats.receipts += 1
            if receipt.state in FINAL_RECEIPT_STATES and p in self.owned:
                self.gateway_ids.pop(receipt.gateway_message_id, None)
                self.store.delete(producer, p, GATEWAY_ID + receipt.gateway_message_id.encode())
        self.pending_receipts = waiting

    def _inbound(self, producer: Producer, event: GatewayInbound, now: int) -> None:
        number = normalise(event.source, "RU", self.policy.allowed_regions | frozenset({"ZZ"}))
        sender = number.e164 if not isinstance(number, Reject) else event.source
        inbound = {
            "inbound_id": uuid.uuid4().hex,
            "from_number": sender,
            "to": event.destination,
            "text": event.text,
            "received_at_ms": event.received_at_ms,
            "gateway": getattr(self.gateway, "name", None),
        }
        producer.produce(self.settings.topic(topics.INBOUND), key=sender.encode(),
                         value=avro.encode("inbound_message", inbound))
        self.stats.inbound += 1
        for change in consent_changes_for_stop(inbound, now, self.policy.stop_words):
            producer.produce(self.settings.topic(topics.CONSENT),
                             key=f"{change['phone']}|{change['scope']}".encode(),
                             value=avro.encode("consent_change", change))
            self.consent.apply_local(change)
            self.stats.count("opt_out:sms_reply")


def invalid_request(request: dict[str, Any]) -> str | None:
    """Why a decoded notification request cannot be decided at all, or None when it can.

    Such a request gets no outcome (it has no usable id or lane): it is dead-lettered.
    """
    if not request["request_id"]:
        return "request_id is empty"
    if request["lane"] not in ("transactional", "marketing"):
        return f"unknown lane {request['lane'][:40]!r}"
    return None


class _View:
    """The decision chain's read access to one partition's state."""

    __slots__ = ("worker", "p")

    def __init__(self, worker: SenderWorker, p: int) -> None:
        self.worker, self.p = worker, p

    def consent(self, e164: str) -> ConsentState | None:
        return self.worker.consent.states.get(e164)

    def ledger(self, request_id: str) -> LedgerEntry | None:
        value = self.worker.store.get(self.p, LEDGER + request_id.encode())
        return LedgerEntry.from_bytes(value) if value else None

    def content_entry(self, key: str) -> LedgerEntry | None:
        value = self.worker.store.get(self.p, CONTENT + key.encode())
        return LedgerEntry.from_bytes(value) if value else None

    def cap_state(self, e164: str, lane: str) -> CapState | None:
        value = self.worker.store.get(self.p, CAPS + lane[:1].encode() + e164.encode())
        return CapState.from_bytes(value) if value else None


def _commit(producer: Producer, attempts: int = 3) -> None:
    """Commit the open transaction, retrying what librdkafka says may be retried
    (a broker that restarts makes a commit time out; committing again is safe)."""
    for attempt in range(attempts):
        try:
            producer.commit_transaction(30)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if attempt + 1 == attempts or not err.retriable() or err.txn_requires_abort():
                raise


def _abort(producer: Producer, attempts: int = 10) -> None:
    """Abort the open transaction; retriable failures (broker away) are retried, a fatal
    one (fenced by a newer instance) is raised: this worker must then stop."""
    for attempt in range(attempts):
        try:
            producer.abort_transaction(30)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if attempt + 1 == attempts or err.fatal() or not err.retriable():
                raise
            log.warning("abort failed (%s); retrying", err)
            time.sleep(1.0)


def _filtered(queue: PriorityGate[Job], keep: Any) -> PriorityGate[Job]:
    out: PriorityGate[Job] = PriorityGate()
    while queue:
        job = queue.pop()
        if job is not None and keep(job):
            out.push(job, job.request["lane"], job.request["priority"])
    return out
