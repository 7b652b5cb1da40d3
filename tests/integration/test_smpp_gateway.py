"""SmppGateway against the SMSC simulator: real SMPP over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import smpp34

from connectors.gateway import (
    Gateway,
    GatewayEvent,
    GatewayInbound,
    GatewayReceipt,
    OutboundSms,
    ThrottledError,
)
from connectors.smpp import SmppGateway, SmppRoute
from connectors.smsc_sim import SimConfig, SmscSimulator, read_submit_log

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def rig(
    sim: dict[str, Any] | None = None, **route: Any
) -> AsyncIterator[tuple[SmscSimulator, SmppGateway]]:
    """A simulator on a free port and a gateway bound to it (every bind up)."""
    port = free_port()
    simulator = SmscSimulator(SimConfig(port=port, seed=7, **(sim or {})))
    await simulator.start()
    settings: dict[str, Any] = {"binds": 2, "window": 32, "rate_per_bind": 1000.0} | route
    gateway = SmppGateway(SmppRoute("127.0.0.1", port, "rassylka", "secret", **settings))
    try:
        await gateway.start()
        await gateway.wait_bound(timeout=5)
        yield simulator, gateway
    finally:
        await gateway.close()
        await simulator.stop()


async def wait_event(
    gw: SmppGateway, want: Callable[[GatewayEvent], bool], timeout: float = 5.0
) -> GatewayEvent:
    async with asyncio.timeout(timeout):
        async with contextlib.aclosing(gw.events()) as events:
            async for ev in events:
                if want(ev):
                    return ev
    raise AssertionError("events() ended")


async def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def sms(n: int = 1, **kw: Any) -> OutboundSms:
    fields: dict[str, Any] = {
        "message_id": f"m{n}",
        "source": "Shop",
        "destination": "+79161234567",
        "data_coding": 0,
        "esm_class": 0,
        "parts": [b"Your order 42 is ready"],
    } | kw
    return OutboundSms(**fields)


def test_gateway_satisfies_contract() -> None:
    gw = SmppGateway(SmppRoute("127.0.0.1", 1, "a", "b"))
    assert isinstance(gw, Gateway)
    assert "secret" not in repr(SmppRoute("h", 1, "a", "secret"))
    err = ThrottledError(retry_after_ms=250, status=smpp34.ESME_RTHROTTLED)
    assert err.retryable and err.retry_after_ms == 250


def test_single_part_submit() -> None:
    async def body() -> None:
        async with rig() as (sim, gw):
            res = await gw.send(sms())
            assert res.ok and res.status == 0 and res.error is None
            assert len(res.gateway_message_ids) == 1 and res.gateway_message_ids[0]
            (rec,) = sim.submits
            assert rec.message_id == res.gateway_message_ids[0]
            assert (rec.destination, rec.dest_ton, rec.dest_npi) == ("79161234567", 1, 1)
            assert (rec.source, rec.source_ton, rec.source_npi) == ("Shop", 5, 0)
            assert (rec.data_coding, rec.esm_class, rec.registered_delivery) == (0, 0, 1)
            assert rec.short_message == b"Your order 42 is ready"
            assert rec.system_id == "rassylka"

            res = await gw.send(sms(2, source="+79990001122"))
            assert res.ok
            rec = sim.submits[-1]
            assert (rec.source, rec.source_ton, rec.source_npi) == ("79990001122", 1, 1)
            assert gw.counters.submitted == 2

    run(body)


def test_multipart_goes_in_order_on_one_bind() -> None:
    udh = bytes.fromhex("050003ab03")
    parts = [udh + bytes([i]) + "Ч".encode("utf-16-be") * 60 for i in (1, 2, 3)]

    async def body() -> None:
        async with rig() as (sim, gw):
            await gw.send(sms(0))  # move round-robin off the first bind
            res = await gw.send(sms(1, data_coding=8, esm_class=0x40, parts=parts))
            assert res.ok
            assert len(res.gateway_message_ids) == 3
            assert len(set(res.gateway_message_ids)) == 3
            recs = sim.submits[1:]
            assert [r.short_message for r in recs] == parts
            assert [r.message_id for r in recs] == res.gateway_message_ids
            assert len({r.session_id for r in recs}) == 1
            assert all(r.esm_class == 0x40 and r.data_coding == 8 for r in recs)

    run(body)


def test_receipt_correlates_with_submit() -> None:
    sim_cfg = {"receipt_delay_ms": (5.0, 20.0), "receipt_outcomes": {"UNDELIV": 1.0}}

    async def body() -> None:
        async with rig(sim_cfg) as (_, gw):
            res = await gw.send(sms())
            ev = await wait_event(gw, lambda e: isinstance(e, GatewayReceipt))
            assert isinstance(ev, GatewayReceipt)
            assert ev.gateway_message_id == res.gateway_message_ids[0]
            assert ev.state == "UNDELIV"
            assert ev.error_code == "001"
            assert ev.destination == "+79161234567"
            assert ev.received_at_ms > 0
            assert gw.counters.receipts == 1

    run(body)


def test_receipt_before_response_still_arrives() -> None:
    sim_cfg = {"receipt_before_response": 1.0, "receipt_outcomes": {"DELIVRD": 1.0}}

    async def body() -> None:
        async with rig(sim_cfg) as (_, gw):
            results = [await gw.send(sms(i)) for i in range(3)]
            ids = {r.gateway_message_ids[0] for r in results}
            seen: set[str] = set()
            for _ in ids:
                ev = await wait_event(gw, lambda e: isinstance(e, GatewayReceipt))
                assert isinstance(ev, GatewayReceipt) and ev.state == "DELIVRD"
                seen.add(ev.gateway_message_id)
            assert seen == ids

    run(body)


def test_throttled_smsc_slows_the_gateway_down() -> None:
    sim_cfg = {"throttle_above_per_s": 50.0, "receipt_outcomes": {"DELIVRD": 1.0}}

    async def body() -> None:
        async with rig(sim_cfg, binds=2, rate_per_bind=100.0) as (sim, gw):
            results = await asyncio.gather(*(gw.send(sms(i)) for i in range(200)))
            assert all(r.ok for r in results), {r.error for r in results}
            assert gw.counters.throttled > 0
            assert gw.counters.retries > 0
            assert gw.counters.submitted == 200
            answered = [r.status for r in sim.submits]
            assert answered.count(0) == 200
            assert answered.count(smpp34.ESME_RTHROTTLED) == gw.counters.throttled

    run(body)


def test_permanent_failure_is_not_retryable() -> None:
    async def body() -> None:
        async with rig({"failure_rate": 1.0}) as (_, gw):
            res = await gw.send(sms())
            assert not res.ok
            assert res.status == smpp34.ESME_RSYSERR
            assert not res.retryable
            assert res.error is not None and "ESME_RSYSERR" in res.error
            assert res.gateway_message_ids == []

    run(body)


def test_invalid_destination_is_refused_locally() -> None:
    async def body() -> None:
        async with rig() as (sim, gw):
            res = await gw.send(sms(destination="89161234567"))
            assert not res.ok and not res.retryable
            assert sim.submits == []

    run(body)


def test_unanswered_submit_is_in_doubt() -> None:
    sim_cfg = {"drop_response_rate": 1.0, "receipt_delay_ms": (0.0, 0.0)}

    async def body() -> None:
        async with rig(sim_cfg, response_timeout_s=0.5) as (sim, gw):
            res = await gw.send(sms())
            assert not res.ok and res.retryable
            assert res.error == "in_doubt"
            assert gw.counters.in_doubt == 1
            # The SMSC did take it: its receipt still comes.
            ev = await wait_event(gw, lambda e: isinstance(e, GatewayReceipt))
            assert isinstance(ev, GatewayReceipt)
            assert ev.gateway_message_id == sim.submits[0].message_id

    run(body)


def test_mo_stop_ascii_and_cyrillic() -> None:
    async def body() -> None:
        async with rig() as (sim, gw):
            for text in ("STOP", "СТОП", "отписка от рассылки"):
                await sim.inject_mo("+79161234567", "Shop", text)
                ev = await wait_event(gw, lambda e: isinstance(e, GatewayInbound))
                assert isinstance(ev, GatewayInbound)
                assert (ev.text, ev.source, ev.destination) == (text, "+79161234567", "Shop")
            assert gw.counters.inbound == 3

    run(body)


def test_reconnects_after_smsc_restart() -> None:
    async def body() -> None:
        port = free_port()
        route = SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=2, bind_wait_s=0.3)
        gw = SmppGateway(route)
        sim = SmscSimulator(SimConfig(port=port))
        await sim.start()
        try:
            await gw.start()
            await gw.wait_bound(timeout=5)
            assert (await gw.send(sms(1))).ok

            await sim.stop()
            await wait_for(lambda: gw.bound == 0)
            down = await gw.send(sms(2))
            assert not down.ok and down.retryable and down.error == "not_bound"

            sim = SmscSimulator(SimConfig(port=port))
            await sim.start()
            await gw.wait_bound(timeout=10)
            res = await gw.send(sms(3))
            assert res.ok
            assert sim.submits[0].message_id == res.gateway_message_ids[0]
            assert gw.counters.reconnects >= 2
        finally:
            await gw.close()
            await sim.stop()

    run(body)


def start_sim_process(port: int, *flags: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "connectors.smsc_sim", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert f"listening on 127.0.0.1:{port}" in line, line
    return proc


def test_recovers_when_smpp34_session_dies_silently() -> None:
    """A stalled event loop overflows smpp34's inbound buffer; the session dies without
    a Disconnected event. The watchdog must notice, rebind, and lose no receipt."""
    port = free_port()
    proc = start_sim_process(port, "--receipt-delay-ms", "100", "--receipt-outcomes", "DELIVRD=1")
    try:

        async def body() -> None:
            route = SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=1, inbound_capacity=8)
            async with SmppGateway(route) as gw:
                first = await asyncio.gather(*(gw.send(sms(i)) for i in range(60)))
                time.sleep(1.0)  # stall the loop while receipts arrive
                # A send on the dead session is in doubt; the watchdog then rebinds.
                async with asyncio.timeout(15):
                    while not (again := await gw.send(sms(99))).ok:
                        assert again.retryable, again
                        await asyncio.sleep(0.1)
                assert gw.counters.reconnects >= 1
                accepted = [r for r in [*first, again] if r.ok]
                assert len(accepted) >= 30
                want = {i for r in accepted for i in r.gateway_message_ids}
                seen: set[str] = set()

                def collect(ev: GatewayEvent) -> bool:
                    if isinstance(ev, GatewayReceipt):
                        seen.add(ev.gateway_message_id)
                    return want <= seen

                await wait_event(gw, collect, timeout=15)

        run(body)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_simulator_process_log_and_control_channel(tmp_path: Path) -> None:
    port, control = free_port(), free_port()
    log_path = tmp_path / "submits.jsonl"
    flags = ["--control-port", str(control), "--log", str(log_path), "--latency-ms", "1-3"]
    proc = start_sim_process(port, *flags, "--receipt-outcomes", "DELIVRD=1", "--seed", "1")
    try:

        async def body() -> None:
            route = SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=1)
            async with SmppGateway(route) as gw:
                res = await gw.send(sms())
                assert res.ok
                logged = list(read_submit_log(log_path))
                assert logged[-1]["message_id"] == res.gateway_message_ids[0]
                assert logged[-1]["destination"] == "79161234567"
                base = f"http://127.0.0.1:{control}"
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{base}/submits") as resp:
                        listed = await resp.json()
                    assert listed["total"] == 1
                    assert listed["submits"][0]["message_id"] == res.gateway_message_ids[0]
                    mo = {"from": "+79161234567", "to": "Shop", "text": "СТОП"}
                    async with http.post(f"{base}/mo", data=json.dumps(mo)) as resp:
                        assert resp.status == 200
                ev = await wait_event(gw, lambda e: isinstance(e, GatewayInbound))
                assert isinstance(ev, GatewayInbound) and ev.text == "СТОП"

        run(body)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
