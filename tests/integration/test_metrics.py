"""Metrics, health and readiness of running workers: a router and a sender (with the SMSC
simulator) scraped over HTTP, and by a real Prometheus server when one is installed
(`make prometheus`: the Debian package)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sendkit import config_with, outcomes, sender, simulator
from stages import profiles_read, stage

from pipeline import kafka_io, topics
from pipeline.procs import free_port, stop
from pipeline.samples import make_profile, order_event
from pipeline.settings import Settings

NOW = int(time.time() * 1000)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200, (status, body[:200])
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and want <= have)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def eventually(check: Callable[[], bool], timeout: float = 45.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.3)


@contextmanager
def pipeline(ns: Settings, tmp_path: Path, router_port: int, sender_port: int,
             ) -> Iterator[Settings]:
    """A router (port by option) and a sender (port by RASSYLKA_METRICS_PORT) on a simulator."""
    cfg = replace(ns, config_dir=config_with(tmp_path, ns.config_dir, quiet_hours={}))
    with simulator(tmp_path) as sim, \
            stage(cfg, ["router", "--metrics-port", str(router_port)], tmp_path), \
            sender(cfg, sim, tmp_path, RASSYLKA_METRICS_PORT=str(sender_port)):
        eventually(lambda: get(router_port, "/healthz")[0] == 200, 30, "router /healthz")
        eventually(lambda: get(sender_port, "/healthz")[0] == 200, 30, "sender /healthz")
        yield cfg


def publish_orders(cfg: Settings, rng: random.Random, statuses: list[str]) -> list[dict]:
    customers = [make_profile(rng, i) for i in range(len(statuses))]
    kafka_io.publish(cfg, topics.PROFILES, ((p["customer_id"], p) for p in customers),
                     "customer_profile")
    profiles_read(cfg)
    events = [order_event(rng, c["customer_id"], status, NOW)
              for c, status in zip(customers, statuses, strict=True)]
    kafka_io.publish(cfg, topics.ORDER_STATUS, ((e["customer_id"], e) for e in events),
                     "order_status_changed")
    return events


def test_router_and_sender_serve_metrics_health_and_readiness(ns: Settings, tmp_path: Path) -> None:
    router_port, sender_port = free_port(), free_port()
    with pipeline(ns, tmp_path, router_port, sender_port) as cfg:
        publish_orders(cfg, random.Random(31), ["shipped", "delivered", "returned"])
        got = outcomes(cfg, 2)
        eventually(lambda: get(router_port, "/readyz")[0] == 200, 30, "router /readyz")
        eventually(lambda: get(sender_port, "/readyz")[0] == 200, 30, "sender /readyz")
        # counters are added when their transaction commits; gauges every few seconds
        eventually(lambda: value(scrape(sender_port), "rassylka_outcomes_total") >= 2
                   and series(scrape(sender_port), "rassylka_consumer_lag")
                   and series(scrape(router_port), "rassylka_consumer_lag"),
                   30, "outcomes counted and consumer lag sampled")
        router, sender_ = scrape(router_port), scrape(sender_port)
        assert get(router_port, "/nothing")[0] == 404
    assert {o["status"] for o in got.values()} == {"submitted"}, got

    orders = cfg.topic(topics.ORDER_STATUS)
    assert value(router, "rassylka_events_in_total", topic=orders) == 3
    assert value(router, "rassylka_events_in_total", topic=cfg.topic(topics.PROFILES)) == 3
    assert value(router, "rassylka_requests_total", lane="transactional") == 2
    assert value(router, "rassylka_requests_total", lane="marketing") == 0
    assert value(router, "rassylka_unmatched_events_total",
                 event_type="order_status_changed") == 1
    assert value(router, "rassylka_transaction_seconds_count", stage="router") >= 1
    assert value(router, "rassylka_build_info") == 1
    assert len(series(router, "rassylka_config_version_info")) == 1
    assert {s["topic"] for s in series(router, "rassylka_consumer_lag")} <= {
        orders, cfg.topic(topics.PROFILES), *(cfg.topic(t) for t in topics.EVENT_TOPICS)}
    assert not [k for k in router if k[0].endswith("_created")], "no _created series"

    lane = cfg.topic(topics.REQUESTS_TRANSACTIONAL)
    assert value(sender_, "rassylka_events_in_total", topic=lane) == 2
    assert value(sender_, "rassylka_outcomes_total", status="submitted", reason="") == 2
    assert value(sender_, "rassylka_submit_latency_seconds_count") >= 2
    assert value(sender_, "rassylka_transaction_seconds_count", stage="sender") >= 1
    assert value(sender_, "rassylka_receipts_uncorrelated_total") == 0
    assert {s["lane"] for s in series(sender_, "rassylka_queue_depth")} == {
        "transactional", "marketing"}
    assert ("rassylka_in_flight", frozenset()) in sender_
    assert ("rassylka_marketing_waiting", frozenset()) in sender_
    assert value(sender_, "rassylka_marketing_waiting") == 0  # no marketing backlog here
    binds = {s["bind"] for s in series(sender_, "rassylka_throttle_rate")}
    assert any(b.endswith("/0") for b in binds) and any(b.endswith("/sender") for b in binds), binds
    assert value(sender_, "rassylka_throttle_rate") > 0
    assert len(series(sender_, "rassylka_config_version_info")) == 1


def test_a_taken_metrics_port_is_one_line_naming_the_knob(ns: Settings, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with stage(ns, ["router", "--metrics-port", str(port)], tmp_path,
                   {"RASSYLKA_METRICS_HOST": "127.0.0.1"}) as proc:
            proc.wait(60)
    assert proc.returncode == 1
    out = next(tmp_path.glob("router-*.log")).read_text(errors="replace").strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: metrics port"), out
    assert "--metrics-port" in out[0] and "RASSYLKA_METRICS_PORT" in out[0], out


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@pytest.mark.skipif(prometheus_binary() is None,
                    reason="no prometheus binary: `make prometheus` installs the Debian package")
def test_a_real_prometheus_scrapes_router_and_sender(ns: Settings, tmp_path: Path) -> None:
    router_port, sender_port, web_port = free_port(), free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "rassylka", "static_configs": [{"targets": [
            f"127.0.0.1:{router_port}", f"127.0.0.1:{sender_port}"]}]}],
    }))
    api = f"http://127.0.0.1:{web_port}/api/v1/query?query="

    def query(expr: str) -> list[dict]:
        try:
            with urllib.request.urlopen(api + urllib.parse.quote(expr), timeout=5) as resp:
                return json.loads(resp.read())["data"]["result"]
        except OSError:
            return []

    def total(expr: str) -> float:
        return sum(float(r["value"][1]) for r in query(expr))

    log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115
    server = subprocess.Popen(
        [str(prometheus_binary()), f"--config.file={config}",
         f"--web.listen-address=127.0.0.1:{web_port}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with pipeline(ns, tmp_path, router_port, sender_port) as cfg:
            publish_orders(cfg, random.Random(32), ["shipped"])
            outcomes(cfg, 1)
            eventually(lambda: total('up{job="rassylka"}') == 2, 30, "both targets up")
            eventually(lambda: total("sum(rassylka_events_in_total)") > 0
                       and total('sum(rassylka_outcomes_total{status="submitted"})') >= 1,
                       30, "Prometheus has the counters")
            lanes = query('rassylka_requests_total{lane="transactional"}')
        assert lanes and float(lanes[0]["value"][1]) == 1, lanes
    finally:
        stop(server)
        log.close()
