"""The HTTP events API on the real broker: what it publishes, what it refuses, and when
it says 202.

The API runs in the test's process (`serve`, as `rassylka api` serves it) on a free port;
each test has its own topics. The broker-outage test starts a private broker of its own
(infra/kafka/kafka.sh on free ports, jars shared with the session's broker) and stops it
mid-test: the session's broker is never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from stages import settle

from pipeline import avro, kafka_io, topics
from pipeline.api.app import create_api_app, serve
from pipeline.api.keys import create_key, split_key, store_key
from pipeline.api.settings import ApiSettings
from pipeline.procs import free_port
from pipeline.settings import ROOT, Settings
from pipeline.topics import create_topics

pytestmark = pytest.mark.integration

NOW = 1_795_600_000_000
ORDER = {"event_id": "ord-1", "customer_id": "cust-1", "occurred_at_ms": NOW,
         "source": "shop-web", "order_id": "A-1", "status": "shipped",
         "tracking_url": "https://shop.example.ru/t/A-1"}
PAYMENT = {"customer_id": "cust-2", "occurred_at_ms": NOW, "invoice_id": "INV-1",
           "amount_minor": 150_000, "due_date": "2026-12-31"}
PROFILE = {"customer_id": "cust-1", "phone": "+79161234567", "first_name": "Анна"}
CONSENT = {"phone": "+79161234567", "scope": "marketing", "status": "opt_in",
           "source": "web_form", "changed_at_ms": NOW}
PUBLISHED = (topics.ORDER_STATUS, topics.PAYMENT_DUE, topics.PROMOTION, topics.SERVICE_NOTICE,
             topics.PROFILES, topics.CONSENT)


@pytest.fixture
def ns(settings: Settings) -> Settings:
    """The test's catalog topics (no Schema Registry needed: nothing here reads Confluent
    framing)."""
    create_topics(settings)
    return settings


class Api:
    """A running API and a client session; `post` returns (status, JSON body, headers)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def post(self, path: str, body: Any, key: str | None,
                   headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.session.post(self.url + path, data=data, headers=sent) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None, dict(resp.headers)


@asynccontextmanager
async def running(settings: Settings, api: ApiSettings | None = None) -> AsyncIterator[Api]:
    app = create_api_app(settings, api or ApiSettings(max_router_lag=0))
    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
            for _ in range(600):
                if server.done():
                    server.result()  # start-up failed: raise its error
                try:
                    async with session.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            yield Api(url, session)
    finally:
        stop.set()
        await server


def records(settings: Settings, idle: float = 2.0) -> dict[str, list[kafka_io.Received]]:
    """Everything the API may have published, per catalog topic."""
    return {name: settle(settings, name, idle=idle, timeout=20) for name in PUBLISHED}


def test_bad_bodies_get_a_precise_4xx_and_publish_nothing(
        ns: Settings, caplog: pytest.LogCaptureFixture) -> None:
    _, key = create_key(ns, "shop", ["events", "profiles", "consents"])
    _, profiles_only = create_key(ns, "crm", ["profiles"])
    caplog.set_level(logging.DEBUG)
    big = {**ORDER, "attributes": {"pad": "x" * 70_000}}
    cases: list[tuple[str, Any, str | None, dict[str, str], int, str | None]] = [
        # path, body, key, headers, status, the path a problem names
        ("/v1/events/order_status_changed", ORDER, None, {}, 401, None),
        ("/v1/events/order_status_changed", ORDER, key[:-1] + "x", {}, 401, None),
        ("/v1/events/order_status_changed", ORDER, profiles_only, {}, 403, None),
        ("/v1/events/order_shipped", ORDER, key, {}, 404, "type"),
        ("/v1/events/order_status_changed", b"{not json", key, {}, 400, ""),
        ("/v1/events/order_status_changed", [ORDER], key, {}, 400, ""),
        ("/v1/events/order_status_changed", big, key, {}, 413, None),
        ("/v1/events/order_status_changed", {k: v for k, v in ORDER.items() if k != "order_id"},
         key, {}, 422, "order_id"),
        ("/v1/events/order_status_changed", {**ORDER, "amount_minor": "12.50"}, key, {}, 422,
         "amount_minor"),
        ("/v1/events/order_status_changed", {**ORDER, "satus": "paid"}, key, {}, 422, "satus"),
        ("/v1/events/order_status_changed", {**ORDER, "customer_id": ""}, key, {}, 422,
         "customer_id"),
        ("/v1/events/order_status_changed", {**ORDER, "occurred_at_ms": 0}, key, {}, 422,
         "occurred_at_ms"),
        ("/v1/events/order_status_changed", {**ORDER, "attributes": {"tier": 1}}, key, {}, 422,
         "attributes.tier"),
        ("/v1/events:batch", {"events": [{"type": "order_status_changed", "event": ORDER},
                                         {"type": "payment_due",
                                          "event": {**PAYMENT, "due_date": None}}]},
         key, {}, 422, "events[1].event.due_date"),
        ("/v1/events:batch", {"events": [{"type": "payment", "event": PAYMENT}]}, key, {}, 422,
         "events[0].type"),
        ("/v1/events:batch", {"items": []}, key, {}, 400, "events"),
        ("/v1/events:batch", {"events": [{"type": "payment_due", "event": PAYMENT}] * 5001},
         key, {}, 413, "events"),
        ("/v1/profiles", [PROFILE, {**PROFILE, "phone": None}], key, {}, 422, "[1].phone"),
        ("/v1/consents", {**CONSENT, "phone": "89161234567"}, key, {}, 422, "phone"),
        ("/v1/consents", {**CONSENT, "scope": "promo"}, key, {}, 422, "scope"),
        ("/v1/events/order_status_changed", ORDER, key, {"Idempotency-Key": "x" * 201}, 400,
         "Idempotency-Key"),
    ]

    async def run() -> list[tuple[int, Any]]:
        async with running(ns) as api:
            out = []
            for path, body, k, headers, _, _ in cases:
                raw = body if isinstance(body, bytes) else None
                status, answer, _ = await api.post(path, body, k, headers, raw=raw)
                out.append((status, answer))
            return out

    answers = asyncio.run(run())
    for (path, _, _, _, status, where), (got, answer) in zip(cases, answers, strict=True):
        assert got == status, (path, answer)
        if where is not None:
            assert where in [p["path"] for p in answer["problems"]], (path, answer)
    assert all(not found for found in records(ns).values())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    found = split_key(key)
    assert found is not None
    # the secret as the key parses it: it may itself hold "_", so never split("_")[2]
    # (that was "" for such a key, and "" is in every log)
    assert key not in logged and found[1] not in logged
    assert "A-1" not in logged and "+79161234567" not in logged


def test_accepted_requests_publish_what_a_direct_publish_does(ns: Settings) -> None:
    _, key = create_key(ns, "shop", ["events", "profiles", "consents"])

    async def run() -> list[tuple[int, Any, dict[str, str]]]:
        async with running(ns) as api:
            return [await api.post("/v1/events/order_status_changed", ORDER, key),
                    await api.post("/v1/events:batch", {"events": [
                        {"type": "payment_due", "event": PAYMENT},
                        {"type": "order_status_changed", "event": {**ORDER, "event_id": "ord-2"}},
                    ]}, key),
                    await api.post("/v1/profiles", PROFILE, key),
                    await api.post("/v1/consents", [CONSENT, {**CONSENT, "scope": "transactional"}],
                                   key)]

    single, many, profile, consent = asyncio.run(run())
    assert single[:2] == (202, {"accepted": 1, "event_ids": ["ord-1"]})
    assert many[0] == 202 and many[1]["event_ids"][1] == "ord-2"
    made = many[1]["event_ids"][0]  # the payment had no event_id: the API made one
    assert len(made) == 36
    assert profile[:2] == (202, {"accepted": 1}) and consent[:2] == (202, {"accepted": 2})

    found = records(ns)
    orders = found[topics.ORDER_STATUS]
    assert sorted(r.key for r in orders) == [b"cust-1", b"cust-1"]
    first = next(r for r in orders if r.record["event_id"] == "ord-1")
    assert first.value == avro.encode("order_status_changed", ORDER)  # byte for byte
    [payment] = found[topics.PAYMENT_DUE]
    assert payment.key == b"cust-2"
    assert payment.value == avro.encode("payment_due", {**PAYMENT, "event_id": made})
    [stored] = found[topics.PROFILES]
    assert (stored.key, stored.value) == (b"cust-1", avro.encode("customer_profile", PROFILE))
    assert sorted(r.key for r in found[topics.CONSENT]) == [b"+79161234567|marketing",
                                                             b"+79161234567|transactional"]


def test_a_retried_request_publishes_once_even_across_a_restart(ns: Settings) -> None:
    _, key = create_key(ns, "shop", ["events"])
    body = {"events": [{"type": "payment_due", "event": {**PAYMENT, "invoice_id": f"I-{i}"}}
                       for i in range(20)]}
    same = {"Idempotency-Key": "order-A-1-attempt"}

    async def first_process() -> list[tuple[int, Any, dict[str, str]]]:
        async with running(ns) as api:
            # two at once with the same key (one waits for the other), then a retry
            both = await asyncio.gather(api.post("/v1/events:batch", body, key, same),
                                        api.post("/v1/events:batch", body, key, same))
            again = await api.post("/v1/events:batch", body, key, same)
            other = await api.post("/v1/events:batch", {"events": body["events"][:1]}, key, same)
            return [*both, again, other]

    async def second_process() -> tuple[int, Any, dict[str, str]]:
        async with running(ns) as api:  # a restarted API: it reads the answers back
            return await api.post("/v1/events:batch", body, key, same)

    a, b, again, other = asyncio.run(first_process())
    after_restart = asyncio.run(second_process())
    assert a[0] == b[0] == again[0] == after_restart[0] == 202
    assert a[1] == b[1] == again[1] == after_restart[1]
    assert len(a[1]["event_ids"]) == 20
    replayed = [r for r in (a, b, again, after_restart) if r[2].get("Idempotent-Replayed")]
    assert len(replayed) == 3
    assert other[0] == 422 and other[1]["problems"][0]["path"] == "Idempotency-Key"
    stored = settle(ns, topics.PAYMENT_DUE, idle=2.0)
    assert len(stored) == 20
    assert sorted(r.record["event_id"] for r in stored) == sorted(a[1]["event_ids"])


def test_revoked_keys_and_missing_scopes_are_refused(ns: Settings) -> None:
    entry, key = create_key(ns, "shop", ["profiles"])

    async def run() -> list[int]:
        async with running(ns) as api:
            out = [(await api.post("/v1/profiles", PROFILE, key))[0],
                   (await api.post("/v1/consents", CONSENT, key))[0]]
            store_key(ns, entry.key_id, None)  # revoke: the tail drops it
            for _ in range(100):
                status = (await api.post("/v1/profiles", PROFILE, key))[0]
                if status == 401:
                    break
                await asyncio.sleep(0.1)
            out.append(status)
            async with api.session.get(api.url + "/openapi.json") as resp:
                doc = await resp.json()
            out.append(len(doc["paths"]))
            return out

    assert asyncio.run(run()) == [202, 403, 401, 7]


def test_429_with_retry_after_when_the_router_lags(ns: Settings) -> None:
    _, key = create_key(ns, "shop", ["events", "profiles"])
    kafka_io.publish(ns, topics.ORDER_STATUS,
                     [("cust-1", {**ORDER, "event_id": f"e{i}"}) for i in range(5)],
                     "order_status_changed")  # no router runs: all 5 wait
    limits = ApiSettings(max_router_lag=3, lag_check_s=0.2)

    async def run() -> list[tuple[int, Any, dict[str, str]]]:
        async with running(ns, limits) as api:
            await asyncio.sleep(1.0)
            return [await api.post("/v1/events/order_status_changed", ORDER, key),
                    await api.post("/v1/profiles", PROFILE, key)]

    busy, profile = asyncio.run(run())
    assert busy[0] == 429 and int(busy[2]["Retry-After"]) >= 1
    assert "router is 5 events behind" in busy[1]["problems"][0]["message"]
    assert profile[0] == 202  # profiles are not held back by the router's lag
    assert len(settle(ns, topics.ORDER_STATUS, idle=1.5)) == 5


# ------------------------------------------------------- a broker that stops mid-test
def _kafka_sh(action: str, port: int, home: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP", "KAFKA_CONTROLLER_PORT")}
    env.update(KAFKA_PORT=str(port), KAFKA_HOME_DIR=str(home))
    subprocess.run([str(ROOT / "infra" / "kafka" / "kafka.sh"), action], env=env, check=True,
                   timeout=300, capture_output=True)


def _two_free_ports() -> int:
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def private_broker(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[int, Path]]:
    """A broker of this test's own (its port, its home): the jars of the session's broker
    (kafka.sh fetches them into its default home) are linked, never fetched again."""
    cache = ROOT / "infra" / "kafka" / ".cache"
    home = tmp_path / "kafka"
    home.mkdir()
    for libs in cache.glob("libs-*"):
        (home / libs.name).symlink_to(libs)
    port = _two_free_ports()
    _kafka_sh("up", port, home)
    try:
        yield port, home
    finally:
        _kafka_sh("down", port, home)


def test_no_202_for_an_event_the_broker_did_not_store(
        settings: Settings, private_broker: tuple[int, Path]) -> None:
    port, home = private_broker
    ns = replace(settings, kafka_bootstrap=f"127.0.0.1:{port}")
    create_topics(ns)
    _, key = create_key(ns, "shop", ["events"])
    limits = ApiSettings(max_router_lag=0, delivery_timeout_s=4.0)
    answers: list[tuple[str, int]] = []

    async def run() -> None:
        async with running(ns, limits) as api:
            stopping: asyncio.Task[None] | None = None

            async def client(n: int) -> None:
                failed = 0
                for i in range(100_000):
                    event_id = f"c{n}-{i}"
                    try:
                        status, _, _ = await api.post("/v1/events/order_status_changed",
                                                      {**ORDER, "event_id": event_id}, key)
                    except aiohttp.ClientError:
                        status = 0
                    answers.append((event_id, status))
                    failed = failed + 1 if status != 202 else 0
                    if failed >= 2 and stopping is not None and stopping.done():
                        return  # the broker is down and the API says so

            loop = asyncio.get_running_loop()
            clients = [asyncio.create_task(client(n)) for n in range(8)]
            while sum(1 for _, s in answers if s == 202) < 200:
                await asyncio.sleep(0.05)
            stopping = asyncio.ensure_future(loop.run_in_executor(None, _kafka_sh, "down",
                                                                  port, home))
            await asyncio.wait_for(asyncio.gather(*clients), 120)
            await stopping

    asyncio.run(run())
    acked = {e for e, s in answers if s == 202}
    refused = {e for e, s in answers if s != 202}
    assert len(acked) >= 200 and refused, (len(acked), len(refused))
    assert {s for _, s in answers} <= {202, 503, 429, 0}
    _kafka_sh("up", port, home)  # the same broker, its log intact
    stored = {r.record["event_id"] for r in settle(ns, topics.ORDER_STATUS, idle=3.0, timeout=90)
              if r.record}
    assert acked <= stored, f"{len(acked - stored)} events answered 202 are not on the topic"
    # a broker still taking writes while it shuts down may store some refused ones: allowed
