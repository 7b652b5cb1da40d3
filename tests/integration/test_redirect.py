"""The click redirect service against the real broker: valid, unknown and tampered codes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from stages import wait_for

from connectors.redirect import create_redirect_app
from pipeline import kafka_io, topics
from pipeline.links import make_code, shorten
from pipeline.settings import Settings

SECRET = "integration-secret"
MID = "5f0c2d6e9a8b4c7d8e1f2a3b4c5d6e7f"
NOW = int(time.time() * 1000)


def request(message_id: str, text: str, links: list[str]) -> dict[str, Any]:
    return {
        "request_id": message_id, "event_id": f"e-{message_id}", "event_type": "promotion",
        "event_occurred_at_ms": NOW, "rule_id": "promo", "template_id": "promo_a",
        "variant": "a", "locale": "ru", "customer_id": "c-1", "phone": "+79161234567",
        "country": "RU", "time_zone": None, "lane": "marketing", "priority": 0,
        "sender_id": "SHOP", "text": text, "created_at_ms": NOW, "expires_at_ms": NOW + 60_000,
        "send_at_ms": None, "dedup_window_s": 60, "dedup_by_content": False,
        "allow_transliteration": False, "campaign_id": "bf", "links": links,
    }


async def get(client: TestClient, path: str) -> tuple[int, str, str]:
    async with client.get(path, allow_redirects=False,
                          headers={"User-Agent": "pytest-phone"}) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def wait_redirect(client: TestClient, path: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """GET `path` until the index knows the code (bounded), return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await get(client, path)
        if answer[0] != 404 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.2)


async def exercise(settings: Settings, short_codes: list[str]) -> dict[str, Any]:
    app = create_redirect_app(settings, SECRET)
    async with TestClient(TestServer(app)) as client:
        health_deadline = time.monotonic() + 30
        while (await client.get("/healthz")).status != 200:
            assert time.monotonic() < health_deadline, "redirect service never became ready"
            await asyncio.sleep(0.2)
        first = await wait_redirect(client, f"/c/{short_codes[0]}")
        second = await get(client, f"/c/{short_codes[1]}?url=https://evil.example/&next=https://evil.example/")
        head = await client.head(f"/c/{short_codes[0]}", allow_redirects=False)
        unknown = await get(client, f"/c/{make_code('no-such-message', 0, SECRET)}")
        tampered_code = short_codes[0][:-1] + ("A" if short_codes[0][-1] != "A" else "B")
        tampered = await get(client, f"/c/{tampered_code}?url=https://evil.example/")
        wrong_index = await get(client, f"/c/{make_code(MID, 7, SECRET)}")
        garbage = await get(client, "/c/..%2F..%2Fetc?url=https://evil.example/")
        return {"first": first, "second": second, "head": head.status, "unknown": unknown,
                "tampered": tampered, "wrong_index": wrong_index, "garbage": garbage}


def test_redirect_valid_unknown_tampered_and_query_string(ns: Settings) -> None:
    text, links = shorten("Скидки! https://shop.example.ru/bf?utm=sms и https://pay.example.ru/x",
                          MID, SECRET)
    assert links == ["https://shop.example.ru/bf?utm=sms", "https://pay.example.ru/x"]
    codes = [word.rsplit("/c/", 1)[1] for word in text.split() if "/c/" in word]
    kafka_io.publish(ns, topics.REQUESTS_MARKETING, [("c-1", request(MID, text, links))],
                     "notification_request")

    got = asyncio.run(exercise(ns, codes))

    assert got["first"][:2] == (302, "https://shop.example.ru/bf?utm=sms")
    # the query string never chooses the target
    assert got["second"][:2] == (302, "https://pay.example.ru/x")
    assert got["head"] == 302
    for name in ("unknown", "tampered", "wrong_index", "garbage"):
        status, location, body = got[name]
        assert status == 404 and location == "" and "not found" in body, name

    clicks = wait_for(ns, topics.CLICKS, 2)
    assert len(clicks) == 2  # GETs only: the HEAD, 404s and tampered codes made no click
    by_url = {m.record["url"]: m for m in clicks}
    assert set(by_url) == set(links)
    for msg in clicks:
        assert msg.schema == "click" and msg.key == MID.encode()
        assert msg.record["message_id"] == MID and msg.record["user_agent"] == "pytest-phone"
        assert msg.record["code"] in codes and msg.record["clicked_at_ms"] >= NOW


def test_a_restarted_service_resolves_links_from_the_links_topic(ns: Settings) -> None:
    text, links = shorten("Go https://shop.example.ru/a", MID, SECRET)
    code = text.rsplit("/c/", 1)[1]
    kafka_io.publish(ns, topics.REQUESTS_MARKETING, [("c-1", request(MID, text, links))],
                     "notification_request")

    async def once() -> tuple[int, str, str]:
        async with TestClient(TestServer(create_redirect_app(ns, SECRET))) as client:
            return await wait_redirect(client, f"/c/{code}")

    assert asyncio.run(once())[:2] == (302, "https://shop.example.ru/a")
    # Same consumer group: the indexer has committed past the request, so the second
    # instance can only know the link from the compacted links topic.
    assert asyncio.run(once())[:2] == (302, "https://shop.example.ru/a")
