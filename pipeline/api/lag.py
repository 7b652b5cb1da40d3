"""The router's consumer lag on the event topics, for the API's backpressure.

Lag = the end offset of each event-topic partition minus the router group's committed
offset there (the log-start offset where the group never committed). Read through a
consumer of the router's group that never joins it, as `pipeline.offsets` does.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline import topics
from pipeline.offsets import group_of
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def router_lag(consumer: Consumer, settings: Settings) -> int:
    """Event records not yet committed by the router, over every event topic."""
    tps = []
    for name in topics.EVENT_TOPICS:
        full = settings.topic(name)
        found = consumer.list_topics(full, timeout=10).topics.get(full)
        if found is not None and found.error is None:
            tps += [TopicPartition(full, p) for p in sorted(found.partitions)]
    committed = {(tp.topic, tp.partition): tp.offset
                 for tp in consumer.committed(tps, timeout=10)}
    lag = 0
    for tp in tps:
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        done = committed[(tp.topic, tp.partition)]
        lag += max(0, high - (done if done >= 0 else low))
    return lag


class LagWatch:
    """Reads the router's lag every `every_s` seconds in a daemon thread; `lag` is the
    last reading (None before the first, or while the broker does not answer)."""

    def __init__(self, settings: Settings, every_s: float) -> None:
        self.settings = settings
        self.every_s = every_s
        self.lag: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="api-lag", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(15)

    def _watch(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap,
                             "group.id": group_of(self.settings, "router"),
                             "enable.auto.commit": False})
        try:
            while True:
                try:
                    self.lag = router_lag(consumer, self.settings)
                except KafkaException as exc:
                    self.lag = None
                    log.warning("router lag unknown: %s", exc.args[0] if exc.args else exc)
                if self._stopping.wait(self.every_s):
                    return
        finally:
            consumer.close()
