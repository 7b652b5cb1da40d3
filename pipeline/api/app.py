"""The aiohttp application of the events API, and `rassylka api`.

Every publishing request goes through the same steps, each able to end it:

1. the API key (`Authorization: Bearer rsk_...`): 401 when missing or not live, 403 when
   it lacks the endpoint's scope;
2. the body size: 413 over the endpoint's limit, before the body is read when the
   request says its length;
3. the Idempotency-Key, when given: a stored first answer is returned again (same body)
   or refused (422, another body); a request with the same key in progress here is
   waited for;
4. the body: 400 when it is not JSON of the endpoint's shape, 422 with every bad field's
   path when an item breaks its contract (`bodies`), 404 for an unknown event type;
5. backpressure: 429 with `Retry-After` when the router's lag is over the limit (event
   endpoints) or too many records wait for the broker;
6. the records are produced and every acknowledgement awaited: 202 with the event ids,
   or 503 when the broker did not store them all in time.

Nothing of a request is published unless it passes 1-5. Logs carry neither keys nor
bodies: the access log is the request line, status, size and time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.api import bodies, openapi
from pipeline.api.bodies import Accepted, EventIds, Invalid
from pipeline.api.idempotency import (
    Answer,
    Answers,
    ensure_answers_topic,
    fingerprint,
    key_problem,
)
from pipeline.api.keys import ApiKey, KeyRing, ensure_keys_topic
from pipeline.api.lag import LagWatch
from pipeline.api.publisher import Backpressure, NotStored, Publisher, Record
from pipeline.api.settings import ApiSettings
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'  # never headers (the key) nor bodies


@dataclass
class Parts:
    """What the app runs on; tests may give their own."""

    keys: KeyRing
    answers: Answers
    publisher: Publisher
    lag: LagWatch | None


def _error(status: int, error: str, message: str = "", path: str = "",
           headers: dict[str, str] | None = None) -> web.Response:
    problems = [{"path": path, "message": message}] if message else []
    return web.json_response({"error": error, "problems": problems, "count": len(problems)},
                             status=status, headers=headers)


def create_api_app(settings: Settings, api: ApiSettings) -> web.Application:
    """The API's aiohttp app; its start-up creates the API topics and reads the keys and
    answers to their end before the first request (blocking, in a thread)."""
    parts = Parts(KeyRing(settings), Answers(settings, api.idempotency_ttl_s),
                  Publisher(settings.kafka_bootstrap, api.delivery_timeout_s, api.max_in_flight),
                  LagWatch(settings, api.lag_check_s) if api.max_router_lag else None)
    doc = json.dumps(openapi.document(api.max_batch)).encode()
    tasks: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        def load() -> None:
            ensure_keys_topic(settings)
            ensure_answers_topic(settings, api.idempotency_ttl_s)
            keys, answers = parts.keys.start(), parts.answers.start()
            log.info("API ready: %d keys, %d stored answers", keys, answers)

        await asyncio.get_running_loop().run_in_executor(None, load)
        parts.publisher.start()
        if parts.lag is not None:
            parts.lag.start()
        tasks.append(asyncio.create_task(_expire(parts.answers)))

    async def on_cleanup(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        left = parts.publisher.stop()
        if left:
            log.error("%d records were not acknowledged at shutdown", left)
        for part in (parts.lag, parts.keys, parts.answers):
            if part is not None:
                part.stop()

    def handler(scope: str, limit: int, build: Callable[[Any, EventIds, web.Request], Accepted],
                events: bool) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            return await _publish(request, parts, api, scope, limit, build, events)
        return handle

    def one_event(body: Any, ids: EventIds, request: web.Request) -> Accepted:
        return bodies.event(settings, request.match_info["type"], body, ids)

    def many_events(body: Any, ids: EventIds, request: web.Request) -> Accepted:
        return bodies.batch(settings, body, ids, api.max_batch)

    def profiles(body: Any, ids: EventIds, request: web.Request) -> Accepted:
        return bodies.profiles(settings, body, api.max_batch)

    def consents(body: Any, ids: EventIds, request: web.Request) -> Accepted:
        return bodies.consents(settings, body, api.max_batch)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=doc, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "keys": len(parts.keys.table),
                                  "in_flight": parts.publisher.in_flight,
                                  "router_lag": parts.lag.lag if parts.lag else None})

    app = web.Application(client_max_size=api.max_body_bytes)
    app.router.add_post("/v1/events:batch", handler("events", api.max_body_bytes, many_events,
                                                    True))
    app.router.add_post("/v1/events/{type}", handler("events", api.max_item_bytes, one_event,
                                                      True))
    app.router.add_post("/v1/profiles", handler("profiles", api.max_body_bytes, profiles, False))
    app.router.add_post("/v1/consents", handler("consents", api.max_body_bytes, consents, False))
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)  # start-up finishes loading before it listens
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def _expire(answers: Answers) -> None:
    while True:
        await asyncio.sleep(60)
        answers.expire()


def _client(request: web.Request, keys: KeyRing) -> ApiKey | None:
    header = request.headers.get("Authorization", "")
    scheme, _, text = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return keys.authenticate(text.strip())


async def _publish(request: web.Request, parts: Parts, api: ApiSettings, scope: str, limit: int,
                   build: Callable[[Any, EventIds, web.Request], Accepted],
                   events: bool) -> web.Response:
    key = _client(request, parts.keys)
    if key is None:
        return _error(401, "unauthorized", "a live API key is needed: Authorization: Bearer "
                      "rsk_...", headers={"WWW-Authenticate": "Bearer"})
    if scope not in key.scopes:
        return _error(403, "forbidden", f"this key's scopes are {', '.join(key.scopes)}; "
                      f"this endpoint needs {scope}")
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "too_large", f"the body is {request.content_length} bytes; at most "
                      f"{limit}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "too_large", f"the body is over {api.max_body_bytes} bytes")
    if len(body) > limit:
        return _error(413, "too_large", f"the body is {len(body)} bytes; at most {limit}")
    idem = request.headers.get("Idempotency-Key")
    if idem is None:
        return await _serve(request, parts, api, build, events, key, body, None)
    if why := key_problem(idem):
        return _error(400, "bad_request", why, path="Idempotency-Key")
    sign = fingerprint(request.method, request.path, body)
    while True:
        stored = parts.answers.get(key.client, idem)
        if stored is not None:
            if stored.fingerprint != sign:
                return _error(422, "idempotency_key_reused", "this Idempotency-Key was used "
                              "for another request; use a new key for a new request",
                              path="Idempotency-Key")
            return web.Response(status=stored.status, body=stored.body.encode(),
                                content_type="application/json",
                                headers={"Idempotent-Replayed": "true"})
        waiting = parts.answers.flights.begin(key.client, idem)
        if waiting is None:
            break
        await waiting  # the same key in progress here: its answer, or our turn if it failed
    try:
        return await _serve(request, parts, api, build, events, key, body, (idem, sign))
    finally:
        parts.answers.flights.end(key.client, idem)


async def _serve(request: web.Request, parts: Parts, api: ApiSettings,
                 build: Callable[[Any, EventIds, web.Request], Accepted], events: bool,
                 key: ApiKey, body: bytes, idem: tuple[str, str] | None) -> web.Response:
    try:
        accepted = build(bodies.parse_json(body), EventIds(key.client, idem and idem[0]),
                         request)
    except Invalid as exc:
        return web.json_response(exc.answer(), status=exc.status)
    if events and parts.lag is not None and (parts.lag.lag or 0) > api.max_router_lag:
        return _too_busy(Backpressure(f"the router is {parts.lag.lag} events behind "
                                      f"(limit {api.max_router_lag})",
                                      max(1, round(api.lag_check_s))))
    try:
        await parts.publisher.publish(accepted.records)
    except Backpressure as exc:
        return _too_busy(exc)
    except NotStored as exc:
        log.warning("%d record(s) of a request not acknowledged: %s", len(accepted.records), exc)
        return _error(503, "not_stored", f"the broker did not acknowledge every record: {exc}; "
                      "some may be stored: retry with the same Idempotency-Key",
                      headers={"Retry-After": "1"})
    answer: dict[str, Any] = {"accepted": len(accepted.records)}
    if events:
        answer["event_ids"] = accepted.event_ids
    text = json.dumps(answer, ensure_ascii=False)
    if idem is not None:
        first = Answer(idem[1], 202, text, int(time.time() * 1000))
        parts.answers.remember(key.client, idem[0], first)
        try:
            await parts.publisher.publish([Record(parts.answers.topic,
                                                  f"{key.client}|{idem[0]}".encode(),
                                                  first.to_json())])
        except (Backpressure, NotStored) as exc:
            # The records are stored: 202 stands. Only this process remembers the answer;
            # a retry elsewhere publishes the same event ids again (deduplicated downstream).
            log.warning("first answer not stored on %s: %s", parts.answers.topic, exc)
    return web.Response(status=202, text=text, content_type="application/json")


def _too_busy(exc: Backpressure) -> web.Response:
    return _error(429, "backpressure", str(exc), headers={"Retry-After": str(exc.retry_after_s)})


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve `app` on host:port until `stop` is set, then clean up. Requests aiohttp cannot
    parse get a bare 400 without echo (the redirect service's runner)."""
    from connectors.redirect import RedirectRunner

    runner = RedirectRunner(app, access_log_format=ACCESS_LOG_FORMAT)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        log.info("events API listening on http://%s:%d", host, port)
        await stop.wait()
    finally:
        await runner.cleanup()


def api_command(host: str, port: int, settings: Settings | None = None) -> None:
    """Run the API until SIGTERM / SIGINT (mounted as `rassylka api`)."""
    settings = settings or Settings.from_env()
    api = ApiSettings.from_env()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(create_api_app(settings, api), host, port, stop)

    asyncio.run(main())

