"""A sender started on state written in the old layout (queue and wire entries under keys
of their own, receipt markers under R) finishes its requests exactly as before and leaves
the state in the new layout (pipeline.sender.layout)."""

from __future__ import annotations

import struct
import time
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from sendkit import (
    config_with,
    make_request,
    marketing,
    opt_in,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from pipeline import kafka_io, topics
from pipeline.sender import layout
from pipeline.sender.dedup import record
from pipeline.settings import Settings
from pipeline.state.store import PartitionedStore, read_partitions

LANES = (topics.REQUESTS_TRANSACTIONAL, topics.REQUESTS_MARKETING)


def _state(store: PartitionedStore, partitions: int) -> dict[tuple[int, bytes], bytes]:
    state: dict[tuple[int, bytes], bytes] = {}
    for p, key, value in read_partitions(store.bootstrap, store.topic, range(partitions)):
        if value is None:
            state.pop((p, key), None)
        else:
            state[(p, key)] = value
    return state


def test_state_of_the_old_layout_is_finished_and_rewritten(ns: Settings, tmp_path: Path) -> None:
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={},
                                             frequency_caps={}))
    queued, on_wire = make_request(phone=phone(81_001)), make_request(phone=phone(81_002))
    promo = marketing(phone=phone(81_003))
    requests = [queued, on_wire, promo]
    opt_in(cfg, [promo["phone"]])
    publish_requests(cfg, requests)
    # The old sender had read them: the group's offsets are past them, its state says where
    # each one was.
    read = {m.record["request_id"]: m for lane in LANES
            for m in kafka_io.read_topic(cfg, lane, lambda ms: len(ms) >= 1, 15)}
    assert set(read) == {r["request_id"] for r in requests}
    group = Consumer({"bootstrap.servers": cfg.kafka_bootstrap, "group.id": f"{cfg.app_id}-sender",
                      "enable.auto.commit": False})
    group.commit(offsets=[TopicPartition(m.topic, m.partition, m.offset + 1) for m in read.values()],
                 asynchronous=False)
    group.close()
    store = PartitionedStore(cfg.kafka_bootstrap, f"{cfg.app_id}-sender-state-changelog",
                             cfg.partitions)
    store.ensure_topic()
    now = int(time.time() * 1000)
    old = [(read[r["request_id"]].partition, b"L" + r["request_id"].encode(),
            record("sending", now, r["dedup_window_s"]).to_bytes()) for r in requests]
    old += [(read[queued["request_id"]].partition, b"Q" + queued["request_id"].encode(),
             read[queued["request_id"]].value),
            (read[on_wire["request_id"]].partition, b"W" + on_wire["request_id"].encode(),
             b"\x01" + b"deadbeef" + read[on_wire["request_id"]].value),
            (read[promo["request_id"]].partition, b"W" + promo["request_id"].encode(),
             b"\x01" + b"deadbeef" + read[promo["request_id"]].value),
            (0, b"Rsmsc-old-1", struct.pack("<q", now - 1000))]
    producer = kafka_io.producer(cfg)
    for p, key, value in old:
        producer.produce(store.topic, key=key, value=value, partition=p)
    assert producer.flush(30) == 0

    with simulator(tmp_path) as sim, sender(cfg, sim, tmp_path):
        got = outcomes(cfg, len(requests), timeout=60)
        deadline = time.monotonic() + 30
        while any(k[:1] in b"QWR" for _p, k in _state(store, cfg.partitions)):
            assert time.monotonic() < deadline, "old-layout keys left after 30 s"
            time.sleep(0.5)
        submits = sim.submits()

    assert got[queued["request_id"]]["status"] == "submitted"
    assert got[on_wire["request_id"]]["status"] == "submitted"  # transactional: resent in doubt
    assert (got[promo["request_id"]]["status"], got[promo["request_id"]]["reason"]) == \
        ("failed", "in_doubt_not_resent")
    assert sorted(s["destination"].lstrip("+") for s in submits) == \
        sorted(r["phone"].lstrip("+") for r in (queued, on_wire))
    state = _state(store, cfg.partitions)
    assert layout.done_at(state[(0, b"Gsmsc-old-1")]) == now - 1000
    for r in requests:  # each one finished: a bare ledger entry, no job
        value = state[(read[r["request_id"]].partition, b"L" + r["request_id"].encode())]
        assert layout.job(value) == (b"", b"", b""), r["request_id"]
