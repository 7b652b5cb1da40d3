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
* A worker that loses its partitions without dying (a broker outage longer than the
  session timeout, an aborted transaction) keeps what it sent and the answers it got:
  each on-the-wire entry carries a token of the process that sent it, so when the
  partition comes back with that entry untouched the answer is recorded, not doubted.
* Receipts and replies are acknowledged to the gateway only after the transaction that
  recorded them committed (`GatewayReceipt.ack`); one the gateway sends again is
  recognised (`replies.ReceiptBook`, `replies.InboundBook`) and recorded once.
* A request delivered again (a replay, a router restart) gets no second outcome: it is
  counted and published on `sms.redeliveries` instead.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import signal
import struct
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connectors.gateway import Gateway, GatewayInbound, GatewayReceipt, OutboundSms, SubmitResult
from pipeline import avro, kafka_io, metrics, topics
from pipeline.deadletter import dead_letter
from pipeline.errors import ConfigError
from pipeline.releases import LiveConfig
from pipeline.sender import layout
from pipeline.sender.caps import CapState, record_send
from pipeline.sender.consent import ConsentState, ConsentTable
from pipeline.sender.content import check_content
from pipeline.sender.core import Send, SenderPolicy, decide
from pipeline.sender.decision import Reject
from pipeline.sender.dedup import LedgerEntry, record
from pipeline.sender.expiry import Hold, check_expiry
from pipeline.sender.forwarding import ForwardedReceipts, Key, ToClaim, key_bytes
from pipeline.sender.forwarding import park_value as _park_value
from pipeline.sender.forwarding import unpark as _unpark
from pipeline.sender.layout import CAPS, CONTENT, GATEWAY_ID, HOLD, LEDGER, PARKED
from pipeline.sender.numbers import normalise
from pipeline.sender.replies import FINAL_RECEIPT_STATES, InboundBook, Part, ReceiptBook
from pipeline.sender.setup import load_policy
from pipeline.sender.stop_words import consent_changes_for_stop
from pipeline.sender.throttle import PriorityGate, TokenBucket
from pipeline.settings import Settings
from pipeline.sms.encoding import encode_sms
from pipeline.state.store import PartitionedStore, collector_paused, read_batches, watermarks

log = logging.getLogger(__name__)

# State keys: pipeline.sender.layout. PARKED: a receipt acknowledged before its SMSC id was
# known, <id>\0<state>.
LEGACY = frozenset({layout.LEGACY_QUEUED, layout.LEGACY_WIRE, layout.LEGACY_RECEIPT_DONE})
PARK_RECEIPT_AFTER_MS = 2_000
_UNTIL = struct.Struct("<q")
UNCORRELATED_RECEIPT_WAIT_MS = 60_000
SESSION_TIMEOUT_MS = 10_000  # the consumer group's: a dead worker's partitions move after it
# A receipt for an SMSC id this worker does not know may be one a worker that died had
# recorded but not acknowledged; its marker, which recognises the copy, reaches a survivor
# only with the dead worker's partitions: after its session times out, the group rebalances
# and the state is restored. Published without a message id before then, it would be
# recorded twice (test_faults_rebalance.py::test_joiner_dies_inside_a_transaction_and_
# never_returns[exit_after_commit]), so the wait is never shorter than this.
MIN_UNCORRELATED_RECEIPT_WAIT_MS = 3 * SESSION_TIMEOUT_MS


def receipt_wait_ms(seconds: str | float) -> int:
    """RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S in milliseconds; ConfigError below the minimum."""
    try:
        ms = int(float(seconds) * 1000)
    except ValueError:
        ms = -1
    if ms < MIN_UNCORRELATED_RECEIPT_WAIT_MS:
        raise ConfigError(
            [f"RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S={seconds} is not a number of seconds of at "
             f"least {MIN_UNCORRELATED_RECEIPT_WAIT_MS // 1000}: a receipt a dead sender had "
             "recorded could be recorded again before its partitions reach a live one"],
            hint=f"set it to {MIN_UNCORRELATED_RECEIPT_WAIT_MS // 1000} or more, or unset it "
                 f"(default {UNCORRELATED_RECEIPT_WAIT_MS // 1000})")
    return ms


def marketing_waiting_max(raw: str | int) -> int:
    """RASSYLKA_MARKETING_WAITING_MAX as a count; ConfigError unless a whole number >= 1."""
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(
            [f"RASSYLKA_MARKETING_WAITING_MAX={raw} is not a whole number of at least 1: it is "
             "how many marketing requests a sender holds consumed and undecided before it "
             "pauses the marketing lane"],
            hint=f"set it to a count such as {MARKETING_WAITING_MAX}, or unset it")
    return count


# Test hooks (RASSYLKA_SENDER_FAULT): die right before / right after committing a
# transaction that recorded receipts or replies, i.e. in the gaps an ack must not cross.
FAULTS = frozenset({"exit_before_commit", "exit_after_commit"})
PARKED_RESULT_KEEP_MS = 600_000  # answers for partitions away this long are given up
CONSUME_MAX = 1000  # requests one consume takes from the lanes
MARKETING_AHEAD_S = 0.2
"""Marketing requests decided and queued ahead of the route: this many seconds of its rate
(at least MARKETING_AHEAD_MIN). The rest of a backlog waits undecided in `inbox`, so no
transaction decides a thousand promotions while a payment reminder waits behind it
(`test_a_marketing_backlog_is_taken_as_the_route_drains_it`)."""
MARKETING_AHEAD_MIN = 64
MARKETING_WAITING_MAX = 20_000
"""Marketing requests held in `inbox` before the sender pauses the marketing lane; it
resumes at half as many. This bounds the memory a campaign's backlog takes: at most this
plus one consume (CONSUME_MAX), besides librdkafka's prefetch
(`test_a_marketing_backlog_held_in_memory_is_bounded`). The two levels are far apart because
each pause drops the lane's prefetched records, which are fetched again on resume."""
STATS_EVERY_S = 30.0  # the info line of what the worker did


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
    token: bytes = b""  # written with the job on the wire: this process sent it
    result: SubmitResult | None = None  # the gateway's answer, once it came
    answered_ms: int = 0


@dataclass
class SenderStats:
    """What the worker did since start; printed on exit and readable by the benchmark."""

    outcomes: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    receipts: int = 0
    receipts_uncorrelated: int = 0
    receipts_repeated: int = 0  # sent again by the gateway, already recorded
    receipts_forwarded: int = 0  # reached this sender, their SMSC id unknown here
    receipts_claimed: int = 0  # forwarded by another sender, recorded here
    inbound: int = 0
    inbound_repeated: int = 0
    marketing_waiting_peak: int = 0  # the most marketing requests held undecided at once
    lane_pauses: int = 0  # times the marketing lane was paused for a full inbox
    redelivered_requests: int = 0  # requests delivered again: no second outcome
    answers_kept: int = 0  # answers recorded after the partition came back
    resent_in_doubt: int = 0
    cycles: int = 0
    transactions: int = 0
    state_records: int = 0  # changelog records written (coalesced per transaction)
    commit_s: float = 0.0
    transaction_s: float = 0.0
    longest_transaction_s: float = 0.0

    def count(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def line(self) -> str:
        """One line for the periodic info log."""
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        average = self.transaction_s / self.transactions * 1000 if self.transactions else 0.0
        return (f"{self.submitted} submitted, {self.receipts} receipts "
                f"({self.receipts_uncorrelated} uncorrelated), {self.inbound} replies, "
                f"{self.transactions} transactions (avg {average:.1f} ms); "
                f"{counts or 'no outcomes yet'}")


class ConsentView:
    """Every worker's read-only view of all consent (a global table over the consent topic)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.CONSENT)
        self.bootstrap = settings.kafka_bootstrap
        self.states = ConsentTable()
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
        partitions = topics.ready_partitions(consumer, self.topic)
        ends = {}
        for p in partitions:
            ends[p] = watermarks(consumer, self.topic, p)[1]
        with collector_paused():
            for batch in read_batches(self.bootstrap, self.topic, partitions):
                for msg in batch:
                    if msg.key() is not None and not msg.error():
                        self._apply(msg.value())
        consumer.assign([TopicPartition(self.topic, p, ends[p]) for p in partitions])
        self.consumer = consumer
        return len(self.states)

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            self.states.apply_encoded(value)
        except Exception as exc:  # a bad consent record must not stop sending
            log.warning("ignoring unreadable consent record: %s", exc)

    def apply_local(self, change: dict[str, Any]) -> None:
        self.states.apply(change)

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
                 cycle_s: float = 0.02,
                 uncorrelated_wait_ms: int = UNCORRELATED_RECEIPT_WAIT_MS,
                 fault: str | None = None, live: LiveConfig | None = None,
                 health: metrics.Health | None = None,
                 waiting_max: int = MARKETING_WAITING_MAX) -> None:
        self.settings = settings
        self.policy = policy
        # where the policy came from (a config release or config/), stamped on outcomes;
        # a new release swaps the policy between cycles (routes apply at a restart)
        self.live = live
        self.config_stamp = live.stamp if live else None
        self._next_config_check = 0.0
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
        self.uncorrelated_wait_ms = receipt_wait_ms(uncorrelated_wait_ms / 1000)
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown sender fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        self.fault = fault
        self.stats = SenderStats()
        self.lane_topics = {
            settings.topic(topics.REQUESTS_TRANSACTIONAL): "transactional",
            settings.topic(topics.REQUESTS_MARKETING): "marketing",
        }
        self.group = f"{settings.app_id}-sender"
        self.store = PartitionedStore(settings.kafka_bootstrap, f"{self.group}-state-changelog",
                                      settings.partitions, coalesce=True)
        self.consent = ConsentView(settings)
        self.bucket = TokenBucket(route_rate, max(1.0, route_rate / 10))
        self.queue: PriorityGate[Job] = PriorityGate()
        self.marketing_ahead = max(MARKETING_AHEAD_MIN, int(route_rate * MARKETING_AHEAD_S))
        # marketing requests consumed, not decided yet (their offsets not committed), in
        # order per lane partition
        self.inbox: dict[tuple[str, int], deque[Any]] = {}
        self.waiting_max = waiting_max
        self.lane_paused = False  # the marketing lane, while `inbox` is full
        self._paused: set[tuple[str, int]] = set()  # its partitions this worker paused
        self.holds: list[tuple[int, int, str]] = []  # (until_ms, partition, request_id)
        self.receipts = ReceiptBook()
        self.replies = InboundBook()
        # Every job this process put on the wire whose answer is not committed yet, by
        # request id: answers are kept across a lost partition (see `_recover`).
        self.wire: dict[str, Job] = {}
        self.token = uuid.uuid4().bytes[:8]
        self.finished: deque[Job] = deque()
        self.events: deque[GatewayReceipt | GatewayInbound] = deque()
        self.pending_receipts: deque[tuple[int, GatewayReceipt]] = deque()
        # (SMSC id, state) -> (partition holding it, arrived, receipt): acknowledged early
        self.parked: dict[tuple[str, str], tuple[int, int, GatewayReceipt]] = {}
        # Receipts that came over another sender's bind (`pipeline.sender.forwarding`):
        self.forwards = ForwardedReceipts(settings)
        self.forwarded = ToClaim()  # by others, to look up
        self.sent_forward: set[Key] = set()  # forwarded by this process, not settled yet
        self.claimed: set[Key] = set()  # of those (or of parked ones): recorded elsewhere
        self.in_flight: set[asyncio.Task[None]] = set()
        self.owned: set[int] = set()
        self.stopping = False
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self._pending_in_doubt: list[tuple[int, dict[str, Any]]] = []
        self._legacy: list[tuple[int, bytes]] = []  # restored keys of the old state layout
        self._consumer_failed: KafkaError | None = None
        self._abort_pending = False
        self._rewind_pending: set[int] | None = None
        self._last_sweep_ms = 0
        self.health = health or metrics.Health()  # /healthz, /readyz (pipeline.metrics)
        self.joined = False
        self.health.require("partitions assigned", lambda: self.joined)
        self.health.require("gateway bound", lambda: getattr(self.gateway, "bound", 1) > 0)
        self._tx = metrics.Pending()  # the open transaction's metrics, added on commit
        self._lag = metrics.LagSampler()
        self._next_sample = self._next_stats = 0.0

    # ---------------------------------------------------------------- set-up
    def _connect(self) -> None:
        self.producer = self._new_producer()
        self.consumer = self._new_consumer()

    def _new_producer(self) -> Producer:
        s = self.settings
        producer = Producer({
            "bootstrap.servers": s.kafka_bootstrap,
            "transactional.id": f"{self.group}-{self.worker_id}",
            "linger.ms": 2,
            "compression.type": "lz4",
            **kafka_io.TRANSACTIONAL_PRODUCER,
        })
        producer.init_transactions(60)
        return producer

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
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": 120_000,
            "fetch.wait.max.ms": kafka_io.FETCH_WAIT_MAX_MS,
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
        self.joined = True
        new = {tp.partition for tp in partitions} - self.owned
        if not new:
            return
        self.store.restore(new)
        self.owned |= new
        self._recover(new)
        self.forwarded.reindex(self._knows)
        log.info("sender %s owns partitions %s", self.worker_id, sorted(self.owned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.inbox = {tp: held for tp, held in self.inbox.items() if tp[1] not in gone}
        self._paused = {tp for tp in self._paused if tp[1] not in gone}
        if not gone & self.owned:
            return
        self.owned -= gone
        self.store.drop(gone)
        self._pending_in_doubt = [x for x in self._pending_in_doubt if x[0] not in gone]
        self.queue = _filtered(self.queue, lambda job: job.partition not in gone)
        self.holds = [h for h in self.holds if h[1] not in gone]
        heapq.heapify(self.holds)
        self.receipts.give_up(gone, now_ms())
        self.parked = {k: v for k, v in self.parked.items() if v[0] not in gone}
        self._legacy = [x for x in self._legacy if x[0] not in gone]
        self.forwarded.reindex(self._knows)
        # Jobs on the wire and answers already received stay in `wire`/`finished`: if the
        # partition comes back untouched (a broker outage), they are recorded, not doubted.

    def _recover(self, partitions: set[int]) -> None:
        """Rebuild queue, holds and receipt index of `partitions` from restored state."""
        for p in partitions:
            for key, value in self.store.items(p):
                kind, rest = key[:1], key[1:]
                if kind == LEDGER:
                    if len(value) > layout.ENTRY_SIZE:  # else a bare ledger entry
                        what, token, raw = layout.job(value)
                        if what == layout.QUEUED:
                            self._requeue(p, raw, attempts=1)
                        elif what == layout.ON_WIRE:
                            self._recover_wire(p, rest.decode(), token, raw)
                elif kind == HOLD:
                    heapq.heappush(self.holds, (_UNTIL.unpack_from(value)[0], p, rest.decode()))
                elif kind == GATEWAY_ID:
                    at = layout.done_at(value)
                    if at is None:
                        self.receipts.track(rest.decode(), Part.from_bytes(p, value))
                    else:
                        self.receipts.done[rest.decode()] = (p, at)
                elif kind == PARKED:
                    arrived, receipt = _unpark(rest, value)
                    self.parked[(receipt.gateway_message_id, receipt.state)] = (p, arrived, receipt)
                elif kind in LEGACY:
                    self._legacy.append((p, key))  # rewritten by the next transaction
                    if kind == layout.LEGACY_QUEUED:
                        self._requeue(p, value, attempts=1)
                    elif kind == layout.LEGACY_WIRE:
                        self._recover_wire(p, rest.decode(), *layout.legacy_wire(value))
                    else:
                        self.receipts.done[rest.decode()] = (p, _UNTIL.unpack_from(value)[0])

    def _recover_wire(self, p: int, rid: str, token: bytes, raw: bytes) -> None:
        """A request the restored state has on the wire: its answer, or the in-doubt policy."""
        mine = self.wire.get(rid)
        if mine is not None and token and mine.token == token:
            # Sent by this very process and untouched since: its answer (now or later) is
            # recorded as usual.
            self.stats.answers_kept += 1
            if mine.result is not None and all(j is not mine for j in self.finished):
                self.finished.append(mine)
            return
        request = avro.decode("notification_request", raw)
        if request["lane"] == "transactional":
            self.stats.resent_in_doubt += 1
            self._requeue(p, raw, attempts=2)
        else:
            self._pending_in_doubt.append((p, request))

    def _rewrite_legacy(self, producer: Producer, now: int) -> None:
        """Move queue, wire and receipt-marker entries of the old layout to the new one."""
        for p, key in self._legacy:
            value = self.store.get(p, key)
            if p not in self.owned or value is None:
                continue
            ledger, fresh = None, b""
            if key[:1] != layout.LEGACY_RECEIPT_DONE:
                ledger = self.store.get(p, LEDGER + key[1:])
                if ledger is None:  # the request's entry was always written with these
                    raw = layout.legacy_wire(value)[1] if key[:1] == layout.LEGACY_WIRE else value
                    window = avro.decode("notification_request", raw)["dedup_window_s"]
                    fresh = record("sending", now, window).to_bytes()
            new_key, new_value = layout.legacy_rewrite(key, value, ledger, fresh)
            self.store.put(producer, p, new_key, new_value)
            self.store.delete(producer, p, key)
        self._legacy = []

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
    async def run(self) -> SenderStats:
        """Run until SIGTERM/SIGINT (`stop()`); returns the stats."""
        self.store.ensure_topic()
        self.consent.load()
        self.forwards.load(2 * self.uncorrelated_wait_ms + PARK_RECEIPT_AFTER_MS)
        self._load_recent_replies()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass
        await self.gateway.start()
        events_task = asyncio.create_task(self._pump_events())
        await asyncio.to_thread(self._connect)
        metrics.set_config_stamp(self.config_stamp)
        try:
            while not self.stopping:
                self._maybe_reload()
                self._observe()
                busy = await self._cycle()
                await asyncio.sleep(0 if busy else self.cycle_s)
            await self._drain()
        finally:
            events_task.cancel()
            await self.gateway.close()
            if self.consumer is not None:
                self.consumer.close()
            self.consent.close()
            self.forwards.close()
        return self.stats

    def stop(self) -> None:
        self.stopping = True

    def _observe(self) -> None:
        """Each cycle: the health beat; every few seconds the gauges (between transactions,
        so the consumer is this thread's); every STATS_EVERY_S the info line."""
        self.health.beat()
        now = time.monotonic()
        if now >= self._next_sample:
            self._next_sample = now + metrics.SAMPLE_EVERY_S
            if self.consumer is not None:
                self._lag.sample(self.consumer)
            route = str(getattr(self.gateway, "name", None) or "gateway")
            for lane in self.queue.lanes:
                metrics.QUEUE_DEPTH.labels(lane, route).set(self.queue.pending(lane))
            metrics.IN_FLIGHT.set(len(self.in_flight))
            metrics.MARKETING_WAITING.set(self.marketing_waiting)
            metrics.THROTTLE_RATE.labels(f"{route}/sender").set(self.bucket.rate_per_s)
            for bind, rate in metrics.gateway_rates(self.gateway).items():
                metrics.THROTTLE_RATE.labels(bind).set(rate)
        if now >= self._next_stats:
            if self._next_stats:
                log.info("sender %s: %s; %d queued, %d on the wire, %d marketing waiting",
                         self.worker_id, self.stats.line(), self.queue.pending(),
                         len(self.in_flight), self.marketing_waiting)
            self._next_stats = now + STATS_EVERY_S

    def _maybe_reload(self) -> None:
        """Swap the policy when a config release took effect (or config/ changed)."""
        if self.live is None or time.monotonic() < self._next_config_check:
            return
        self._next_config_check = time.monotonic() + self.live.check_every_s
        change = self.live.changed()
        if change is None:
            return
        folder, stamp = change
        try:
            self.policy, _limits = load_policy(folder)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload rejected, keeping the previous policy: %s", problem)
            return
        self.config_stamp = stamp
        metrics.set_config_stamp(stamp)
        log.info("sender %s: policy reloaded from %s (%s); routes.yaml changes apply at "
                 "the next start", self.worker_id, folder, stamp)

    def _load_recent_replies(self) -> None:
        """Remember the replies recorded in the last dedup window (from `sms.inbound`), so
        that one the SMSC sends again after this worker's predecessor died between its
        commit and its acknowledgement is recognised."""
        topic = self.settings.topic(topics.INBOUND)
        since = now_ms() - self.replies.window_ms
        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": f"replies-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        })
        try:
            meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
            if meta is None or meta.error is not None:
                return
            starts = consumer.offsets_for_times(
                [TopicPartition(topic, p, since) for p in meta.partitions], timeout=15)
            ends = {p: watermarks(consumer, topic, p)[1] for p in meta.partitions}
            todo = {tp.partition: tp.offset for tp in starts
                    if tp.offset >= 0 and tp.offset < ends[tp.partition]}
            if not todo:
                return
            consumer.assign([TopicPartition(topic, p, o) for p, o in todo.items()])
            deadline = time.monotonic() + 30
            while todo and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error():
                        continue
                    try:
                        record = avro.decode("inbound_message", msg.value() or b"")
                        self.replies.remember(record["inbound_id"], record["received_at_ms"])
                    except avro.DecodeError:
                        pass
                for p in list(todo):
                    pos = consumer.position([TopicPartition(topic, p)])[0].offset
                    if pos >= ends[p]:
                        del todo[p]
        finally:
            consumer.close()

    async def _pump_events(self) -> None:
        async for event in self.gateway.events():
            self.events.append(event)

    async def _drain(self, timeout: float = 10.0) -> None:
        """On a clean stop: wait for submits on the wire and record their results."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        try:
            _dispatch, acks = await asyncio.to_thread(self._transaction, False, False)
        except KafkaException as exc:
            log.error("could not record the last answers before stopping (%s); the next "
                      "owner of the partitions treats them as in doubt", exc)
            return
        _acknowledge(acks)

    async def _cycle(self) -> bool:
        """One transaction's worth of work; True when anything happened.

        The transaction runs in a thread: its blocking Kafka calls (commit, offsets) then
        overlap with the event loop's SMPP traffic instead of stalling it. Receipts and
        replies it recorded are acknowledged to the gateway here, after the commit.
        """
        assert self.consumer is not None
        try:
            dispatch, acks = await asyncio.to_thread(self._transaction, True, True)
        except KafkaException as exc:
            # The broker is away (or the producer was fenced and replaced): nothing was
            # committed; keep every answer and event, and try again shortly.
            log.warning("sender %s: Kafka unavailable (%s); keeping %d answers and %d events "
                        "until it is back", self.worker_id, exc.args[0] if exc.args else exc,
                        len(self.finished), len(self.events) + len(self.pending_receipts))
            await asyncio.sleep(1.0)
            return True
        _acknowledge(acks)
        for job in dispatch:
            self.wire[job.request["request_id"]] = job
            task = asyncio.create_task(self._submit(job))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        self.stats.cycles += 1
        return bool(dispatch) or bool(self.finished) or bool(self.events)

    # --------------------------------------------------------- transaction
    def _transaction(self, consume: bool, dispatch: bool) -> tuple[list[Job], list[Callable[[], None]]]:
        """One Kafka transaction; returns the jobs to put on the wire and the acks to send.

        Raises KafkaException only when the broker cannot be reached to abort or rewind:
        the caller retries later with everything kept.
        """
        assert self.producer is not None and self.consumer is not None
        self._finish_failed_transaction()
        producer = self.producer
        msgs = self._take_requests() if consume else []
        fatal = self._consumer_failed or next(
            (m.error() for m in msgs if m.error() is not None
             and (m.error().fatal() or m.error().code() == KafkaError._FATAL)), None)
        if fatal is not None:
            self._consumer_failed = None
            self._rejoin(fatal)
            return [], []
        self.consent.poll()
        now = now_ms()
        self._follow_forwards(now)
        sweep = now - self._last_sweep_ms > 60_000
        if not (msgs or self.finished or self.events or self.pending_receipts
                or self._parked_due(now) or self._forwards_due()
                or self._pending_in_doubt or (self.holds and self.holds[0][0] <= now)
                or (dispatch and self.queue) or sweep or self._legacy):
            return [], []
        self._tx.clear()
        # Receipts, replies and answers this transaction records: put back if it aborts.
        taken: list[GatewayReceipt | GatewayInbound] = []
        while self.events:
            taken.append(self.events.popleft())
        waiting_before = deque(self.pending_receipts)
        recorded: list[Job] = []
        acks: list[Callable[[], None]] = []
        after_commit: list[Callable[[], None]] = []
        began = time.monotonic()
        self.store.discard()  # nothing is left over, but an aborted change must never leak
        try:
            producer.begin_transaction()
            if self._legacy:
                self._rewrite_legacy(producer, now)
            self._record_results(producer, now, recorded)
            self._handle_events(producer, now, taken, acks, after_commit)
            for p, request in self._pending_in_doubt:
                self._finish(producer, p, request, Reject("failed", "in_doubt_not_resent",
                             "on the wire when a worker stopped; marketing is not resent"), None, now)
            self._pending_in_doubt = []
            for msg in msgs:
                self._handle_request(producer, msg, now)
            self._release_holds(producer, now)
            if sweep:
                self._sweep(producer, now)
            out = self._take_for_wire(producer, now) if dispatch else []
            self.stats.state_records += self.store.flush(producer)
            if msgs:
                # up to the first request of each partition still waiting in `inbox`
                positions = [TopicPartition(tp.topic, tp.partition, self.inbox[key][0].offset())
                             if (key := (tp.topic, tp.partition)) in self.inbox else tp
                             for tp in self.consumer.position(self.consumer.assignment())]
                kafka_io.send_offsets(producer, [tp for tp in positions if tp.offset >= 0],
                                      self.consumer.consumer_group_metadata())
            if self.fault == "exit_before_commit" and acks:
                producer.flush(10)  # on the broker, inside the open transaction
                os._exit(137)  # test hook: die with receipts/replies published, not committed
            started = time.monotonic()
            kafka_io.commit_transaction(producer)
            if self.fault == "exit_after_commit" and acks:
                os._exit(137)  # test hook: die with receipts/replies committed, not acked
            ended = time.monotonic()
            self.stats.commit_s += ended - started
            self.stats.transactions += 1
            self.stats.transaction_s += ended - began
            self.stats.longest_transaction_s = max(self.stats.longest_transaction_s, ended - began)
            if kafka_io.slow_transaction(ended - began, len(msgs) + len(recorded)):
                log.warning("sender %s: a transaction took %.0f ms (commit %.0f ms; %d requests, "
                            "%d answers, %d events)", self.worker_id, (ended - began) * 1000,
                            (ended - started) * 1000, len(msgs), len(recorded), len(taken))
            self._tx.commit()
            metrics.TRANSACTION_SECONDS.labels("sender").observe(ended - began)
            if msgs:
                metrics.count_topics(Counter(msg.topic() for msg in msgs))
        except KafkaException as exc:
            log.warning("transaction failed (%s); aborting and rewinding to the last commit",
                        exc.args[0] if exc.args else exc)
            self.events.extendleft(reversed(taken))
            self.pending_receipts = waiting_before
            self.finished.extendleft(reversed(recorded))
            self.store.discard()
            self._abort_pending = True
            self._rewind_pending = set(self.owned)
            self._finish_failed_transaction()
            return [], []
        self._last_sweep_ms = now if sweep else self._last_sweep_ms
        for job in recorded:
            self.wire.pop(job.request["request_id"], None)
        for action in after_commit:
            action()
        return out, acks

    @property
    def marketing_waiting(self) -> int:
        """Marketing requests consumed and not decided yet (in `inbox`)."""
        return sum(len(held) for held in self.inbox.values())

    def _take_requests(self) -> list[Any]:
        """This transaction's requests: every transactional one consumed, and marketing ones
        only as far as the route has room for them.

        Consumed marketing requests wait in `inbox`, undecided and uncommitted, until fewer
        than `marketing_ahead` are queued for the route; a transaction takes at most the
        room left, in turn from each partition. A backlog of more than `waiting_max` pauses
        the lane (`_bound_inbox`), so what is held in memory is bounded.
        """
        assert self.consumer is not None
        out = []
        for msg in self.consumer.consume(CONSUME_MAX, 0):
            if msg.error() is None and self.lane_topics.get(msg.topic()) == "marketing":
                self.inbox.setdefault((msg.topic(), msg.partition()), deque()).append(msg)
            else:
                out.append(msg)
        waiting = self.marketing_waiting
        self.stats.marketing_waiting_peak = max(self.stats.marketing_waiting_peak, waiting)
        room = self.marketing_ahead - self.queue.pending("marketing")
        while room > 0 and self.inbox:
            for tp in list(self.inbox):
                held = self.inbox[tp]
                out.append(held.popleft())
                if not held:
                    del self.inbox[tp]
                room -= 1
                waiting -= 1
                if room == 0:
                    break
        self._bound_inbox(waiting)
        return out

    def _marketing_assigned(self) -> list[TopicPartition]:
        assert self.consumer is not None
        return [tp for tp in self.consumer.assignment()
                if self.lane_topics.get(tp.topic) == "marketing"]

    def _bound_inbox(self, waiting: int) -> None:
        """Pause the marketing lane once `waiting_max` requests wait in `inbox`; resume it
        when half as many are left.

        librdkafka keeps a paused partition paused across a rewind (a seek) and may or may
        not across a rebalance, so both directions act on every marketing partition
        assigned now, not on a remembered list: while full, any not paused yet is paused;
        once drained (or emptied by a rewind or a revoke), all of them are resumed. A
        resume fetches from the position, the record after the last one consumed, so
        nothing is skipped or read twice.
        """
        assert self.consumer is not None
        if waiting >= self.waiting_max:
            lane = [tp for tp in self._marketing_assigned()
                    if (tp.topic, tp.partition) not in self._paused]
            if lane:
                self.consumer.pause(lane)
                self._paused.update((tp.topic, tp.partition) for tp in lane)
            if not self.lane_paused:
                self.lane_paused = True
                self.stats.lane_pauses += 1
                log.info("sender %s: %d marketing requests waiting undecided (at most %d): "
                         "marketing lane paused until %d are left", self.worker_id, waiting,
                         self.waiting_max, self.waiting_max // 2)
        elif self.lane_paused and waiting <= self.waiting_max // 2:
            lane = self._marketing_assigned()
            if lane:
                self.consumer.resume(lane)
            self._paused.clear()
            self.lane_paused = False
            log.info("sender %s: %d marketing requests waiting: marketing lane resumed",
                     self.worker_id, waiting)

    def _finish_failed_transaction(self) -> None:
        """Abort a failed transaction and rewind to the last commit, in steps that can be
        retried: with the broker away either step raises, and the next cycle goes on."""
        assert self.producer is not None
        if self._abort_pending:
            self.producer = kafka_io.abort_or_renew(self.producer, self._new_producer,
                                                    f"sender {self.worker_id}")
            self._abort_pending = False
        if self._rewind_pending is not None:
            self._rewind(self._rewind_pending)
            self._rewind_pending = None

    def _rewind(self, partitions: set[int]) -> None:
        """After an abort, re-read input from the committed offsets and restore state."""
        assert self.consumer is not None
        self._on_revoke(self.consumer, [TopicPartition("", p) for p in partitions])
        committed = self.consumer.committed(self.consumer.assignment(), timeout=30)
        for tp in committed:
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
        still = {tp.partition for tp in self.consumer.assignment()} & partitions
        self._on_assign(self.consumer, [TopicPartition("", p) for p in still])

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
        where = f"{msg.topic()}[{p}]@{msg.offset()}"
        if self.store.get(p, HOLD + request["request_id"].encode()) is not None:
            self._redelivered(producer, request, f"held; delivered again as {where}", now)
            return
        self._decide(producer, p, request, raw, now, where)

    def _dead_letter(self, producer: Producer, msg: Any, reason: str, error: str) -> None:
        record_ = dead_letter("sender", reason, error, msg.topic(), msg.partition(), msg.offset(),
                              msg.key(), msg.value())
        producer.produce(self.settings.topic(topics.DEAD_LETTERS), key=msg.key(),
                         value=avro.encode("dead_letter", record_))
        self.stats.count(f"dead_letter:{reason}")
        self._tx.add(metrics.dead_letters("sender")(reason))

    def _redelivered(self, producer: Producer, request: dict[str, Any], detail: str,
                     now: int) -> None:
        """A request that already has (or will have) its outcome arrived again: publish it
        on `sms.redeliveries` for analysts, never a second outcome."""
        self.stats.redelivered_requests += 1
        producer.produce(self.settings.topic(topics.REDELIVERIES),
                         key=request["request_id"].encode(),
                         value=avro.encode("send_outcome", self._outcome_record(
                             request, "suppressed", "duplicate", detail, None, None, now)))

    def _decide(self, producer: Producer, p: int, request: dict[str, Any], raw: bytes, now: int,
                where: str = "a released hold") -> None:
        decision = decide(request, self.policy, _View(self, p), now)
        rid = request["request_id"].encode()
        if isinstance(decision, Reject):
            if decision.reason == "duplicate":
                self._redelivered(producer, request,
                                  f"{decision.detail}; delivered again as {where}", now)
                return
            self._finish(producer, p, request, decision, None, now)
        elif isinstance(decision, Hold):
            self.store.put(producer, p, HOLD + rid, _UNTIL.pack(decision.until_ms) + raw)
            heapq.heappush(self.holds, (decision.until_ms, p, request["request_id"]))
            self.stats.count(f"held:{decision.reason}")
        else:
            sending = record("sending", now, request["dedup_window_s"]).to_bytes()
            self.store.put(producer, p, LEDGER + rid, layout.queued(sending, raw))
            if decision.content_key:
                self.store.put(producer, p, CONTENT + decision.content_key.encode(), sending)
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
                continue
            if self.bucket.try_take(now_s, job.send.verdict.encoded.segments) > 0:
                break
            self.queue.pop()
            job.token = self.token
            job.result = None
            self._set_job(producer, job, now, layout.on_wire, job.token, job.raw)
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
            valid_until_ms=request["expires_at_ms"],
            lane=request["lane"],
            region=job.send.number.region,
            operator=job.send.number.operator,
        )
        started = time.monotonic()
        try:
            result = await self.gateway.send(sms)
        except Exception as exc:  # a gateway bug must not lose the message
            log.exception("gateway send raised")
            result = SubmitResult(request["request_id"], [], False, 0, f"in_doubt: {exc}", True)
        metrics.SUBMIT_LATENCY.observe(time.monotonic() - started)
        job.result = result
        job.answered_ms = now_ms()
        self.finished.append(job)

    def _record_results(self, producer: Producer, now: int, recorded: list[Job]) -> None:
        """Record the gateway's answers of jobs whose partition this worker owns.

        An answer for a partition away right now is kept (the partition may come back,
        untouched, after a broker outage); one whose wire entry was settled by another
        owner meanwhile is dropped: that owner treated the send as in doubt.
        """
        while self.finished:
            job = self.finished.popleft()
            p, request = job.partition, job.request
            rid = request["request_id"]
            if p not in self.owned:
                continue  # kept in `wire` with its answer; `_recover` takes it back
            if layout.wire_token(self.store.get(p, LEDGER + rid.encode())) != job.token:
                self.wire.pop(rid, None)
                continue
            recorded.append(job)
            self._record_result(producer, job, now)

    def _record_result(self, producer: Producer, job: Job, now: int) -> None:
        p, request, result = job.partition, job.request, job.result
        assert result is not None
        rid = request["request_id"].encode()
        if result.ok:
            self.store.put(producer, p, LEDGER + rid,
                           record("sent", now, request["dedup_window_s"]).to_bytes())
            total = len(result.gateway_message_ids)
            for i, gw_id in enumerate(result.gateway_message_ids, 1):
                part = Part(p, request["request_id"], i, total)
                self.receipts.track(gw_id, part)
                self.forwarded.learned(gw_id)
                self.store.put(producer, p, GATEWAY_ID + gw_id.encode(), part.to_bytes())
            self._outcome(producer, request, "submitted", None, None, job, result, now)
            self.stats.submitted += 1
        elif result.retryable and not (result.error or "").startswith("in_doubt"):
            self._retry_later(producer, job, now, min(5000, 200 * job.attempts))
        elif result.retryable and request["lane"] == "transactional":
            self.stats.resent_in_doubt += 1
            self._retry_later(producer, job, now, 0)
        else:
            reason = "in_doubt_not_resent" if result.retryable else "gateway_rejected"
            self._finish(producer, p, request,
                         Reject("failed", reason, result.error or f"status {result.status}"),
                         job, now, result)

    def _retry_later(self, producer: Producer, job: Job, now: int, delay_ms: int) -> None:
        p, request = job.partition, job.request
        self._set_job(producer, job, now, layout.queued, job.raw)
        retry = Job(p, request, job.raw, job.send, job.attempts + 1, now + delay_ms)
        self.queue.push(retry, request["lane"], request["priority"])

    def _set_job(self, producer: Producer, job: Job, now: int, make: Callable[..., bytes],
                 *args: bytes) -> None:
        """Rewrite the request's L value with `make(entry, *args)`, keeping its ledger entry."""
        key = LEDGER + job.request["request_id"].encode()
        value = self.store.get(job.partition, key)
        entry = layout.entry(value) if value else record(
            "sending", now, job.request["dedup_window_s"]).to_bytes()
        self.store.put(producer, job.partition, key, make(entry, *args))

    def _finish(self, producer: Producer, p: int, request: dict[str, Any], reject: Reject,
                job: Job | None, now: int, result: SubmitResult | None = None) -> None:
        rid = request["request_id"].encode()
        self.store.put(producer, p, LEDGER + rid,
                       record("final", now, request["dedup_window_s"]).to_bytes())
        self._outcome(producer, request, reject.status, reject.reason, reject.detail, job, result, now)

    def _outcome(self, producer: Producer, request: dict[str, Any], status: str, reason: str | None,
                 detail: str | None, job: Job | None, result: SubmitResult | None, now: int) -> None:
        outcome = self._outcome_record(request, status, reason, detail, job, result, now)
        producer.produce(self.settings.topic(topics.OUTCOMES), key=request["request_id"].encode(),
                         value=avro.encode("send_outcome", outcome))
        self.stats.count(status if reason is None else f"{status}:{reason}")
        self._tx.add(metrics.outcomes(status, reason or ""))

    def _outcome_record(self, request: dict[str, Any], status: str, reason: str | None,
                        detail: str | None, job: Job | None, result: SubmitResult | None,
                        now: int) -> dict[str, Any]:
        number = job.send.number if job else None
        verdict = job.send.verdict if job else None
        return {
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
            "gateway": (result.route or getattr(self.gateway, "name", None)) if result else None,
            "gateway_message_ids": list(result.gateway_message_ids) if result else [],
            "segments": verdict.encoded.segments if verdict and status == "submitted" else 0,
            "encoding": verdict.encoded.encoding if verdict else None,
            "cost": _cost(verdict, result) if verdict and status == "submitted" else 0.0,
            "event_occurred_at_ms": request["event_occurred_at_ms"],
            "decided_at_ms": now,
            "attempts": job.attempts if job else 1,
            "config_version": self.config_stamp,
        }

    # ------------------------------------------------------ receipts, replies
    def _handle_events(self, producer: Producer, now: int,
                       taken: list[GatewayReceipt | GatewayInbound],
                       acks: list[Callable[[], None]],
                       after_commit: list[Callable[[], None]]) -> None:
        """Publish receipts and replies; collect their acks for after the commit.

        A receipt whose SMSC id is not known yet (its submit answer is still on the way)
        waits, unacknowledged, up to `PARK_RECEIPT_AFTER_MS`; then it is parked in this
        worker's state and acknowledged (some SMSCs hold a submit's answer until its
        receipt is acknowledged), and published once its id is known - or, after
        `uncorrelated_wait_ms`, with an empty message id, so that no receipt is lost.
        """
        published: set[object] = set()  # recorded in this transaction already
        for event in taken:
            if isinstance(event, GatewayReceipt):
                self.pending_receipts.append((now, event))
            else:
                self._inbound(producer, event, now, acks, after_commit, published)
        waiting: deque[tuple[int, GatewayReceipt]] = deque()
        while self.pending_receipts:
            arrived, receipt = self.pending_receipts.popleft()
            gw_id, state = receipt.gateway_message_id, receipt.state
            key = (gw_id, state)
            if self.receipts.recorded(gw_id, state) or key in published or key in self.parked:
                self.stats.receipts_repeated += 1
                _add_ack(acks, receipt)
                continue
            if key in self.claimed:  # forwarded, and recorded by the sender that knew it
                after_commit.append(lambda key=key: self._settled_forward(key))
                _add_ack(acks, receipt)
                continue
            part = self.receipts.lookup(gw_id)
            if part is None and now - arrived >= PARK_RECEIPT_AFTER_MS:
                if key not in self.sent_forward:
                    self._forward(producer, key, arrived, receipt, after_commit)
                if self.owned:
                    p = min(self.owned)
                    self.store.put(producer, p, PARKED + key_bytes(key),
                                   _park_value(arrived, receipt))
                    self.parked[key] = (p, arrived, receipt)
                    _add_ack(acks, receipt)
                    continue
            if part is None and now - arrived < self.uncorrelated_wait_ms:
                waiting.append((arrived, receipt))
                continue
            self._publish_receipt(producer, receipt, part, now, after_commit, published)
            self._settle_forward(producer, key, after_commit)
            _add_ack(acks, receipt)
        self.pending_receipts = waiting
        for key, (p, arrived, receipt) in list(self.parked.items()):
            claimed = key in self.claimed
            part = self.receipts.lookup(key[0])
            if not claimed and part is None and now - arrived < self.uncorrelated_wait_ms:
                continue
            del self.parked[key]  # restored from the state if this transaction aborts
            self.store.delete(producer, p, PARKED + key_bytes(key))
            if claimed:
                after_commit.append(lambda key=key: self._settled_forward(key))
                continue
            if not (self.receipts.recorded(*key) or key in published):
                self._publish_receipt(producer, receipt, part, now, after_commit, published)
            self._settle_forward(producer, key, after_commit, parked=True)
        self._claim_forwarded(producer, now, after_commit, published)

    def _parked_due(self, now: int) -> bool:
        return any(self.receipts.lookup(gw_id) is not None
                   or now - arrived >= self.uncorrelated_wait_ms
                   for (gw_id, _state), (_p, arrived, _r) in self.parked.items())

    # ----------------------------------- receipts over another sender's bind
    def _follow_forwards(self, now: int) -> None:
        """Read `sms.receipts.forwarded`: others' receipts to look up, claims of ours."""
        for key, receipt in self.forwards.poll():
            if receipt is None:  # a claim, or the forwarder settled it itself
                self.forwarded.remove(key)
                if key in self.sent_forward or key in self.parked:
                    self.claimed.add(key)
            elif key not in self.sent_forward and key not in self.parked:
                self.forwarded.add(key, now, receipt, self._knows(key[0]))
        self.forwarded.expire(now, self.uncorrelated_wait_ms)

    def _knows(self, gateway_id: str) -> bool:
        """Whether this sender can record a receipt for `gateway_id` with its message."""
        part = self.receipts.lookup(gateway_id)
        return part is not None and part.partition in self.owned

    def _forwards_due(self) -> bool:
        """Whether a transaction has forwarded receipts to record or claims to apply."""
        return bool(self.forwarded.claimable) or any(key in self.parked for key in self.claimed)

    def _forward(self, producer: Producer, key: Key, arrived: int, receipt: GatewayReceipt,
                 after_commit: list[Callable[[], None]]) -> None:
        producer.produce(self.settings.topic(topics.RECEIPTS_FORWARDED), key=key_bytes(key),
                         value=_park_value(arrived, receipt))
        self.stats.receipts_forwarded += 1
        after_commit.append(lambda: self.sent_forward.add(key))

    def _settle_forward(self, producer: Producer, key: Key,
                        after_commit: list[Callable[[], None]], parked: bool = False) -> None:
        """This process published a receipt it had forwarded (every parked one was, maybe by
        its predecessor): clear the key everywhere, or the compacted topic keeps it."""
        if parked or key in self.sent_forward:
            self._tombstone(producer, key)
            after_commit.append(lambda: self._settled_forward(key))

    def _tombstone(self, producer: Producer, key: Key) -> None:
        producer.produce(self.settings.topic(topics.RECEIPTS_FORWARDED), key=key_bytes(key),
                         value=None)

    def _settled_forward(self, key: Key) -> None:
        self.sent_forward.discard(key)
        self.claimed.discard(key)

    def _claim_forwarded(self, producer: Producer, now: int,
                         after_commit: list[Callable[[], None]], published: set[object]) -> None:
        """Record the receipts other senders forwarded whose SMSC id this one knows."""
        for key in list(self.forwarded.claimable):
            part = self.receipts.lookup(key[0])
            if part is None or part.partition not in self.owned:
                self.forwarded.unknown(key)
                continue
            if self.receipts.recorded(*key) or key in published:
                self.stats.receipts_repeated += 1
            else:
                receipt = self.forwarded.held[key][1]
                self._publish_receipt(producer, receipt, part, now, after_commit, published)
                self.stats.receipts_claimed += 1
            self._tombstone(producer, key)
            after_commit.append(lambda key=key: self.forwarded.remove(key))

    def _publish_receipt(self, producer: Producer, receipt: GatewayReceipt, part: Part | None,
                         now: int, after_commit: list[Callable[[], None]],
                         published: set[object]) -> None:
        gw_id, state = receipt.gateway_message_id, receipt.state
        if part is None:
            log.warning("receipt for unknown SMSC id %s recorded without a message id "
                        "after %d ms%s", gw_id, self.uncorrelated_wait_ms,
                        self.receipts.format_hint(gw_id))
            self.stats.receipts_uncorrelated += 1
            self._tx.add(metrics.RECEIPTS_UNCORRELATED)
        producer.produce(
            self.settings.topic(topics.RECEIPTS),
            key=(part.message_id if part else gw_id).encode(),
            value=avro.encode("delivery_receipt", {
                "message_id": part.message_id if part else "",
                "gateway_message_id": gw_id,
                "state": state,
                "error_code": receipt.error_code,
                "segment": part.segment if part else 0,
                "segments": part.segments if part else 0,
                "received_at_ms": receipt.received_at_ms,
                "gateway": receipt.route or getattr(self.gateway, "name", None),
            }))
        self.stats.receipts += 1
        published.add((gw_id, state))
        after_commit.append(lambda key=(gw_id, state): self.receipts.seen.add(key))
        if part is not None and state in FINAL_RECEIPT_STATES and part.partition in self.owned:
            p = part.partition
            self.store.put(producer, p, GATEWAY_ID + gw_id.encode(), layout.receipt_done(now))
            self.receipts.finished(gw_id, p, now)

    def _inbound(self, producer: Producer, event: GatewayInbound, now: int,
                 acks: list[Callable[[], None]], after_commit: list[Callable[[], None]],
                 published: set[object]) -> None:
        key = InboundBook.key(event.source, event.destination, event.text,
                              event.gateway_ref, event.part)
        if self.replies.recorded(key, now) or key in published:
            self.stats.inbound_repeated += 1
            _add_ack(acks, event)
            return
        published.add(key)
        after_commit.append(lambda: self.replies.remember(key, now))
        number = normalise(event.source, "RU", self.policy.allowed_regions | frozenset({"ZZ"}))
        sender = number.e164 if not isinstance(number, Reject) else event.source
        part_ref, segment, segments = event.part or (None, 1, 1)
        inbound = {
            "inbound_id": key,
            "from_number": sender,
            "to": event.destination,
            "text": event.text,
            "received_at_ms": event.received_at_ms,
            "gateway": event.route or getattr(self.gateway, "name", None),
            "part_ref": part_ref,
            "segment": segment,
            "segments": segments,
        }
        producer.produce(self.settings.topic(topics.INBOUND), key=sender.encode(),
                         value=avro.encode("inbound_message", inbound))
        self.stats.inbound += 1
        # A segment of a long reply is not a reply: "... stop" at the start of a second
        # segment would opt out a customer who wrote a sentence. A STOP fits one segment.
        stops = consent_changes_for_stop(inbound, now, self.policy.stop_words) \
            if event.part is None else []
        for change in stops:
            producer.produce(self.settings.topic(topics.CONSENT),
                             key=f"{change['phone']}|{change['scope']}".encode(),
                             value=avro.encode("consent_change", change))
            self.consent.apply_local(change)
            self.stats.count("opt_out:sms_reply")
        _add_ack(acks, event)

    def _sweep(self, producer: Producer, now: int) -> None:
        """Once a minute: forget receipt markers and kept answers that can matter no more."""
        for p, gw_id in self.receipts.expired(self.owned, now):
            self.store.delete(producer, p, GATEWAY_ID + gw_id.encode())
        for rid, job in list(self.wire.items()):
            if (job.result is not None and job.partition not in self.owned
                    and now - job.answered_ms > PARKED_RESULT_KEEP_MS):
                del self.wire[rid]  # its partition went elsewhere: the new owner decided


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
        return LedgerEntry.from_bytes(layout.entry(value)) if value else None

    def content_entry(self, key: str) -> LedgerEntry | None:
        value = self.worker.store.get(self.p, CONTENT + key.encode())
        return LedgerEntry.from_bytes(value) if value else None

    def cap_state(self, e164: str, lane: str) -> CapState | None:
        value = self.worker.store.get(self.p, CAPS + lane[:1].encode() + e164.encode())
        return CapState.from_bytes(value) if value else None


def _cost(verdict: Any, result: SubmitResult | None) -> float:
    """A sent message's cost: segments × the tariff of the route that took it, when that
    route has one; else the content check's (content.yaml `cost_per_segment`)."""
    if result is not None and result.cost_per_segment is not None:
        return float(verdict.encoded.segments * result.cost_per_segment)
    return float(verdict.cost)


def _add_ack(acks: list[Callable[[], None]], event: GatewayReceipt | GatewayInbound) -> None:
    ack = getattr(event, "ack", None)
    if ack is not None:
        acks.append(ack)


def _acknowledge(acks: list[Callable[[], None]]) -> None:
    """Tell the gateway these receipts and replies are recorded (after the commit)."""
    for ack in acks:
        try:
            ack()
        except Exception:  # a gateway bug must not stop the sender; the SMSC re-sends
            log.exception("acknowledging a receipt or reply failed")


def _filtered(queue: PriorityGate[Job], keep: Any) -> PriorityGate[Job]:
    out: PriorityGate[Job] = PriorityGate()
    while queue:
        job = queue.pop()
        if job is not None and keep(job):
            out.push(job, job.request["lane"], job.request["priority"])
    return out
