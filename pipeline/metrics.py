"""What a worker tells its operators: Prometheus metrics, `/healthz` and `/readyz`, JSON logs.

Every metric of the project is defined here, once, each with a line saying what it
counts. A Grafana dashboard reads these names: renaming one or its labels breaks it.

* Outputs of a Kafka transaction are counted when it commits (`Pending`, or the router's
  per-transaction counts through `count_committed`): a batch that aborts and is read
  again is counted once.
* The hot path pays a dict lookup per label set (`Children`), never a `.labels()` call;
  gauges of state (queue depth, lag, throttle rate) are sampled every few seconds.
* `serve(port, health)` answers `/metrics`, `/healthz` (the process and its loop are
  alive) and `/readyz` (it does its job: in its consumer group, gateway bound) from a
  daemon thread; port 0 serves nothing. The redirect service mounts the same answers on
  its own aiohttp app instead (`metrics_body`).
* `use_log_format("json")` makes every log line one JSON object (`JsonFormatter`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

PORT_ENV = "RASSYLKA_METRICS_PORT"
PORT_KNOB = f"--metrics-port / {PORT_ENV}"
HOST_ENV = "RASSYLKA_METRICS_HOST"
STUCK_AFTER_S = 120.0
"""`/healthz` fails when the worker's loop has not come round for this long."""
SAMPLE_EVERY_S = 5.0
"""How often workers sample gauges of state: consumer lag, queue depth, throttle rates."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)
_TRANSACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                        60.0)
_ROWS_BUCKETS = (1, 10, 50, 100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000)

# ------------------------------------------------------------------ the metrics
EVENTS_IN = Counter(
    "rassylka_events_in", "Input records a worker processed (committed, where it commits "
    "transactions), by topic.", ["topic"])
REQUESTS = Counter(
    "rassylka_requests", "Notification requests the router put on a lane (committed), by lane.",
    ["lane"])
OUTCOMES = Counter(
    "rassylka_outcomes", "Send outcomes the sender recorded (committed), by status and reason "
    "(empty when none).", ["status", "reason"])
UNMATCHED = Counter(
    "rassylka_unmatched_events", "Business events that matched no rule (committed), by event "
    "type.", ["event_type"])
DEAD_LETTERS = Counter(
    "rassylka_dead_letters", "Records sent to the dead-letter topic, by stage and reason.",
    ["stage", "reason"])
SUBMIT_LATENCY = Histogram(
    "rassylka_submit_latency_seconds", "Time from handing an SMS to the gateway to its "
    "submit answer (window and throttle waits included).", buckets=_LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge(
    "rassylka_queue_depth", "Requests cleared to send, waiting for the wire, by lane and route.",
    ["lane", "route"])
IN_FLIGHT = Gauge("rassylka_in_flight", "Submits on the wire without an answer yet.")
MARKETING_WAITING = Gauge(
    "rassylka_marketing_waiting", "Marketing requests consumed and not decided yet: more "
    "than the route has room for (a backlog).")
THROTTLE_RATE = Gauge(
    "rassylka_throttle_rate", "Submit rate allowed now (parts/s), by bind: `<route>/<n>` for "
    "an SMPP bind, the route for an HTTP route, `<route>/sender` for the sender's own bucket.",
    ["bind"])
RECEIPTS_UNCORRELATED = Counter(
    "rassylka_receipts_uncorrelated", "Delivery receipts recorded without a message id "
    "(their submit answer never named the SMSC id in time).")
TRANSACTION_SECONDS = Histogram(
    "rassylka_transaction_seconds", "Committed Kafka transactions, begin to commit, by stage "
    "(the sink: one batch, insert and offset commit).", ["stage"],
    buckets=_TRANSACTION_BUCKETS)
CONSUMER_LAG = Gauge(
    "rassylka_consumer_lag", "Records between the consumer's position and the partition's "
    "end, by topic and partition (sampled every few seconds).", ["topic", "partition"])
SINK_BATCH_ROWS = Histogram(
    "rassylka_sink_batch_rows", "Rows per batch the sink stored in ClickHouse.",
    buckets=_ROWS_BUCKETS)
SINK_LAG = Gauge(
    "rassylka_sink_lag", "Records on the sink's topics not stored in ClickHouse yet: its "
    "consumer lag plus the rows it holds.")
BUILD_INFO = Gauge("rassylka_build_info", "Always 1: the installed Rassylka version.",
                   ["version"])
CONFIG_VERSION = Gauge(
    "rassylka_config_version_info", "1 for the config release stamp the worker runs with.",
    ["stamp"])


class Children:
    """`metric.labels(*fixed, *values)`, cached: one dict lookup per label set afterwards."""

    __slots__ = ("metric", "fixed", "_cache")

    def __init__(self, metric: Any, *fixed: str) -> None:
        self.metric = metric
        self.fixed = fixed
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self.metric.labels(*self.fixed, *values)
        return child


class Pending:
    """Counter increments held until the transaction they belong to commits.

    `add` during the transaction; `commit()` after it committed, `clear()` when a new
    one begins (an aborted transaction's increments are dropped there).
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}

    def add(self, child: Any, amount: float = 1) -> None:
        self._counts[child] = self._counts.get(child, 0) + amount

    def commit(self) -> None:
        for child, amount in self._counts.items():
            child.inc(amount)
        self._counts.clear()

    def clear(self) -> None:
        self._counts.clear()


events_in = Children(EVENTS_IN)
requests = Children(REQUESTS)
outcomes = Children(OUTCOMES)
unmatched = Children(UNMATCHED)
_dead_letters: dict[str, Children] = {}


def dead_letters(stage: str) -> Children:
    """The dead-letter counters of `stage`, by reason."""
    found = _dead_letters.get(stage)
    if found is None:
        found = _dead_letters[stage] = Children(DEAD_LETTERS, stage)
    return found


def count_topics(counts: dict[str, int]) -> None:
    """Add processed input records, {topic: count}."""
    for topic, n in counts.items():
        events_in(topic).inc(n)


def count_committed(stage: str, counts: dict[str, int]) -> None:
    """Add a committed transaction's counts, keyed like the router's stats:
    `request:<lane>`, `dead_letter:<reason>`, `no_rule:<event type>`; others are ignored."""
    for key, n in counts.items():
        kind, _, label = key.partition(":")
        if kind == "request":
            requests(label).inc(n)
        elif kind == "dead_letter":
            dead_letters(stage)(label).inc(n)
        elif kind == "no_rule":
            unmatched(label).inc(n)


def set_config_stamp(stamp: str | None) -> None:
    """Say which config release the worker runs with (replaces the previous one)."""
    CONFIG_VERSION.clear()
    CONFIG_VERSION.labels(stamp or "unknown").set(1)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("rassylka")
    except PackageNotFoundError:
        return "unknown"


class LagSampler:
    """Sets `rassylka_consumer_lag` for a confluent-kafka consumer's assigned partitions
    from its position and the high watermark it last fetched (no broker round trip).
    Partitions it no longer owns lose their series."""

    def __init__(self) -> None:
        self._shown: set[tuple[str, str]] = set()

    def sample(self, consumer: Any) -> int:
        """Update the gauges; returns the total lag of the partitions whose lag is known."""
        try:
            positions = consumer.position(consumer.assignment())
        except (AttributeError, RuntimeError):  # a test double, or closed
            return 0
        except Exception as exc:  # KafkaException: the next sample tries again
            log.debug("consumer lag not sampled: %s", exc)
            return 0
        total = 0
        shown: set[tuple[str, str]] = set()
        for tp in positions:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0 or tp.offset < 0:
                continue  # nothing fetched yet
            lag = max(0, high - tp.offset)
            labels = (tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(*labels).set(lag)
            shown.add(labels)
            total += lag
        for labels in self._shown - shown:
            try:
                CONSUMER_LAG.remove(*labels)
            except KeyError:
                pass
        self._shown = shown
        return total


def gateway_rates(gateway: Any) -> dict[str, float]:
    """The rates a gateway's buckets allow now, by bind (see `THROTTLE_RATE`); empty for a
    gateway that does not say."""
    name = str(getattr(gateway, "name", None) or "gateway")
    binds = getattr(gateway, "_binds", None)
    if binds:
        return {f"{name}/{getattr(b, 'index', i)}": float(b.bucket.rate)
                for i, b in enumerate(binds) if getattr(b, "bucket", None) is not None}
    bucket = getattr(gateway, "bucket", None)
    rate = getattr(bucket, "rate", None)
    return {name: float(rate)} if isinstance(rate, int | float) else {}


# ------------------------------------------------------------- health, readiness
class Health:
    """What `/healthz` and `/readyz` answer for one worker.

    The worker calls `beat()` once per loop iteration. Alive: the loop has not started
    yet, or came round within `stuck_after_s`. Ready: alive, the loop started, and every
    check given to `require` holds (checks run in the server's thread: keep them to
    reading attributes).
    """

    def __init__(self, stuck_after_s: float = STUCK_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.last_beat: float | None = None
        self._checks: list[tuple[str, Callable[[], bool]]] = []

    def beat(self) -> None:
        self.last_beat = self.clock()

    def require(self, what: str, check: Callable[[], bool]) -> None:
        """Ready only while `check()` is true; `/readyz` names `what` when it is not."""
        self._checks.append((what, check))

    def alive(self) -> tuple[bool, str]:
        if self.last_beat is None:
            return True, "starting"
        idle = self.clock() - self.last_beat
        if idle > self.stuck_after_s:
            return False, f"loop stuck for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        alive, why = self.alive()
        if not alive:
            return False, why
        if self.last_beat is None:
            return False, "starting"
        waiting = []
        for what, check in self._checks:
            try:
                ok = check()
            except Exception:  # state changing under the check: not ready this time
                ok = False
            if not ok:
                waiting.append(what)
        if waiting:
            return False, "waiting for " + ", ".join(waiting)
        return True, "ok"


def metrics_body(accept: str | None) -> tuple[bytes, str]:
    """The `/metrics` answer (body, content type) in the format the scraper accepts."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = metrics_body(self.headers.get("Accept"))
                self._answer(200, body, content_type)
            elif path in ("/healthz", "/readyz"):
                ok, why = health.alive() if path == "/healthz" else health.ready()
                self._answer(200 if ok else 503, f"{why}\n".encode(), "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per scrape is noise

    return Handler


class MetricsServer:
    """A running metrics endpoint; `close()` stops it."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])
        self.thread = threading.Thread(target=server.serve_forever, name="metrics",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exporting() -> None:
    """Set up this process's metrics for scraping: `rassylka_build_info`, and no `_created`
    series (half the scrape, nothing lost). Called once, before serving `/metrics`."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    BUILD_INFO.labels(version()).set(1)


def serve(port: int, health: Health, host: str | None = None,
          knob: str = PORT_KNOB) -> MetricsServer | None:
    """Serve `/metrics`, `/healthz` and `/readyz` on host:port in a daemon thread (host:
    RASSYLKA_METRICS_HOST, default all addresses); None for port 0. Called by the worker
    commands before they start; a port that cannot be opened is a ConfigError naming `knob`."""
    if not port:
        return None
    host = host or os.environ.get(HOST_ENV) or "0.0.0.0"
    exporting()
    try:
        server = ThreadingHTTPServer((host, port), _handler(health))
    except OSError as exc:
        raise ConfigError([f"metrics port {port} on {host} cannot be opened "
                           f"({exc.strerror or exc}): choose another with {knob}"]) from exc
    server.daemon_threads = True
    log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", host, port)
    return MetricsServer(server)


# ------------------------------------------------------------------------- logs
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, exc_info.

    Only the message the code formatted goes out, never the record's arguments on
    their own: what is safe to log is decided where the message is written.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def use_log_format(fmt: str, handlers: Iterable[logging.Handler] | None = None) -> None:
    """Format every root handler's lines as `fmt` ("text" or "json"); ValueError otherwise."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    targets = list(handlers if handlers is not None else root.handlers)
    if not targets:
        handler = logging.StreamHandler()
        root.addHandler(handler)
        targets = [handler]
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in targets:
        handler.setFormatter(formatter)


def json_logs() -> bool:
    """Whether the root logger writes JSON lines (`use_log_format("json")` was applied)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
