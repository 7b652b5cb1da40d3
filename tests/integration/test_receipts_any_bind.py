"""Two and three senders on one SMSC account that delivers receipts over any of its binds."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sendkit import (
    config_with,
    make_request,
    one_outcome_per_request,
    one_receipt_per_part,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from pipeline import kafka_io, topics
from pipeline.settings import Settings
from pipeline.topics import create_topics


@pytest.mark.parametrize("senders", [2, 3])
def test_receipts_over_the_other_senders_bind_are_recorded_with_their_message(
        settings: Settings, schema_registry_url: str, tmp_path: Path, senders: int) -> None:
    """Regression: a receipt that came over the other sender's bind was unknown there and,
    after the uncorrelated wait, recorded without its message id (so analytics never
    counted the message delivered). Now the receiving sender forwards it and the sender
    that sent the message records it: every receipt carries its message, once. With three
    senders, every forward is also followed by a sender that cannot claim it."""
    cfg = replace(settings, partitions=senders,
                  config_dir=config_with(tmp_path, settings.config_dir, quiet_hours={},
                                         frequency_caps={}))
    create_topics(cfg)
    requests = [make_request(phone=phone(170_000 + i), text=f"Оплатите счёт {i}")
                for i in range(120)]
    env = {"RASSYLKA_UNCORRELATED_RECEIPT_WAIT_S": "30", "RASSYLKA_RATE_PER_BIND": "20"}
    with simulator(tmp_path, "--latency-ms", "2-10", "--receipt-delay-ms", "50-300",
                   "--deliver-any-bind") as sim:
        with ExitStack() as workers:
            for w in range(senders):
                workers.enter_context(sender(cfg, sim, tmp_path, worker_id=str(w), **env))
            # All bound (two binds each) and each owning a partition: no rebalance while
            # sending, whose in-doubt parts no sender can know (published uncorrelated).
            deadline = time.monotonic() + 60
            while sim.sessions() < 2 * senders or not all(
                    re.search(rf"sender {w} owns partitions \[\d\]", _logs(tmp_path))
                    for w in range(senders)):
                assert time.monotonic() < deadline, "the senders did not bind and join"
                time.sleep(0.1)
            publish_requests(cfg, requests)
            outcomes(cfg, len(requests), timeout=90)
            got = one_outcome_per_request(cfg, requests)
            states = one_receipt_per_part(cfg, sim, timeout=60)
        submits = sim.submits()
    assert Counter(o["status"] for o in got.values()) == Counter({"submitted": len(requests)})
    receipts = kafka_io.read_topic(cfg, topics.RECEIPTS, None, 10, idle=2.0)
    by_part = {m.record["gateway_message_id"]: m.record for m in receipts if m.record}
    accepted = {s["message_id"]: s for s in submits if s["status"] == 0}
    uncorrelated = [r for r in by_part.values() if not r["message_id"]]
    assert not uncorrelated, f"{len(uncorrelated)} of {len(by_part)} receipts lost their " \
                             f"message (came over the other sender's bind)"
    ids = {r["request_id"] for r in requests}
    assert all(r["message_id"] in ids for r in by_part.values())
    assert set(by_part) == set(accepted) and sum(states.values()) == len(accepted)
    # the path under test was taken: receipts crossed over, and were claimed
    logs = _logs(tmp_path).replace("\n", "")
    forwarded = sum(int(n) for n in re.findall(r"receipts_forwarded=(\d+)", logs))
    claimed = sum(int(n) for n in re.findall(r"receipts_claimed=(\d+)", logs))
    assert forwarded >= 10 and claimed == forwarded, (forwarded, claimed)


def _logs(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in tmp_path.glob("sender-*.log"))


def test_forwarded_receipts_are_compacted_and_kept_a_day(ns: Settings) -> None:
    """A key a crashed forwarder left (no sender could claim it) goes after a day; senders
    read the topic back only minutes (`ForwardedReceipts.load`)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": ns.kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, ns.topic(topics.RECEIPTS_FORWARDED))
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["cleanup.policy"].value == "compact,delete"
    assert int(config["retention.ms"].value) == 24 * 3600 * 1000


def test_a_follower_started_before_its_topic_is_ready_waits_for_it(
        settings: Settings, schema_registry_url: str) -> None:
    """Regression: a follower that asked for the topic's partitions before the broker's
    metadata knew the topic got none and failed with "Invalid argument" (offsets asked
    for no partition; 2 tests of 1,415 in a CI run, on topics created just before). It now
    waits until every partition has a leader, and then follows from there."""
    from pipeline.sender.forwarding import ForwardedReceipts

    follower = ForwardedReceipts(settings)
    loaded: list[BaseException | None] = []

    def load() -> None:
        try:
            follower.load(lookback_ms=60_000)
            loaded.append(None)
        except BaseException as exc:  # reported below
            loaded.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1.5)  # the follower asks while the topic is not there yet
        assert not loaded, f"load returned before its topic existed: {loaded}"
        create_topics(settings)
        thread.join(30)
        assert loaded == [None]
        seen = _forward_and_follow(settings, follower, ("9z", "DELIVRD"), None)
        assert seen == [(("9z", "DELIVRD"), None)]
    finally:
        thread.join(30)
        follower.close()


def test_a_receipt_forwarded_while_a_sender_starts_following_is_seen(ns: Settings) -> None:
    """Regression: on a topic just created, the follower's start-up asked for offsets
    before the partition had a leader and failed (NOT_LEADER_FOR_PARTITION, 2 runs of 4
    here): the sender could not start. It now waits the partition out, and starts where the
    partition ends when nothing was forwarded in the lookback (not at OFFSET_END, which
    the consumer resolves later): a receipt forwarded right after is seen."""
    from connectors.gateway import GatewayReceipt
    from pipeline.sender.forwarding import ForwardedReceipts, park_value

    follower = ForwardedReceipts(ns)
    follower.load(lookback_ms=60_000)
    try:
        receipt = GatewayReceipt("1a2b", "DELIVRD", "000", "+79161234567", int(time.time() * 1000))
        seen = _forward_and_follow(ns, follower, ("1a2b", "DELIVRD"),
                                   park_value(receipt.received_at_ms, receipt))
        assert [key for key, _r in seen] == [("1a2b", "DELIVRD")]
    finally:
        follower.close()


def _forward_and_follow(settings: Settings, follower: Any, key: tuple[str, str],
                        value: bytes | None) -> list[Any]:
    """Write one record to the forwarded receipts; what `follower` sees of it (bounded)."""
    from pipeline.sender.forwarding import key_bytes

    producer = kafka_io.producer(settings)
    producer.produce(settings.topic(topics.RECEIPTS_FORWARDED), key=key_bytes(key), value=value)
    assert producer.flush(30) == 0
    seen: list[Any] = []
    deadline = time.monotonic() + 15
    while not seen and time.monotonic() < deadline:
        seen += follower.poll()
        time.sleep(0.05)
    return seen
