"""pipeline.metrics without a broker: counting on commit, health, the endpoint, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from pipeline import metrics
from pipeline.errors import ConfigError
from pipeline.sender.worker import SenderStats


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_router_counts_map_to_requests_dead_letters_and_unmatched() -> None:
    before = (sample("rassylka_requests_total", lane="marketing"),
              sample("rassylka_dead_letters_total", stage="router", reason="unknown_customer"),
              sample("rassylka_unmatched_events_total", event_type="promotion"))
    metrics.count_committed("router", {"request:marketing": 3, "dead_letter:unknown_customer": 2,
                                       "no_rule:promotion": 1, "profile": 7})
    after = (sample("rassylka_requests_total", lane="marketing"),
             sample("rassylka_dead_letters_total", stage="router", reason="unknown_customer"),
             sample("rassylka_unmatched_events_total", event_type="promotion"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2, 1]


def test_pending_counts_only_what_commits() -> None:
    child = metrics.outcomes("suppressed", "unit_test")
    before = sample("rassylka_outcomes_total", status="suppressed", reason="unit_test")
    pending = metrics.Pending()
    pending.add(child)
    pending.add(child, 2)
    pending.clear()  # the transaction aborted: a new one begins
    pending.add(child)
    pending.commit()
    pending.commit()  # nothing held twice
    assert sample("rassylka_outcomes_total", status="suppressed", reason="unit_test") - before == 1


def test_children_are_cached_per_label_set() -> None:
    assert metrics.events_in("unit.a") is metrics.events_in("unit.a")
    assert metrics.dead_letters("unit")("x") is metrics.dead_letters("unit")("x")
    assert metrics.events_in("unit.a") is not metrics.events_in("unit.b")


def test_config_stamp_replaces_the_previous_one() -> None:
    metrics.set_config_stamp("r1")
    metrics.set_config_stamp("r2")
    assert sample("rassylka_config_version_info", stamp="r2") == 1
    assert REGISTRY.get_sample_value("rassylka_config_version_info", {"stamp": "r1"}) is None


def test_health_alive_until_stuck_and_ready_when_every_check_holds() -> None:
    now = [100.0]
    health = metrics.Health(stuck_after_s=10, clock=lambda: now[0])
    joined = {"on": False}
    health.require("partitions assigned", lambda: joined["on"])
    assert health.alive() == (True, "starting")
    assert health.ready() == (False, "starting")
    health.beat()
    assert health.ready() == (False, "waiting for partitions assigned")
    joined["on"] = True
    assert health.ready() == (True, "ok")
    now[0] += 11
    assert health.alive() == (False, "loop stuck for 11 s")
    assert health.ready()[0] is False


def test_a_failing_check_is_not_ready() -> None:
    health = metrics.Health()
    health.beat()
    health.require("gateway bound", lambda: 1 / 0 > 0)
    assert health.ready() == (False, "waiting for gateway bound")


class FakeConsumer:
    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[tuple[str, int], int]):
        self.positions, self.highs = positions, highs

    def assignment(self) -> list[tuple[str, int]]:
        return list(self.positions)

    def position(self, assignment: list[tuple[str, int]]) -> list[SimpleNamespace]:
        return [SimpleNamespace(topic=t, partition=p, offset=self.positions[(t, p)])
                for t, p in assignment]

    def get_watermark_offsets(self, tp: SimpleNamespace, cached: bool) -> tuple[int, int]:
        assert cached, "lag must not cost a broker round trip"
        return 0, self.highs[(tp.topic, tp.partition)]


def test_lag_sampler_sets_known_partitions_and_drops_revoked_ones() -> None:
    sampler = metrics.LagSampler()
    consumer = FakeConsumer({("unit.lag", 0): 5, ("unit.lag", 1): -1001},
                            {("unit.lag", 0): 12, ("unit.lag", 1): 3})
    assert sampler.sample(consumer) == 7
    assert sample("rassylka_consumer_lag", topic="unit.lag", partition="0") == 7
    assert REGISTRY.get_sample_value("rassylka_consumer_lag",
                                     {"topic": "unit.lag", "partition": "1"}) is None
    assert sampler.sample(FakeConsumer({}, {})) == 0
    assert REGISTRY.get_sample_value("rassylka_consumer_lag",
                                     {"topic": "unit.lag", "partition": "0"}) is None
    assert sampler.sample(object()) == 0  # a test double without positions


def test_gateway_rates_per_bind_or_per_route() -> None:
    bucket = SimpleNamespace(rate=40.0)
    smpp = SimpleNamespace(name="smsc", _binds=[SimpleNamespace(index=0, bucket=bucket),
                                                SimpleNamespace(index=1, bucket=bucket)])
    assert metrics.gateway_rates(smpp) == {"smsc/0": 40.0, "smsc/1": 40.0}
    assert metrics.gateway_rates(SimpleNamespace(name="http", bucket=bucket)) == {"http": 40.0}
    assert metrics.gateway_rates(SimpleNamespace(name="other")) == {}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_endpoint_answers_metrics_health_and_readiness() -> None:
    assert metrics.serve(0, metrics.Health()) is None
    health = metrics.Health()
    server = metrics.serve(free_port(), health, host="127.0.0.1")
    assert server is not None
    try:
        assert get(server.port, "/healthz") == (200, "starting\n")
        assert get(server.port, "/readyz") == (503, "starting\n")
        health.beat()
        assert get(server.port, "/readyz") == (200, "ok\n")
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert "rassylka_build_info{version=" in body and "rassylka_in_flight" in body
        assert "_created" not in body
        assert get(server.port, "/other")[0] == 404
    finally:
        server.close()


def test_a_taken_port_is_a_config_error_naming_the_knob() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            metrics.serve(port, metrics.Health(), host="127.0.0.1")
    [problem] = caught.value.problems
    assert f"metrics port {port}" in problem
    assert "--metrics-port" in problem and "RASSYLKA_METRICS_PORT" in problem


def test_json_formatter_writes_one_object_per_line_with_exception() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    metrics.use_log_format("json", [handler])
    logger = logging.getLogger("unit.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("привет %s", "мир")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed\nover two lines")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "привет мир" and first["level"] == "WARNING"
    assert first["logger"] == "unit.json" and first["time"].endswith("Z")
    assert "exc_info" not in first
    assert second["message"] == "failed\nover two lines"
    assert "ValueError: boom" in second["exc_info"]


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        metrics.use_log_format("xml", [logging.StreamHandler(io.StringIO())])


def test_sender_stats_line_is_one_line() -> None:
    stats = SenderStats(submitted=3, receipts=2, transactions=4, transaction_s=0.02)
    stats.count("submitted")
    stats.count("suppressed:duplicate")
    line = stats.line()
    assert "\n" not in line
    assert line.startswith("3 submitted, 2 receipts (0 uncorrelated), 0 replies, "
                           "4 transactions (avg 5.0 ms); ")
    assert line.endswith("submitted=1, suppressed:duplicate=1")
