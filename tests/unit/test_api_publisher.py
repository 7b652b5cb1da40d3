"""The API's publisher lets its producer go when it stops (no broker needed)."""

from __future__ import annotations

import gc

from confluent_kafka import Producer

from pipeline.api.publisher import Publisher


def test_a_stopped_publisher_frees_its_producer_at_once() -> None:
    """Regression: the producer holds the publisher (its error callback) and the publisher
    the producer, so a stopped API's producer lived until a full garbage collection and
    went on reconnecting to its broker meanwhile (minutes, in the test suite)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        publisher = Publisher("127.0.0.1:1", delivery_timeout_s=1.0, max_in_flight=10)
        publisher.start()
        mine = id(publisher._producer)
        assert publisher.stop(timeout=0.1) == 0
        alive = [o for o in gc.get_objects() if type(o) is Producer and id(o) == mine]
        assert not alive
    finally:
        if enabled:
            gc.enable()
