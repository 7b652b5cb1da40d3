"""SmppGateway against the SMSC simulator: real SMPP over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
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
from pipeline.procs import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


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


def test_a_route_sets_the_ton_and_npi_of_short_codes_and_destinations() -> None:
    async def body() -> None:
        async with rig(source_addr_ton=3, source_addr_npi=0, dest_addr_ton=2,
                       dest_addr_npi=1) as (sim, gw):
            for source in ("7522", "Shop", "+79990001122"):
                assert (await gw.send(sms(source=source))).ok
            short, alpha, plus = sim.submits
            assert (short.source, short.source_ton, short.source_npi) == ("7522", 3, 0)
            assert (alpha.source_ton, alpha.source_npi) == (5, 0)  # alphanumeric: always
            assert (plus.source_ton, plus.source_npi) == (1, 1)  # "+": international
            assert {(r.destination, r.dest_ton, r.dest_npi) for r in sim.submits} == {
                ("79161234567", 2, 1)}

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


def test_stalled_consumer_loses_nothing() -> None:
    """A consumer that falls behind holds at most ``inbound_capacity`` unacknowledged
    deliver_sm per bind; the SMSC's further ones are refused "try later" and come again."""
    sim_cfg = {"receipt_delay_ms": (20.0, 20.0), "redeliver_s": 0.2}

    async def body() -> None:
        async with rig(sim_cfg, binds=1, inbound_capacity=8) as (sim, gw):
            results = await asyncio.gather(*(gw.send(sms(i)) for i in range(40)))
            assert all(r.ok for r in results)
            await wait_for(lambda: gw.counters.refused_inbound > 0)
            time.sleep(0.5)  # the event loop stalls too, while receipts are due
            assert gw.unacknowledged <= 8
            want = {i for r in results for i in r.gateway_message_ids}
            seen: set[str] = set()

            def take(ev: GatewayEvent) -> bool:
                assert isinstance(ev, GatewayReceipt)
                seen.add(ev.gateway_message_id)
                ack(ev)
                return want <= seen

            await wait_event(gw, take, timeout=15)
            await wait_for(lambda: sim.waiting == 0)
            assert sim.stats.delivered == 40 and sim.stats.refused > 0

    run(body)


# ── deferred acknowledgement: nothing is answered before ack() ────────────────


def ack(event: GatewayEvent) -> None:
    """Acknowledge as the sender does after its commit (tolerates gateways without ack)."""
    done = getattr(event, "ack", None)
    if done is not None:
        done()


async def next_event(gw: SmppGateway, kind: type, timeout: float = 5.0) -> GatewayEvent:
    return await wait_event(gw, lambda e: isinstance(e, kind), timeout)


async def reconnect(gw: SmppGateway, port: int, **route: Any) -> SmppGateway:
    """Close ``gw`` (as a sender killed between receipt and commit would) and bind anew."""
    await gw.close()
    settings: dict[str, Any] = {"binds": 2, "window": 32, "rate_per_bind": 1000.0} | route
    fresh = SmppGateway(SmppRoute("127.0.0.1", port, "rassylka", "secret", **settings))
    await fresh.start()
    await fresh.wait_bound(timeout=5)
    return fresh


def test_receipt_not_acked_is_redelivered_after_reconnect() -> None:
    """Regression: smpp34 answered deliver_sm on arrival, so a receipt the sender had not
    recorded yet was lost when the sender died. Now it comes again on the next bind."""
    sim_cfg = {"receipt_delay_ms": (5.0, 10.0), "receipt_outcomes": {"UNDELIV": 1.0}}

    async def body() -> None:
        async with rig(sim_cfg) as (sim, gw):
            res = await gw.send(sms())
            first = await next_event(gw, GatewayReceipt)
            assert isinstance(first, GatewayReceipt) and first.state == "UNDELIV"
            assert gw.unacknowledged == 1 and gw.counters.acked == 0
            port = sim.config.port
            gw2 = await reconnect(gw, port)
            try:
                again = await next_event(gw2, GatewayReceipt)
                assert again == replace(first, received_at_ms=again.received_at_ms)
                assert again.gateway_message_id == res.gateway_message_ids[0]
                first.ack()  # the dead session's ack: a no-op, not an error
                assert gw2.counters.acked == 0
                ack(again)
                await wait_for(lambda: gw2.counters.acked == 1 and sim.waiting == 0)
                assert sim.stats.delivered == 1
                ack(again)  # twice is harmless
                # Acknowledged: not delivered again to the next session.
                gw3 = await reconnect(gw2, port)
                gw2 = gw3
                await asyncio.sleep(0.3)
                assert gw3.events_backlog == 0 and sim.stats.delivered == 1
            finally:
                await gw2.close()

    run(body)


def test_mo_not_acked_is_redelivered_with_the_same_ref() -> None:
    async def body() -> None:
        async with rig() as (sim, gw):
            await sim.inject_mo("+79161234567", "Shop", "STOP")
            first = await next_event(gw, GatewayInbound)
            assert isinstance(first, GatewayInbound) and first.gateway_ref
            gw2 = await reconnect(gw, sim.config.port)
            try:
                again = await next_event(gw2, GatewayInbound)
                assert isinstance(again, GatewayInbound)
                assert (again.text, again.source, again.gateway_ref) == (
                    "STOP",
                    "+79161234567",
                    first.gateway_ref,
                )
                ack(again)
                await wait_for(lambda: sim.waiting == 0)
                assert sim.stats.delivered == 1
            finally:
                await gw2.close()

    run(body)


def test_ack_from_a_worker_thread_answers_on_the_loop() -> None:
    async def body() -> None:
        async with rig({"receipt_delay_ms": (5.0, 10.0)}) as (sim, gw):
            await gw.send(sms())
            ev = await next_event(gw, GatewayReceipt)
            await asyncio.sleep(0.2)
            assert sim.waiting == 1 and sim.stats.delivered == 0  # not answered yet
            await asyncio.to_thread(ack, ev)  # the sender commits in a thread
            await wait_for(lambda: sim.stats.delivered == 1 and sim.waiting == 0)
            assert gw.counters.acked == 1 and gw.unacknowledged == 0

    run(body)


async def fake_smsc(on_bound: Callable[[Any], Awaitable[None]]) -> tuple[asyncio.Server, int]:
    """A bare SMSC: answers bind_transceiver, then runs ``on_bound(session)``."""
    from connectors import smpp_session

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bound = asyncio.Event()

        def on_request(session: smpp_session.SmppSession, pdu: smpp_session.Pdu) -> None:
            if pdu.command_id == smpp_session.BIND_TRANSCEIVER:
                session.respond(pdu, 0, b"FAKE\x00")
                bound.set()

        session = smpp_session.SmppSession(reader, writer, on_request, name="fake-smsc")
        session.start()
        await bound.wait()
        await on_bound(session)
        session.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_unreadable_deliver_sm_is_refused_at_once() -> None:
    from connectors import smpp_session

    answers: list[tuple[int, int]] = []

    async def on_bound(session: smpp_session.SmppSession) -> None:
        bad = await session.call(smpp_session.DELIVER_SM, b"\x00\x00\x00")
        good = smpp34.DeliverSm(
            source_addr="79161234567", destination_addr="Shop", short_message=b"STOP"
        )
        ok = session.send_request(smpp_session.DELIVER_SM, smpp_session.pdu_body(good.encode()))
        answers.append((bad.command_id, bad.status))
        await asyncio.sleep(0.3)
        answers.append((-1, int(ok.done())))  # the readable one waits for its ack
        await session.wait_closed()  # until the gateway unbinds

    async def body() -> None:
        server, port = await fake_smsc(on_bound)
        route = SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=1)
        async with SmppGateway(route) as gw:
            ev = await next_event(gw, GatewayInbound)
            assert isinstance(ev, GatewayInbound) and ev.text == "STOP" and ev.gateway_ref is None
            await wait_for(lambda: len(answers) == 2)
            assert answers == [(0x80000005, 0x65), (-1, 0)]  # ESME_RX_P_APPN; not answered
            assert gw.counters.refused_inbound == 1
        server.close()

    run(body)


def test_user_acknowledgements_are_answered_and_not_taken_for_replies() -> None:
    """Regression: a deliver_sm with esm_class "SME manual/user acknowledgement" (0x10) was
    recorded as a customer's reply. It is answered and dropped; an SME delivery
    acknowledgement (0x08) is a receipt, a normal message (0x00) a reply."""
    from connectors import smpp_session

    answers: list[tuple[int, int]] = []

    async def on_bound(session: smpp_session.SmppSession) -> None:
        for esm_class, text in ((0x10, b"user ack"), (0x08, b"id:7 stat:DELIVRD"),
                                (0x00, b"STOP")):
            pdu = smpp34.DeliverSm(source_addr="79161234567", destination_addr="Shop",
                                   short_message=text, source_addr_ton=1, esm_class=esm_class)
            answer = session.send_request(smpp_session.DELIVER_SM,
                                          smpp_session.pdu_body(pdu.encode()))
            if esm_class == 0x10:
                got = await asyncio.wait_for(answer, 5)
                answers.append((got.command_id, got.status))
        await session.wait_closed()

    async def body() -> None:
        server, port = await fake_smsc(on_bound)
        route = SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=1)
        async with SmppGateway(route) as gw:
            seen: list[GatewayEvent] = []
            await wait_event(gw, lambda e: seen.append(e) or len(seen) == 2)
            assert [type(e).__name__ for e in seen] == ["GatewayReceipt", "GatewayInbound"]
            receipt, reply = seen
            assert isinstance(receipt, GatewayReceipt) and receipt.gateway_message_id == "7"
            assert isinstance(reply, GatewayInbound) and reply.text == "STOP"
            await wait_for(lambda: len(answers) == 1)
            assert answers == [(0x80000005, 0)] and gw.counters.acknowledgements == 1
        server.close()

    run(body)


def test_silent_smsc_is_detected_by_enquire_link_and_rebound() -> None:
    from connectors.smpp_session import Pdu, take_pdus

    binds = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers the bind, then reads everything and answers nothing (a hung SMSC)."""
        nonlocal binds
        buffer = bytearray()
        while chunk := await reader.read(4096):
            buffer += chunk
            for pdu in take_pdus(buffer):
                if pdu.command_id == 0x09:
                    binds += 1
                    writer.write(Pdu(0x80000009, 0, pdu.sequence, b"HUNG\x00").encode())

    async def body() -> None:
        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        route = SmppRoute(
            "127.0.0.1",
            port,
            "rassylka",
            "secret",
            binds=1,
            enquire_link_s=0.2,
            response_timeout_s=0.3,
            reconnect_min_s=0.05,
        )
        async with SmppGateway(route) as gw:
            await wait_for(lambda: binds >= 2, timeout=5)
            await gw.wait_bound(timeout=2)
            assert gw.counters.reconnects >= 1
        server.close()

    run(body)


# ── time-to-live reaches the SMSC ─────────────────────────────────────────────


def test_validity_period_reaches_the_smsc() -> None:
    """Regression: validity_period was always empty, so the SMSC could deliver a message
    long after the pipeline's time-to-live."""
    from connectors.smpp_session import absolute_time

    async def body() -> None:
        async with rig() as (sim, gw):
            expires = int(time.time() * 1000) + 3_600_000
            assert (await gw.send(sms(1, valid_until_ms=expires))).ok
            assert (await gw.send(sms(2))).ok
            with_ttl, without = sim.submits
            assert with_ttl.validity_period == absolute_time(expires)
            assert with_ttl.validity_period.endswith("00+") and len(with_ttl.validity_period) == 16
            assert expires - 100 < (with_ttl.valid_until_ms or 0) <= expires
            assert (without.validity_period, without.valid_until_ms) == ("", None)

    run(body)


def test_message_whose_validity_passed_is_reported_expired() -> None:
    sim_cfg = {"receipt_delay_ms": (300.0, 300.0), "receipt_outcomes": {"DELIVRD": 1.0}}

    async def body() -> None:
        async with rig(sim_cfg) as (_, gw):
            soon = int(time.time() * 1000) + 100
            late = await gw.send(sms(1, valid_until_ms=soon))
            fine = await gw.send(sms(2, valid_until_ms=soon + 3_600_000))
            states: dict[str, str] = {}

            def take(ev: GatewayEvent) -> bool:
                if isinstance(ev, GatewayReceipt):
                    states[ev.gateway_message_id] = ev.state
                    ack(ev)
                return len(states) == 2

            await wait_event(gw, take)
            assert states == {
                late.gateway_message_ids[0]: "EXPIRED",
                fine.gateway_message_ids[0]: "DELIVRD",
            }

    run(body)


def test_simulator_process_log_and_control_channel(tmp_path: Path) -> None:
    port, control = free_port(), free_port()
    log_path = tmp_path / "submits.jsonl"
    flags = ["--control-port", str(control), "--log", str(log_path), "--latency-ms", "1-3"]
    proc = start_sim_process(port, *flags, "--receipt-outcomes", "DELIVRD=1", "--seed", "1")
    try:

        async def body() -> None:
            route = SmppRoute("127.0.0.1", port, "rassylka", "secret", binds=1)
            async with SmppGateway(route) as gw:
                res = await gw.send(sms(valid_until_ms=1_796_139_000_000))
                assert res.ok
                logged = list(read_submit_log(log_path))
                assert logged[-1]["message_id"] == res.gateway_message_ids[0]
                assert logged[-1]["destination"] == "79161234567"
                assert logged[-1]["validity_period"] == "261201153000000+"
                assert logged[-1]["valid_until_ms"] == 1_796_139_000_000
                base = f"http://127.0.0.1:{control}"
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{base}/submits") as resp:
                        listed = await resp.json()
                    assert listed["total"] == 1
                    assert listed["submits"][0]["message_id"] == res.gateway_message_ids[0]
                    assert listed["submits"][0]["validity_period"] == "261201153000000+"
                    mo = {"from": "+79161234567", "to": "Shop", "text": "СТОП"}
                    async with http.post(f"{base}/mo", data=json.dumps({**mo, "concat": "x"})) as resp:
                        assert resp.status == 400  # neither "udh" nor "sar": nothing queued
                    async with http.post(f"{base}/mo", data=json.dumps(mo)) as resp:
                        assert resp.status == 200
                ev = await wait_event(gw, lambda e: isinstance(e, GatewayInbound))
                assert isinstance(ev, GatewayInbound) and ev.text == "СТОП"
                ack(ev)
                async with aiohttp.ClientSession() as http:
                    for _ in range(100):
                        async with http.get(f"{base}/health") as resp:
                            health = await resp.json()
                        if health["delivered"] >= 1:
                            break
                        await asyncio.sleep(0.05)
                assert health["waiting"] == 0 and health["sessions"] == 1

        run(body)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
