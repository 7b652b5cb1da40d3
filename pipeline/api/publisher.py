"""An idempotent producer (acks=all) whose acknowledgements a request can await.

`Publisher.publish(records)` produces every record of one request and resolves once the
broker has acknowledged all of them, or raises `NotStored` when any was not (timed out
after `delivery_timeout_s`, refused): the API answers 202 only in the first case. A
queue that is full raises `Backpressure` before anything of the request is produced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

from pipeline.errors import RetryableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One record to publish: full topic name, key, encoded value (None: a tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None


class Backpressure(RetryableError):
    """Too much is waiting already (the producer's queue, or the router's lag): try again
    after `retry_after_s` seconds. Nothing of the request was produced."""

    reason = "backpressure"

    def __init__(self, why: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(why)


class NotStored(RetryableError):
    """The broker did not acknowledge every record of the request (some may be stored)."""

    reason = "not_stored"


class _Pending:
    """The acknowledgements one request waits for; resolved from the producer's thread."""

    __slots__ = ("loop", "future", "left", "error", "lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[str | None] = loop.create_future()
        self.left = count
        self.error: str | None = None
        self.lock = threading.Lock()

    def ack(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = err.str()
        self.forget(1)

    def forget(self, count: int) -> None:
        """`count` records need no more waiting for (acknowledged, or never produced)."""
        with self.lock:
            self.left -= count
            last = self.left == 0
        if last:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


class Publisher:
    """One producer per API process; `start` it in the event loop that awaits it."""

    def __init__(self, bootstrap: str, delivery_timeout_s: float, max_in_flight: int) -> None:
        self.bootstrap = bootstrap
        self.delivery_timeout_s = delivery_timeout_s
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # records produced, not yet acknowledged (event loop only)
        self._producer = self._new_producer()
        self._fatal: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _new_producer(self) -> Producer:
        return Producer({
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,  # implies acks=all
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
            "message.timeout.ms": int(self.delivery_timeout_s * 1000),
            "queue.buffering.max.messages": max(2 * self.max_in_flight, 10_000),
            "error_cb": self._on_error,
        })

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
            log.error("producer failed fatally (a new one is made): %s", err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("no broker answers at %s", self.bootstrap)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="api-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    def stop(self, timeout: float = 15.0) -> int:
        """Stop serving acknowledgements after flushing; returns records left undelivered."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        left = int(self._producer.flush(timeout))
        # The producer holds this object (its error_cb): dropped here, it is freed now, its
        # connections closed, not at some later garbage collection (a stopped API's
        # producer went on reconnecting to its broker for minutes).
        self._producer = None  # type: ignore[assignment]
        return left

    async def publish(self, records: Sequence[Record]) -> None:
        """Produce `records` and return once the broker acknowledged every one.

        Raises Backpressure (nothing produced) when they do not fit in flight, NotStored
        when any was not acknowledged within the delivery timeout.
        """
        if not records:
            return
        if self._fatal is not None:  # idempotence broken for this producer: start afresh
            old, self._producer, self._fatal = self._producer, self._new_producer(), None
            old.flush(0)
        if self.in_flight + len(records) > self.max_in_flight:
            raise Backpressure(f"{self.in_flight} records are waiting for the broker", 1)
        pending = _Pending(asyncio.get_running_loop(), len(records))
        producer = self._producer
        produced = 0
        try:
            for r in records:
                producer.produce(r.topic, key=r.key, value=r.value, on_delivery=pending.ack)
                produced += 1
        except BufferError:
            pending.forget(len(records) - produced)  # never produced: nothing to wait for
            self.in_flight += produced
            if produced:
                await self._settle(pending, produced)
            raise Backpressure("the producer's queue is full", 1) from None
        self.in_flight += produced
        error = await self._settle(pending, produced)
        if error is not None:
            raise NotStored(error)

    async def _settle(self, pending: _Pending, produced: int) -> str | None:
        try:
            # librdkafka reports every record by message.timeout.ms; the margin is ours.
            return await asyncio.wait_for(asyncio.shield(pending.future),
                                          self.delivery_timeout_s + 10)
        except TimeoutError:
            return "no acknowledgement from the producer"
        finally:
            self.in_flight -= produced
