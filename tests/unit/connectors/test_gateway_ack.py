"""The acknowledgement half of the gateway contract, and how expiry is written for providers."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import pytest

from connectors.gateway import AckOnce, GatewayInbound, GatewayReceipt, OutboundSms, ack_event
from connectors.http_gateway import iso_utc
from connectors.http_provider_sim import _check_message, _expiry_ms


def test_events_carry_an_optional_ack_that_does_not_change_equality() -> None:
    plain = GatewayReceipt("id1", "DELIVRD", "000", "+79161234567", 1)
    with_ack = GatewayReceipt("id1", "DELIVRD", "000", "+79161234567", 1, ack=lambda: None)
    assert plain == with_ack and plain.ack is None
    assert "ack" not in repr(with_ack)
    mo = GatewayInbound("+79161234567", "Shop", "STOP", 1)
    assert mo.gateway_ref is None and mo.ack is None
    with pytest.raises(FrozenInstanceError):
        mo.text = "x"  # type: ignore[misc]
    ack_event(mo)  # no ack: nothing happens
    assert OutboundSms("m", "Shop", "+79161234567", 0, 0, [b"x"]).valid_until_ms is None


def test_ack_once_runs_on_the_loop_once_from_any_thread() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        calls: list[int] = []
        ack = AckOnce(loop, lambda: calls.append(threading.get_ident()))
        event = GatewayReceipt("id1", "DELIVRD", None, "+7", 1, ack=ack)
        await asyncio.to_thread(ack_event, event)
        ack()
        await asyncio.to_thread(ack)
        await asyncio.sleep(0.01)
        assert calls == [threading.get_ident()]  # once, on the loop's thread

    asyncio.run(body())


def test_ack_after_the_loop_is_gone_is_a_no_op() -> None:
    loop = asyncio.new_event_loop()
    calls: list[int] = []
    ack = AckOnce(loop, lambda: calls.append(1))
    loop.close()
    ack()
    assert calls == []


def test_expiry_goes_to_http_providers_as_iso_utc_and_back() -> None:
    at = int(datetime(2026, 12, 1, 15, 30, tzinfo=UTC).timestamp() * 1000)
    assert iso_utc(at) == "2026-12-01T15:30:00.000Z"
    assert iso_utc(at + 750) == "2026-12-01T15:30:00.750Z"
    doc = {"id": "m1", "from": "Shop", "to": "+79161234567", "text": "hi"}
    assert _check_message(doc | {"valid_until": iso_utc(at), "ttl_s": 60}) is None
    assert _expiry_ms(doc | {"valid_until": iso_utc(at + 750)}, 0) == at + 750
    assert _expiry_ms(doc | {"ttl_s": 60}, at) == at + 60_000
    assert _expiry_ms(doc, at) is None
    assert _check_message(doc | {"valid_until": "tomorrow"}) is not None
    assert _check_message(doc | {"valid_until": "2026-12-01T15:30:00"}) is not None  # no zone
    assert _check_message(doc | {"ttl_s": -1}) is not None
    assert _check_message(doc | {"ttl_s": True}) is not None
