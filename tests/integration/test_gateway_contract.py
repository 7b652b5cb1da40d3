"""One contract, every gateway: the same behaviours run against each connector and its simulator.

* ``smpp``: ``SmppGateway`` over real SMPP to ``connectors.smsc_sim``;
* ``http``: ``HttpGateway`` over HTTP/JSON to ``connectors.http_provider_sim``, with
  signed callbacks back to the gateway.

Each test gets a started gateway and a handle on its simulator (``Rig``) from the
parametrised ``rig`` fixture; ``behaviour`` (override it with ``parametrize``) says how
the simulator and the gateway are set up, in words both understand. The last section
holds what only the HTTP connector has (status mapping, timeouts, callback signatures).
Everything listens on free ports of 127.0.0.1 and every wait is bounded.

Tests consume events as the sender does: they call ``ack()`` on what they have "recorded",
and the provider hears about an event only then; ``Rig.reopen`` replaces the gateway (a
sender killed and restarted) to see what the provider delivers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import pytest

from connectors.gateway import (
    Gateway,
    GatewayEvent,
    GatewayInbound,
    GatewayReceipt,
    OutboundSms,
)
from connectors.http_gateway import HttpGateway, HttpRoute, sign
from connectors.http_provider_sim import HttpProviderSimulator, ProviderSimConfig
from connectors.smpp import SmppGateway, SmppRoute
from connectors.smsc_sim import SimConfig, SmscSimulator
from pipeline.procs import free_port
from pipeline.sms.encoding import decode_payload, encode_sms

T = TypeVar("T")

API_KEY = "contract-key"
SECRET = "contract-secret"
PHONE = "+79161234567"
# The HTTP provider's words for the SMPP states the contract speaks of.
HTTP_STATUS = {
    "DELIVRD": "delivered",
    "UNDELIV": "undelivered",
    "EXPIRED": "expired",
    "REJECTD": "rejected",
}


@dataclass
class Rig:
    """A started gateway, its simulator, and the loop they run on."""

    kind: str
    gateway: SmppGateway | HttpGateway
    runner: asyncio.Runner
    # gateway message id -> the text the provider got under that id
    text_of: Callable[[str], str]
    # how many submissions the provider accepted
    accepted: Callable[[], int]
    inject_mo: Callable[[str, str, str], Awaitable[Any]]
    # gateway message id -> the expiry (epoch ms) the provider got, None when none
    expiry_of: Callable[[str], int | None]
    # receipts and MO the provider has seen acknowledged (SMPP ESME_ROK / HTTP 2xx)
    acknowledged: Callable[[], int]
    # close the gateway and start a new one on the same provider (a restarted sender)
    new_gateway: Callable[[], Awaitable[SmppGateway | HttpGateway]]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return self.runner.run(asyncio.wait_for(coro, timeout))

    async def reopen(self) -> None:
        await self.gateway.close()
        self.gateway = await self.new_gateway()


def _smpp_expiry(sim: SmscSimulator, gateway_id: str) -> int | None:
    (rec,) = [r for r in sim.submits if r.message_id == gateway_id]
    return rec.valid_until_ms


def _smpp_text(sim: SmscSimulator, gateway_id: str) -> str:
    (rec,) = [r for r in sim.submits if r.message_id == gateway_id]
    body = rec.short_message
    if rec.esm_class & 0x40:
        body = body[1 + body[0] :]
    return decode_payload(rec.data_coding, body)


async def _start(
    kind: str, b: dict[str, Any], runner: asyncio.Runner
) -> tuple[Rig, Callable[[], Awaitable[None]]]:
    state = b.get("receipt_state", "DELIVRD")
    rate = float(b.get("rate_per_s", 2000.0))
    retries = int(b.get("throttle_retries", 8))
    sim_common = {
        "seed": 7,
        "latency_ms": b.get("latency_ms", (0.0, 0.0)),
        "failure_rate": b.get("failure_rate", 0.0),
        "throttle_above_per_s": b.get("throttle_above_per_s", 0.0),
        "receipt_delay_ms": (10.0, 60.0),
    }
    if kind == "smpp":
        port = free_port()
        smsc = SmscSimulator(SimConfig(port=port, receipt_outcomes={state: 1.0}, **sim_common))
        await smsc.start()

        async def new_smpp() -> SmppGateway:
            smpp = SmppGateway(
                SmppRoute(
                    "127.0.0.1",
                    port,
                    "rassylka",
                    "secret",
                    binds=2,
                    window=32,
                    rate_per_bind=rate / 2,
                    throttle_retries=retries,
                )
            )
            await smpp.start()
            await smpp.wait_bound(timeout=5)
            return smpp

        async def stop_smpp() -> None:
            await rig.gateway.close()
            await smsc.stop()

        rig = Rig(
            kind,
            await new_smpp(),
            runner,
            text_of=lambda gw_id: _smpp_text(smsc, gw_id),
            accepted=lambda: sum(1 for r in smsc.submits if r.status == 0),
            inject_mo=smsc.inject_mo,
            expiry_of=lambda gw_id: _smpp_expiry(smsc, gw_id),
            acknowledged=lambda: smsc.stats.delivered,
            new_gateway=new_smpp,
        )
        return rig, stop_smpp
    provider = HttpProviderSimulator(
        ProviderSimConfig(
            port=0,
            api_key=API_KEY,
            secret=SECRET,
            retry_after="0.05",
            receipt_outcomes={HTTP_STATUS[state]: 1.0},
            **sim_common,
        )
    )
    await provider.start()

    async def new_http() -> HttpGateway:
        http = HttpGateway(
            HttpRoute(
                url=provider.url,
                api_key=API_KEY,
                callback_secret=SECRET,
                callback_port=0,
                rate_per_s=rate,
                concurrency=32,
                throttle_retries=retries,
                response_timeout_s=float(b.get("response_timeout_s", 10.0)),
            )
        )
        await http.start()
        provider.callback_url = http.callback_url
        return http

    def http_message(gw_id: str) -> Any:
        (msg,) = [m for m in provider.messages if m.message_id == gw_id]
        return msg

    async def stop_http() -> None:
        await rig.gateway.close()
        await provider.stop()

    rig = Rig(
        kind,
        await new_http(),
        runner,
        text_of=lambda gw_id: http_message(gw_id).text,
        accepted=lambda: len(provider.messages),
        inject_mo=provider.inject_mo,
        expiry_of=lambda gw_id: getattr(http_message(gw_id), "valid_until_ms", None),
        acknowledged=lambda: provider.stats.callbacks_ok,
        new_gateway=new_http,
    )
    return rig, stop_http


@pytest.fixture
def behaviour() -> dict[str, Any]:
    """How the simulator and gateway behave; tests override it with ``parametrize``."""
    return {}


@pytest.fixture(params=["smpp", "http"])
def rig(request: pytest.FixtureRequest, behaviour: dict[str, Any]) -> Iterator[Rig]:
    with asyncio.Runner() as runner:
        started, stop = runner.run(asyncio.wait_for(_start(request.param, behaviour, runner), 15))
        try:
            yield started
        finally:
            runner.run(asyncio.wait_for(stop(), 15))


def sms(n: int = 1, text: str = "Your order 42 is ready", **kw: Any) -> OutboundSms:
    encoded = encode_sms(text, n & 0xFF)
    fields: dict[str, Any] = {
        "message_id": f"m{n}",
        "source": "Shop",
        "destination": PHONE,
        "data_coding": encoded.data_coding,
        "esm_class": encoded.esm_class,
        "parts": encoded.short_messages(),
    } | kw
    return OutboundSms(**fields)


def ack(event: GatewayEvent) -> None:
    """Acknowledge as the sender does after its commit (tolerates gateways without ack)."""
    done = getattr(event, "ack", None)
    if done is not None:
        done()


async def collect(
    gw: Gateway,
    want: Callable[[GatewayEvent], bool],
    count: int = 1,
    timeout: float = 5.0,
    acknowledge: bool = True,
) -> list[GatewayEvent]:
    """The first ``count`` events matching ``want`` (acknowledged unless told not to);
    fails after ``timeout`` seconds."""
    got: list[GatewayEvent] = []
    async with asyncio.timeout(timeout):
        async with contextlib.aclosing(gw.events()) as events:
            async for ev in events:
                if want(ev):
                    if acknowledge:
                        ack(ev)
                    got.append(ev)
                    if len(got) == count:
                        return got
    raise AssertionError(f"events() ended after {len(got)} of {count}")


async def nothing_more(gw: Gateway, quiet_s: float = 0.6) -> list[GatewayEvent]:
    """Whatever arrives within ``quiet_s`` (expected: nothing)."""
    got: list[GatewayEvent] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(quiet_s):
            async for ev in gw.events():
                got.append(ev)
    return got


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


# ── the contract ──────────────────────────────────────────────────────────────


def test_is_a_gateway(rig: Rig) -> None:
    assert isinstance(rig.gateway, Gateway)
    assert isinstance(rig.gateway.name, str) and rig.gateway.name
    assert "secret" not in repr(rig.gateway.route)


def test_single_part(rig: Rig) -> None:
    async def body() -> None:
        res = await rig.gateway.send(sms(1))
        assert res.ok and res.status == 0 and res.error is None and not res.retryable
        assert res.message_id == "m1"
        (gw_id,) = res.gateway_message_ids
        assert gw_id
        assert rig.text_of(gw_id) == "Your order 42 is ready"
        assert rig.gateway.counters.submitted == 1
        assert rig.accepted() == 1

    rig.run(body())


def test_multipart(rig: Rig) -> None:
    text = "Ваш заказ 42 собран и ждёт вас в пункте выдачи на Тверской, 7. " * 3
    message = sms(2, text)
    assert len(message.parts) == 3 and message.esm_class & 0x40 and message.data_coding == 8

    async def body() -> None:
        res = await rig.gateway.send(message)
        assert res.ok, res
        ids = res.gateway_message_ids
        assert ids and all(ids) and len(set(ids)) == len(ids)
        # SMPP: one id per part, in order; HTTP: one id for the whole text.
        assert len(ids) in (1, len(message.parts))
        assert "".join(rig.text_of(i) for i in ids) == text

    rig.run(body())


@pytest.mark.parametrize(
    "behaviour", [{"receipt_state": "DELIVRD"}, {"receipt_state": "UNDELIV"}], ids=str
)
def test_receipts_correlate_by_gateway_id(rig: Rig, behaviour: dict[str, Any]) -> None:
    async def body() -> None:
        results = await asyncio.gather(
            rig.gateway.send(sms(1)),
            rig.gateway.send(sms(2, "Длинное сообщение о заказе. " * 4)),
            rig.gateway.send(sms(3, destination="+79990001122")),
        )
        assert all(r.ok for r in results)
        where = {gw_id: r for r in results for gw_id in r.gateway_message_ids}
        receipts = await collect(
            rig.gateway, lambda e: isinstance(e, GatewayReceipt), count=len(where)
        )
        assert {e.gateway_message_id for e in receipts} == set(where)
        for e in receipts:
            assert isinstance(e, GatewayReceipt)
            assert e.state == behaviour["receipt_state"]
            assert e.error_code is not None
            want_dest = "+79990001122" if where[e.gateway_message_id].message_id == "m3" else PHONE
            assert e.destination == want_dest
            assert abs(e.received_at_ms - time.time() * 1000) < 10_000
        assert rig.gateway.counters.receipts == len(where)

    rig.run(body())


def test_inbound_mo_arrives_as_gateway_inbound(rig: Rig) -> None:
    async def body() -> None:
        await rig.inject_mo(PHONE, "Shop", "СТОП")
        await rig.inject_mo("+79990001122", "Shop", "stop.")
        events = await collect(rig.gateway, lambda e: isinstance(e, GatewayInbound), count=2)
        inbound = [e for e in events if isinstance(e, GatewayInbound)]
        # HTTP callbacks travel concurrently: their order is not promised.
        assert sorted((e.source, e.destination, e.text) for e in inbound) == [
            (PHONE, "Shop", "СТОП"),
            ("+79990001122", "Shop", "stop."),
        ]
        refs = {e.gateway_ref for e in inbound}
        assert None not in refs and len(refs) == 2  # the provider's ids, for dedup
        assert rig.gateway.counters.inbound == 2

    rig.run(body())


@pytest.mark.parametrize("behaviour", [{"failure_rate": 1.0}], ids=["refusing"])
def test_permanent_rejection_is_not_retryable(rig: Rig) -> None:
    async def body() -> None:
        res = await rig.gateway.send(sms(1))
        assert not res.ok and not res.retryable
        assert res.status != 0 and res.error
        assert res.gateway_message_ids == []
        assert rig.gateway.counters.rejected == 1
        assert rig.accepted() == 0

    rig.run(body())


def test_invalid_destination_is_refused_without_sending(rig: Rig) -> None:
    async def body() -> None:
        res = await rig.gateway.send(sms(1, destination="89161234567"))
        assert not res.ok and not res.retryable
        assert rig.accepted() == 0

    rig.run(body())


@pytest.mark.parametrize(
    "behaviour", [{"throttle_above_per_s": 40.0, "rate_per_s": 400.0}], ids=["overloaded"]
)
def test_overload_slows_down_and_is_retried(rig: Rig) -> None:
    async def body() -> None:
        started = time.monotonic()
        results = await asyncio.gather(*(rig.gateway.send(sms(i)) for i in range(40)))
        assert all(r.ok for r in results), {r.error for r in results}
        counters = rig.gateway.counters
        assert counters.throttled > 0 and counters.retries > 0
        assert counters.submitted == 40
        assert rig.accepted() == 40  # every message exactly once
        # 40/s per session (the SMSC simulator: per bind, 2 binds) with 0.2 s of burst:
        # the last ones cannot go out before ~0.3 s
        assert time.monotonic() - started > 0.25

    rig.run(body())


@pytest.mark.parametrize(
    "behaviour",
    [{"throttle_above_per_s": 1.0, "throttle_retries": 0, "rate_per_s": 1000.0}],
    ids=["overloaded-no-retries"],
)
def test_overload_beyond_retries_is_a_retryable_failure(rig: Rig) -> None:
    async def body() -> None:
        results = await asyncio.gather(*(rig.gateway.send(sms(i)) for i in range(5)))
        refused = [r for r in results if not r.ok]
        assert refused, "the provider should have refused some"
        for r in refused:
            assert r.retryable and r.gateway_message_ids == [] and r.status != 0
        assert rig.accepted() == 5 - len(refused)

    rig.run(body())


def test_close_ends_events(rig: Rig) -> None:
    async def body() -> None:
        seen: list[GatewayEvent] = []

        async def consume() -> None:
            async for ev in rig.gateway.events():
                seen.append(ev)

        consumer = asyncio.create_task(consume())
        res = await rig.gateway.send(sms(1))
        assert res.ok
        await collect_after(seen, 1)
        await rig.gateway.close()
        await asyncio.wait_for(consumer, 5)  # ends, does not hang
        late = await rig.gateway.send(sms(2))
        assert not late.ok and late.retryable
        assert rig.accepted() == 1

    rig.run(body())


async def collect_after(seen: list[GatewayEvent], count: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while len(seen) < count:
            await asyncio.sleep(0.01)


# ── acknowledgement: recorded first, then acknowledged ──────────────────────


@pytest.mark.parametrize("behaviour", [{"receipt_state": "UNDELIV"}], ids=["undeliv"])
def test_unacked_receipt_is_redelivered_to_a_new_gateway_acked_one_is_not(rig: Rig) -> None:
    """Regression (receipts lost on crash): the provider was told "received" before the
    sender had recorded the receipt. Now what was not acknowledged comes again."""

    async def body() -> None:
        results = [await rig.gateway.send(sms(1)), await rig.gateway.send(sms(2))]
        kept, lost = (r.gateway_message_ids[0] for r in results)
        receipts = await collect(
            rig.gateway, lambda e: isinstance(e, GatewayReceipt), count=2, acknowledge=False
        )
        by_id = {e.gateway_message_id: e for e in receipts if isinstance(e, GatewayReceipt)}
        assert set(by_id) == {kept, lost}
        ack(by_id[kept])  # recorded; the other one was in the sender's transaction when it died
        await rig.reopen()
        (again,) = await collect(rig.gateway, lambda e: True, acknowledge=False, timeout=10)
        assert again == replace(by_id[lost], received_at_ms=again.received_at_ms)
        by_id[lost].ack()  # the dead gateway's ack: harmless, does nothing
        ack(again)
        ack(again)  # twice: harmless
        await eventually(lambda: rig.acknowledged() == 2)
        assert await nothing_more(rig.gateway) == []  # the acknowledged one never comes back
        await rig.reopen()
        assert await nothing_more(rig.gateway) == []
        assert rig.acknowledged() == 2

    rig.run(body(), timeout=40)


def test_unacked_mo_is_redelivered_with_the_same_ref(rig: Rig) -> None:
    async def body() -> None:
        await rig.inject_mo(PHONE, "Shop", "STOP")
        (first,) = await collect(
            rig.gateway, lambda e: isinstance(e, GatewayInbound), acknowledge=False
        )
        assert isinstance(first, GatewayInbound)
        await rig.reopen()
        (again,) = await collect(rig.gateway, lambda e: True, acknowledge=False, timeout=10)
        assert isinstance(again, GatewayInbound)
        assert (again.source, again.text) == (PHONE, "STOP")
        assert again.gateway_ref is not None and again.gateway_ref == first.gateway_ref
        ack(again)
        await eventually(lambda: rig.acknowledged() == 1)
        assert await nothing_more(rig.gateway) == []

    rig.run(body(), timeout=40)


def test_provider_hears_of_an_event_only_when_it_is_acked(rig: Rig) -> None:
    async def body() -> None:
        await rig.gateway.send(sms(1))
        (receipt,) = await collect(
            rig.gateway, lambda e: isinstance(e, GatewayReceipt), acknowledge=False
        )
        await asyncio.sleep(0.3)
        assert rig.acknowledged() == 0
        await asyncio.to_thread(ack, receipt)  # the sender acks from its commit thread
        await eventually(lambda: rig.acknowledged() == 1)

    rig.run(body())


# ── time-to-live reaches the provider ─────────────────────────────────────────


def test_expiry_reaches_the_provider(rig: Rig) -> None:
    """Regression (TTL never reached the SMSC): the provider got no validity at all."""

    async def body() -> None:
        expires = int(time.time() * 1000) + 3_600_000
        with_ttl = await rig.gateway.send(sms(1, valid_until_ms=expires))
        without = await rig.gateway.send(sms(2))
        assert with_ttl.ok and without.ok
        got = rig.expiry_of(with_ttl.gateway_message_ids[0])
        assert got is not None and expires - 1000 < got <= expires
        assert rig.expiry_of(without.gateway_message_ids[0]) is None

    rig.run(body())


@pytest.mark.parametrize("behaviour", [{"receipt_state": "DELIVRD"}], ids=["delivrd"])
def test_message_past_its_expiry_is_reported_expired(rig: Rig) -> None:
    async def body() -> None:
        now = int(time.time() * 1000)
        late = await rig.gateway.send(sms(1, valid_until_ms=now - 1000))
        fine = await rig.gateway.send(sms(2, valid_until_ms=now + 3_600_000))
        assert late.ok and fine.ok
        receipts = await collect(rig.gateway, lambda e: isinstance(e, GatewayReceipt), count=2)
        states = {e.gateway_message_id: e.state for e in receipts if isinstance(e, GatewayReceipt)}
        assert states == {
            late.gateway_message_ids[0]: "EXPIRED",
            fine.gateway_message_ids[0]: "DELIVRD",
        }

    rig.run(body())


# ── HTTP only: status mapping, timeouts, callback signatures ─────────────────


@contextlib.asynccontextmanager
async def http_rig(
    sim: dict[str, Any] | None = None, **route: Any
) -> AsyncIterator[tuple[HttpProviderSimulator, HttpGateway]]:
    config: dict[str, Any] = {
        "port": 0,
        "api_key": API_KEY,
        "secret": SECRET,
        "seed": 3,
        "retry_after": "0.05",
        "receipt_outcomes": {"delivered": 1.0},
        "receipt_delay_ms": (10.0, 30.0),
    } | (sim or {})
    provider = HttpProviderSimulator(ProviderSimConfig(**config))
    await provider.start()
    settings: dict[str, Any] = {
        "url": provider.url,
        "api_key": API_KEY,
        "callback_secret": SECRET,
        "callback_port": 0,
        "rate_per_s": 1000.0,
        "concurrency": 16,
    } | route
    gateway = HttpGateway(HttpRoute(**settings))
    await gateway.start()
    provider.callback_url = gateway.callback_url
    try:
        yield provider, gateway
    finally:
        await gateway.close()
        await provider.stop()


def run(make: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


def test_http_503_respects_retry_after_then_succeeds() -> None:
    async def body() -> None:
        async with http_rig({"retry_after": "0.2"}) as (sim, gw):
            sim.script(503, 429)
            started = time.monotonic()
            res = await gw.send(sms(1))
            elapsed = time.monotonic() - started
            assert res.ok, res
            assert elapsed >= 0.38  # two Retry-After: 0.2 waits
            assert (gw.counters.throttled, gw.counters.retries) == (2, 2)
            assert (sim.stats.unavailable, sim.stats.throttled) == (1, 1)

    run(body)


def test_http_slow_down_pauses_every_sender() -> None:
    async def body() -> None:
        async with http_rig({"retry_after": "0.3"}) as (sim, gw):
            sim.script(429)
            started = time.monotonic()
            first = asyncio.create_task(gw.send(sms(1)))
            await asyncio.sleep(0.05)  # the 429 is in; now a second sender arrives
            second = await gw.send(sms(2))
            assert second.ok and (await first).ok
            assert time.monotonic() - started >= 0.28  # the second one waited too

    run(body)


def test_http_busy_beyond_retries_and_long_retry_after() -> None:
    async def body() -> None:
        async with http_rig(throttle_retries=2) as (sim, gw):
            sim.script(503, 503, 503)
            res = await gw.send(sms(1))
            assert not res.ok and res.retryable and res.status == 503
            assert res.error is not None and res.error.startswith("throttled")
            assert gw.counters.retries == 2
        async with http_rig({"retry_after": "120"}, max_retry_after_s=5.0) as (sim, gw):
            sim.script(429)
            started = time.monotonic()
            res = await gw.send(sms(1))
            assert not res.ok and res.retryable and res.status == 429
            assert time.monotonic() - started < 1.0  # did not sit out two minutes

    run(body)


@pytest.mark.parametrize(
    ("status", "retryable", "error_start"),
    [
        (400, False, "HTTP 400"),
        (422, False, "HTTP 422"),
        (401, True, "HTTP 401"),
        (404, True, "HTTP 404"),
        (500, True, "in_doubt"),
        (502, True, "in_doubt"),
    ],
)
def test_http_status_mapping(status: int, retryable: bool, error_start: str) -> None:
    async def body() -> None:
        async with http_rig() as (sim, gw):
            sim.script(status)
            res = await gw.send(sms(1))
            assert not res.ok and res.status == status and res.retryable is retryable
            assert res.error is not None and res.error.startswith(error_start)
            assert res.gateway_message_ids == []

    run(body)


def test_http_wrong_api_key_is_refused_by_provider() -> None:
    async def body() -> None:
        async with http_rig(api_key="not-the-key") as (sim, gw):
            res = await gw.send(sms(1))
            assert not res.ok and res.status == 401 and res.retryable
            assert sim.stats.unauthorized == 1 and sim.messages == []

    run(body)


def test_http_connection_refused_is_not_sent() -> None:
    async def body() -> None:
        async with http_rig(url=f"http://127.0.0.1:{free_port()}/v1/messages") as (_, gw):
            res = await gw.send(sms(1))
            assert not res.ok and res.retryable and res.status == 0
            assert res.error is not None and res.error.startswith("not_sent")
            assert gw.counters.not_sent == 1 and gw.counters.in_doubt == 0

    run(body)


def test_http_timeout_after_sending_is_in_doubt_and_provider_dedups_the_retry() -> None:
    async def body() -> None:
        async with http_rig({"latency_ms": (1500.0, 1500.0)}, response_timeout_s=0.3) as (
            sim,
            gw,
        ):
            res = await gw.send(sms(7))
            assert not res.ok and res.retryable
            assert res.error is not None and res.error.startswith("in_doubt")
            assert gw.counters.in_doubt == 1
            (taken,) = sim.messages  # the provider did take it
            assert taken.our_id == "m7"
            # The sender resends an in-doubt transactional message with the same id:
            # the provider answers with the first id and sends nothing new.
            again = await gw.send(sms(7))
            assert again.ok and again.gateway_message_ids == [taken.message_id]
            assert len(sim.messages) == 1 and sim.stats.duplicates == 1

    run(body)


def test_http_rate_and_concurrency_limits() -> None:
    async def body() -> None:
        async with http_rig(rate_per_s=20.0) as (sim, gw):
            started = time.monotonic()
            results = await asyncio.gather(*(gw.send(sms(i)) for i in range(12)))
            assert all(r.ok for r in results)
            # 12 at 20/s with 0.1 s of burst: the last starts no sooner than ~0.45 s
            assert time.monotonic() - started >= 0.4
        async with http_rig({"latency_ms": (100.0, 100.0)}, concurrency=2) as (sim, gw):
            started = time.monotonic()
            results = await asyncio.gather(*(gw.send(sms(i)) for i in range(6)))
            assert all(r.ok for r in results)
            assert sim.stats.max_in_flight == 2
            assert time.monotonic() - started >= 0.28

    run(body)


def _status_body(message_id: str = "abc") -> bytes:
    return json.dumps(
        {"type": "status", "message_id": message_id, "status": "expired", "to": "79161234567"}
    ).encode()


def test_http_callbacks_need_a_valid_fresh_signature() -> None:
    async def body() -> None:
        async with http_rig() as (_, gw), aiohttp.ClientSession() as client:
            url = gw.callback_url
            raw = _status_body()
            now = int(time.time())

            async def post(payload: bytes, headers: dict[str, str]) -> int:
                async with client.post(url, data=payload, headers=headers) as resp:
                    return resp.status

            good = {"X-Timestamp": str(now), "X-Signature": sign(SECRET, now, raw)}
            stale = {"X-Timestamp": str(now - 400), "X-Signature": sign(SECRET, now - 400, raw)}
            refused = [
                await post(raw, {}),  # missing
                await post(raw, {"X-Timestamp": str(now)}),  # missing signature
                await post(raw + b" ", good),  # tampered body
                await post(raw, good | {"X-Signature": sign("guess", now, raw)}),  # wrong secret
                await post(raw, stale),  # replayed too late
            ]
            assert refused == [401] * 5
            assert gw.counters.bad_signature == 5 and gw.events_backlog == 0

            answered = asyncio.create_task(post(raw, good))
            (receipt,) = await collect(gw, lambda e: True, acknowledge=False)
            assert receipt == GatewayReceipt("abc", "EXPIRED", None, PHONE, receipt.received_at_ms)
            await asyncio.sleep(0.1)
            assert not answered.done()  # held open until the receipt is recorded
            ack(receipt)
            assert await answered == 200

            junk = b'{"type": "nonsense"}'
            signed = {"X-Timestamp": str(now), "X-Signature": sign(SECRET, now, junk)}
            assert await post(junk, signed) == 400
            assert gw.counters.bad_callback == 1 and gw.counters.receipts == 1

    run(body)


def test_http_refused_callback_is_retried_by_the_provider() -> None:
    async def body() -> None:
        async with http_rig() as (sim, gw):
            sim.callback_url = gw.callback_url + "-wrong"  # 404 at first
            res = await gw.send(sms(1))
            assert res.ok
            await asyncio.sleep(0.15)
            sim.callback_url = gw.callback_url
            (receipt,) = await collect(gw, lambda e: isinstance(e, GatewayReceipt))
            assert receipt.gateway_message_id == res.gateway_message_ids[0]
            assert sim.stats.callbacks_refused >= 1

    run(body)
