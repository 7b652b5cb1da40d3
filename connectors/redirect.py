"""The click redirect service: `GET /c/<code>` -> click event on Kafka -> 302 to the original URL.

How a code is resolved (see `pipeline.links` for the code format):

1. The code's HMAC tag is checked first; a malformed or tampered code is a 404.
2. The code names a message (64-bit key) and a link index. The original URLs live in the
   notification request's ``links`` array. An *indexer* (consumer group
   ``<app_id>-redirect-indexer`` over both request lanes) copies ``message_id -> links`` of
   every request with links into the compacted topic ``<prefix>links`` (created here;
   key = message_id, value = JSON ``{"message_id", "links"}``), so links outlive the
   request topics' retention. Every replica tails that whole topic into memory.
3. The redirect goes only to ``links[index]`` of that message: nothing from the query
   string or the path is ever used as a target (no open redirect). Unknown codes are a 404.

A click record (schemas/click.avsc, key = message_id) is produced for each GET (HEAD
requests, as sent by link previewers, redirect without counting a click). Production is
asynchronous: a crash may lose clicks of the last moments, never redirects twice.

A request aiohttp cannot even parse (a request line over 8 KB, such as an over-long code)
is answered with a bare 400 and logged as one warning line: the input is neither echoed
nor logged, and no traceback is written per request (`RedirectRunner`).

Run with `redirect_command(host, port)`; the secret comes from RASSYLKA_LINK_SECRET. The
service refuses to start without it unless told `--dev` (the demo, local runs), which uses
the public development secret of `pipeline.links` and says so loudly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from pipeline import avro, kafka_io, metrics, topics
from pipeline.links import (
    DEV_SECRET,
    SECRET_ENV,
    InvalidCode,
    LinkRef,
    message_key,
    parse_code,
    require_link_secret,
)
from pipeline.settings import Settings
from pipeline.state.store import ensure_compacted_topic, watermarks

log = logging.getLogger(__name__)

LINKS_TOPIC = "links"
REQUEST_TOPICS = (topics.REQUESTS_TRANSACTIONAL, topics.REQUESTS_MARKETING)
NOT_FOUND = "link not found\n"
BAD_REQUEST = "bad request\n"


class LinkIndex:
    """In-memory map message key -> (message_id, original URLs); safe to share with threads."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, message_id: str, links: list[str]) -> None:
        self._by_key[message_key(message_id)] = (message_id, tuple(links))

    def resolve(self, ref: LinkRef) -> tuple[str, str] | None:
        """(message_id, original URL) of a verified code, or None when unknown."""
        found = self._by_key.get(ref.message_key)
        if found is None or ref.index >= len(found[1]):
            return None
        return found[0], found[1][ref.index]

    def __len__(self) -> int:
        return len(self._by_key)


def links_value(message_id: str, links: list[str]) -> bytes:
    """The value of a `links` topic record."""
    return json.dumps({"message_id": message_id, "links": links}, ensure_ascii=False).encode()


class LinkFeed:
    """Background threads: the indexer (requests -> links topic) and the tail (links topic -> index)."""

    def __init__(self, settings: Settings, index: LinkIndex) -> None:
        self.settings = settings
        self.index = index
        self.links_topic = settings.topic(LINKS_TOPIC)
        self.stopping = threading.Event()
        self.loaded = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        ensure_compacted_topic(
            self.settings.kafka_bootstrap, self.links_topic, self.settings.partitions
        )
        for target in (self._tail, self._indexer):
            thread = threading.Thread(
                target=target, name=f"redirect-{target.__name__}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)

    def _tail(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"{self.settings.app_id}-redirect-tail-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            parts = topics.ready_partitions(consumer, self.links_topic)
            ends = {}
            for p in parts:
                low, high = watermarks(consumer, self.links_topic, p)
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.links_topic, p, OFFSET_BEGINNING) for p in parts])
            if not ends:
                self.loaded.set()
            while not self.stopping.is_set():
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() or msg.value() is None:
                        continue
                    try:
                        entry = json.loads(msg.value())
                        self.index.add(str(entry["message_id"]), [str(u) for u in entry["links"]])
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning(
                            "bad links record at %s/%s: %s", msg.partition(), msg.offset(), exc
                        )
                    if msg.partition() in ends and msg.offset() + 1 >= ends[msg.partition()]:
                        del ends[msg.partition()]
                        if not ends:
                            self.loaded.set()
                            log.info("link index loaded: %d messages", len(self.index))
        except Exception:
            log.exception("link index tail stopped")
        finally:
            consumer.close()

    def _indexer(self) -> None:
        settings = self.settings
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.app_id}-redirect-indexer",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
            }
        )
        producer = kafka_io.producer(settings)
        reg = avro.registry()
        try:
            consumer.subscribe([settings.topic(name) for name in REQUEST_TOPICS])
            while not self.stopping.is_set():
                batch = consumer.consume(500, 0.5)
                if not batch:
                    continue
                for msg in batch:
                    if msg.error() or msg.value() is None:
                        continue
                    metrics.events_in(msg.topic()).inc()
                    try:
                        request = avro.decode("notification_request", msg.value(), reg)
                    except avro.DecodeError as exc:  # the sender dead-letters it; not ours to do
                        log.warning(
                            "skipping undecodable request at %s/%s: %s",
                            msg.topic(),
                            msg.partition(),
                            exc,
                        )
                        continue
                    if not request["links"]:
                        continue
                    self.index.add(request["request_id"], request["links"])
                    producer.produce(
                        self.links_topic,
                        key=request["request_id"].encode(),
                        value=links_value(request["request_id"], request["links"]),
                    )
                    producer.poll(0)
                if producer.flush(30):
                    raise RuntimeError("links topic did not take the index records")
                consumer.commit(asynchronous=False)  # only after the links are stored
        except (KafkaException, RuntimeError):
            log.exception("link indexer stopped")
        finally:
            producer.flush(10)
            consumer.close()


def click_record(
    code: str, message_id: str, url: str, user_agent: str | None, now_ms: int
) -> dict[str, Any]:
    """The `click` record for one opened short link."""
    return {
        "click_id": uuid.uuid4().hex,
        "code": code,
        "message_id": message_id,
        "url": url,
        "clicked_at_ms": now_ms,
        "user_agent": user_agent[:512] if user_agent else None,
    }


def create_redirect_app(
    settings: Settings,
    secret: str,
    index: LinkIndex | None = None,
    feed: bool = True,
) -> web.Application:
    """The aiohttp app. With `feed` it keeps its link index from Kafka in background threads."""
    index = index if index is not None else LinkIndex()
    link_feed = LinkFeed(settings, index) if feed else None
    clicks_topic = settings.topic(topics.CLICKS)
    state: dict[str, Any] = {}

    async def on_startup(app: web.Application) -> None:
        state["producer"] = kafka_io.producer(settings)
        if link_feed is not None:
            link_feed.start()

    async def on_cleanup(app: web.Application) -> None:
        if link_feed is not None:
            link_feed.stop()
        remaining = state["producer"].flush(15)
        if remaining:
            log.error("%d click records were not delivered at shutdown", remaining)

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            log.error("click record not delivered: %s", err)

    async def click(request: web.Request) -> web.StreamResponse:
        code = request.match_info["code"]
        try:
            ref = parse_code(code, secret)
        except InvalidCode:
            return web.Response(status=404, text=NOT_FOUND)
        found = index.resolve(ref)
        if found is None:
            return web.Response(status=404, text=NOT_FOUND)
        message_id, url = found
        if not url.lower().startswith(("http://", "https://")):
            return web.Response(status=404, text=NOT_FOUND)
        if request.method == "GET":
            record = click_record(
                code, message_id, url, request.headers.get("User-Agent"), int(time.time() * 1000)
            )
            producer = state["producer"]
            producer.produce(
                clicks_topic,
                key=message_id.encode(),
                value=avro.encode("click", record),
                on_delivery=on_delivery,
            )
            producer.poll(0)
        return web.Response(
            status=302,
            headers={
                "Location": url,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def healthz(request: web.Request) -> web.Response:
        loaded = link_feed is None or link_feed.loaded.is_set()
        return web.json_response(
            {"status": "ok" if loaded else "loading", "links": len(index)},
            status=200 if loaded else 503,
        )

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = metrics.metrics_body(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    metrics.exporting()
    app = web.Application()
    app.router.add_get("/c/{code}", click)
    # Both say "ready": the link index is loaded (/healthz kept its meaning for callers).
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    app.router.add_get("/metrics", metrics_page)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


class _QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, except for requests its HTTP parser rejects.

    aiohttp answers those with its parser's message, which quotes the start of the input,
    and logs a traceback for each; here they get a fixed 400 and one warning line.
    """

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and isinstance(exc, HttpProcessingError):
            log.warning("400 for an unparsable request from %s (%s)", request.remote,
                        type(exc).__name__)
            response = web.Response(status=400, text=BAD_REQUEST)
            response.force_close()
            return response
        return super().handle_error(request, status, exc, message)


class _QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class RedirectRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer unparsable requests with a bare 400."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _QuietServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve `app` on host:port with `RedirectRunner` until `stop` is set, then clean up."""
    runner = RedirectRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("redirect service listening on http://%s:%d", host, port)
        await stop.wait()
    finally:
        await runner.cleanup()


def redirect_command(
    host: str = "0.0.0.0",
    port: int = 8080,
    settings: Settings | None = None,
    secret: str | None = None,
) -> None:
    """Run the redirect service until SIGTERM / SIGINT (mounted as `rassylka redirect`).

    `secret` defaults to RASSYLKA_LINK_SECRET; without it, ConfigError before anything
    starts. The public development secret is accepted only when passed in (`--dev`), with
    a warning.
    """
    settings = settings or Settings.from_env()
    secret = secret or require_link_secret()
    if secret == DEV_SECRET:
        log.warning("%s is not set: using the PUBLIC development link secret (--dev); anyone "
                    "can forge short links — never run like this in production", SECRET_ENV)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(create_redirect_app(settings, secret), host, port, stop)

    asyncio.run(main())
