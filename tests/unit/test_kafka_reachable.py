"""The start-up check for Kafka: bounded, says once that it waits, names the address."""

from __future__ import annotations

import socket
import time

import pytest

from pipeline.errors import ConfigError, KafkaUnreachable
from pipeline.kafka_io import _servers, ensure_reachable


def test_a_dead_address_fails_within_the_wait_and_says_it_waits_once() -> None:
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable) as info:
        ensure_reachable("127.0.0.1:1", timeout=1.0, on_wait=said.append)
    assert time.monotonic() - started < 5
    assert said == ["waiting up to 1 s for Kafka at 127.0.0.1:1 ..."]
    assert "127.0.0.1:1" in str(info.value) and "make kafka-up" in str(info.value)


def test_a_port_that_is_not_kafka_is_unreachable_too() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(KafkaUnreachable, match=address):
            ensure_reachable(address, timeout=1.0)
        assert time.monotonic() - started < 6


def test_bootstrap_lists_are_read_as_librdkafka_reads_them() -> None:
    assert _servers("127.0.0.1:19092, PLAINTEXT://k:9093,kafka1") == [
        ("127.0.0.1", 19092), ("k", 9093), ("kafka1", 9092)]
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP"):
        _servers("host:port")
