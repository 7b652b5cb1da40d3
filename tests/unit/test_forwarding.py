"""`ToClaim`: the forwarded receipts a sender holds, indexed by SMSC id."""

from __future__ import annotations

import random

from connectors.gateway import GatewayReceipt
from pipeline.sender.forwarding import ToClaim


def receipt(gw_id: str, state: str = "DELIVRD") -> GatewayReceipt:
    return GatewayReceipt(gw_id, state, "000", "+79161234567", 1)


def test_a_receipt_is_claimable_once_its_id_is_known_or_learned() -> None:
    book = ToClaim()
    book.add(("a", "DELIVRD"), 0, receipt("a"), known=True)
    book.add(("b", "ENROUTE"), 0, receipt("b", "ENROUTE"), known=False)
    book.add(("b", "DELIVRD"), 1, receipt("b"), known=False)
    assert book.claimable == {("a", "DELIVRD")}
    book.learned("b")
    assert book.claimable == {("a", "DELIVRD"), ("b", "ENROUTE"), ("b", "DELIVRD")}
    book.learned("b")  # learning again changes nothing
    assert len(book.claimable) == 3
    book.unknown(("b", "ENROUTE"))  # its partition moved away
    assert ("b", "ENROUTE") not in book.claimable and ("b", "ENROUTE") in book
    book.learned("b")
    assert ("b", "ENROUTE") in book.claimable


def test_the_first_copy_stays_and_removal_clears_every_index() -> None:
    book = ToClaim()
    book.add(("a", "DELIVRD"), 5, receipt("a"), known=False)
    book.add(("a", "DELIVRD"), 9, receipt("a"), known=True)
    assert book.held[("a", "DELIVRD")][0] == 5 and not book.claimable
    book.remove(("a", "DELIVRD"))
    book.remove(("a", "DELIVRD"))  # a claim read twice
    book.learned("a")
    assert len(book) == 0 and not book.claimable


def test_expiry_drops_the_old_ones_from_the_front_only() -> None:
    book = ToClaim()
    for i in range(10):
        book.add((f"id{i}", "DELIVRD"), 1000 + i * 100, receipt(f"id{i}"), known=i % 2 == 0)
    book.expire(now_ms=1000 + 60_000 + 450, wait_ms=60_000)
    assert sorted(book.held) == [(f"id{i}", "DELIVRD") for i in range(5, 10)]
    assert book.claimable == {("id6", "DELIVRD"), ("id8", "DELIVRD")}
    book.learned("id1")  # expired: nothing to claim
    assert ("id1", "DELIVRD") not in book.claimable


def test_reindex_matches_adding_everything_with_what_is_known_now() -> None:
    rng = random.Random(3)
    book = ToClaim()
    for i in range(2000):
        gw_id = f"id{rng.randrange(700)}"
        book.add((gw_id, rng.choice(["ENROUTE", "DELIVRD"])), i, receipt(gw_id), rng.random() < 0.3)
        if rng.random() < 0.2:
            book.learned(f"id{rng.randrange(700)}")
        if rng.random() < 0.1 and book.held:
            book.remove(rng.choice(list(book.held)))
    known = {f"id{i}" for i in range(0, 700, 3)}
    book.reindex(lambda gw_id: gw_id in known)
    assert book.claimable == {k for k in book.held if k[0] in known}
    for gw_id in {k[0] for k in book.held} - known:  # the rest is found by learning its id
        book.learned(gw_id)
    assert book.claimable == set(book.held)
