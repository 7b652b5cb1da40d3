"""A coalescing store writes fewer changelog records and the same state.

The changelog is recorded by a stand-in producer (pure logic: the store only calls
`produce`); replaying it the way a restore does must give exactly the in-memory state
after every transaction, for random sequences of puts and deletes.
"""

from __future__ import annotations

import random

from pipeline.state.store import PartitionedStore


class Changelog:
    """Records what the store produces, like a topic would."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes, bytes | None]] = []

    def produce(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        self.records.append((partition, key, value))

    def restored(self) -> dict[int, dict[bytes, bytes]]:
        data: dict[int, dict[bytes, bytes]] = {}
        for partition, key, value in self.records:
            part = data.setdefault(partition, {})
            if value is None:
                part.pop(key, None)
            else:
                part[key] = value
        return data


def _store(coalesce: bool) -> PartitionedStore:
    store = PartitionedStore("127.0.0.1:1", "changelog", 4, coalesce=coalesce)
    for p in range(4):
        store.data[p] = {}  # held, as after a restore of an empty changelog
    return store


def _live(store: PartitionedStore) -> dict[int, dict[bytes, bytes]]:
    return {p: dict(kv) for p, kv in store.data.items() if kv}


def _nonempty(data: dict[int, dict[bytes, bytes]]) -> dict[int, dict[bytes, bytes]]:
    return {p: kv for p, kv in data.items() if kv}


def test_a_key_created_and_removed_in_one_transaction_is_not_written() -> None:
    log = Changelog()
    store = _store(coalesce=True)
    store.put(log, 1, b"Qr1", b"raw")  # type: ignore[arg-type]
    store.put(log, 1, b"Lr1", b"sending")  # type: ignore[arg-type]
    store.delete(log, 1, b"Qr1")  # type: ignore[arg-type]
    store.put(log, 1, b"Wr1", b"raw")  # type: ignore[arg-type]
    assert log.records == [], "nothing is written before the flush"
    assert store.flush(log) == 2  # type: ignore[arg-type]
    assert sorted(log.records) == [(1, b"Lr1", b"sending"), (1, b"Wr1", b"raw")]


def test_a_key_that_existed_gets_its_tombstone_and_one_record_per_change_set() -> None:
    log = Changelog()
    store = _store(coalesce=True)
    store.put(log, 0, b"k", b"v1")  # type: ignore[arg-type]
    store.flush(log)  # type: ignore[arg-type]
    store.put(log, 0, b"k", b"v2")  # type: ignore[arg-type]
    store.delete(log, 0, b"k")  # type: ignore[arg-type]
    store.flush(log)  # type: ignore[arg-type]
    assert log.records == [(0, b"k", b"v1"), (0, b"k", None)]
    store.put(log, 0, b"k", b"a")  # type: ignore[arg-type]
    store.put(log, 0, b"k", b"b")  # type: ignore[arg-type]
    store.flush(log)  # type: ignore[arg-type]
    assert log.records[-1] == (0, b"k", b"b") and len(log.records) == 3


def test_a_partition_not_held_always_gets_what_it_was_told() -> None:
    """Its changelog may hold the key (another owner wrote it): a tombstone is written."""
    log = Changelog()
    store = PartitionedStore("127.0.0.1:1", "changelog", 4, coalesce=True)
    store.put(log, 3, b"k", b"v")  # type: ignore[arg-type]
    store.delete(log, 3, b"k")  # type: ignore[arg-type]
    store.delete(log, 2, b"j")  # type: ignore[arg-type]
    store.flush(log)  # type: ignore[arg-type]
    assert sorted(log.records, key=repr) == sorted([(3, b"k", None), (2, b"j", None)], key=repr)


def test_discard_forgets_an_aborted_transactions_changes() -> None:
    log = Changelog()
    store = _store(coalesce=True)
    store.put(log, 0, b"k", b"v")  # type: ignore[arg-type]
    store.discard()
    assert store.flush(log) == 0 and log.records == []  # type: ignore[arg-type]


def test_random_transactions_restore_to_the_same_state_with_fewer_records() -> None:
    rng = random.Random(7)
    keys = [f"{kind}{i}".encode() for kind in "QWLG" for i in range(12)]
    for _trial in range(200):
        plain_log, coalesced_log = Changelog(), Changelog()
        plain, coalesced = _store(coalesce=False), _store(coalesce=True)
        for _tx in range(rng.randint(1, 8)):
            for _op in range(rng.randint(0, 30)):
                p, key = rng.randrange(4), rng.choice(keys)
                if rng.random() < 0.6:
                    value = rng.randbytes(rng.randint(0, 3))
                    for store, log in ((plain, plain_log), (coalesced, coalesced_log)):
                        store.put(log, p, key, value)  # type: ignore[arg-type]
                else:
                    for store, log in ((plain, plain_log), (coalesced, coalesced_log)):
                        store.delete(log, p, key)  # type: ignore[arg-type]
            coalesced.flush(coalesced_log)  # type: ignore[arg-type]
            assert _live(coalesced) == _live(plain)
            assert _nonempty(coalesced_log.restored()) == _live(coalesced)
            assert _nonempty(plain_log.restored()) == _live(plain)
        assert len(coalesced_log.records) <= len(plain_log.records)
