"""Every transactional producer a stage builds shares `kafka_io.TRANSACTIONAL_PRODUCER`.

Without it a stage killed inside a transaction held read_committed readers of the
partitions it wrote for up to two minutes (its id never came back), and librdkafka's
default 100 ms retry backoff after CONCURRENT_TRANSACTIONS made every back-to-back
transaction wait: `send_offsets_to_transaction` was most of the router's wall time.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline import kafka_io

ROOT = Path(__file__).resolve().parents[2]


def _config_dicts_with_transactional_id() -> list[tuple[str, ast.Dict]]:
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and any(
                    isinstance(k, ast.Constant) and k.value == "transactional.id" for k in node.keys):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return found


def _spreads_shared_settings(node: ast.Dict) -> bool:
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:  # a ** spread
            name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", None)
            if name == "TRANSACTIONAL_PRODUCER":
                return True
    return False


def test_every_transactional_producer_uses_the_shared_settings() -> None:
    dicts = _config_dicts_with_transactional_id()
    assert len(dicts) >= 6, "router, sender, outbox, campaigns, follow-ups, dead-letter replay"
    missing = [where for where, node in dicts if not _spreads_shared_settings(node)]
    assert not missing, f"transactional producers without kafka_io.TRANSACTIONAL_PRODUCER: {missing}"


def test_the_shared_settings_bound_a_dead_transaction_and_retry_quickly() -> None:
    settings = kafka_io.TRANSACTIONAL_PRODUCER
    assert settings["transaction.timeout.ms"] <= 15_000
    assert settings["retry.backoff.ms"] <= 10
    assert settings["retry.backoff.max.ms"] <= 100
    # librdkafka accepts them (an unknown or out-of-range property raises here).
    from confluent_kafka import Producer
    Producer({"bootstrap.servers": "127.0.0.1:1", "transactional.id": "check", **settings})
