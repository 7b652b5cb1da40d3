"""Sender test kit: the SMSC simulator as a child process, request builders, outcome readers."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import stage

from pipeline import kafka_io, topics
from pipeline.procs import start_simulator, stop
from pipeline.settings import Settings


@dataclass
class Simulator:
    """A running SMSC simulator child process and how to reach it."""

    port: int
    control_port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    def submits(self) -> list[dict[str, Any]]:
        """Every submit_sm the simulator answered so far (from its JSONL log)."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written
        return out

    def mo(self, source: str, destination: str, text: str, concat: str | None = None) -> None:
        """Inject a mobile-originated SMS (a customer's reply); `concat` ("udh" or "sar"):
        a long text as the segments of a concatenated MO."""
        body = json.dumps({"from": source, "to": destination, "text": text,
                           **({"concat": concat} if concat else {})}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}/mo", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as resp:
            assert resp.status == 200

    def sessions(self) -> int:
        return int(self.health()["sessions"])

    def wait_bound(self, sessions: int = 1, timeout: float = 60.0) -> None:
        """Wait (bounded) until `sessions` binds are up: an MO needs a bound session."""
        deadline = time.monotonic() + timeout
        while self.sessions() < sessions:
            assert time.monotonic() < deadline, f"fewer than {sessions} binds after {timeout} s"
            time.sleep(0.1)

    def health(self) -> dict[str, Any]:
        """`GET /health`: sessions bound, submits, and what was delivered, refused, ..."""
        url = f"http://127.0.0.1:{self.control_port}/health"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))


@contextmanager
def simulator(tmp_path: Path, *flags: str, port: int | None = None,
              log: Path | None = None) -> Iterator[Simulator]:
    """Run the SMSC simulator with `flags` until the block ends.

    It binds `port` (default: a free one it picks itself; see `start_simulator`) and a free
    control port. `log` is its submit log (default: a new file in `tmp_path`); a restart
    that passes the first run's log appends to it.
    """
    log_path = log or tmp_path / f"smsc-{uuid.uuid4().hex[:8]}.jsonl"
    proc, smpp, control = start_simulator(tmp_path, "--log", str(log_path), "--seed", "42",
                                          *flags, timeout=60, port=port or 0)
    try:
        yield Simulator(smpp, control, log_path, proc)
    finally:
        stop(proc)


@contextmanager
def sender(settings: Settings, sim: Simulator, tmp_path: Path, worker_id: str = "0",
           **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a sender worker bound to `sim` until the block ends."""
    extra = {"RASSYLKA_SMPP_PORT": str(sim.port), **env}
    with stage(settings, ["sender", "--worker-id", worker_id], tmp_path, extra) as proc:
        yield proc


NOW = lambda: int(time.time() * 1000)  # noqa: E731


def make_request(**overrides: Any) -> dict[str, Any]:
    """A valid transactional notification request; override any field."""
    now = NOW()
    request = {
        "request_id": uuid.uuid4().hex,
        "event_id": uuid.uuid4().hex,
        "event_type": "payment_due",
        "event_occurred_at_ms": now,
        "rule_id": "payment_due_reminder",
        "template_id": "payment_due_reminder",
        "variant": "default",
        "locale": "ru",
        "customer_id": "cust-" + uuid.uuid4().hex[:8],
        "phone": "+79161234567",
        "country": "RU",
        "time_zone": "Europe/Moscow",
        "lane": "transactional",
        "priority": 50,
        "sender_id": "SHOPRU",
        "text": "Счёт INV-1 на 1 500 ₽ ждёт оплаты до 01.12.2026",
        "created_at_ms": now,
        "expires_at_ms": now + 3_600_000,
        "send_at_ms": None,
        "dedup_window_s": 86_400,
        "dedup_by_content": False,
        "allow_transliteration": False,
        "campaign_id": None,
        "links": [],
    }
    request.update(overrides)
    return request


def marketing(**overrides: Any) -> dict[str, Any]:
    """A valid marketing request (needs an opt-in to be sent)."""
    base = dict(lane="marketing", rule_id="promotion_discount", template_id="promo_discount_a",
                variant="a", priority=0, campaign_id="bf",
                text="Скидка 20% на всё до воскресенья: https://shop.example.ru/sale Отписка: STOP",
                time_zone="UTC")
    base.update(overrides)
    return make_request(**base)


def publish_requests(settings: Settings, requests: list[dict[str, Any]]) -> None:
    lanes = {"transactional": topics.REQUESTS_TRANSACTIONAL, "marketing": topics.REQUESTS_MARKETING}
    for lane, topic in lanes.items():
        items = [(r["customer_id"], r) for r in requests if r["lane"] == lane]
        if items:
            kafka_io.publish(settings, topic, items, "notification_request")


def opt_in(settings: Settings, phones: list[str], scope: str = "marketing") -> None:
    now = NOW() - 60_000
    kafka_io.publish(settings, topics.CONSENT, [
        (f"{p}|{scope}", {"phone": p, "scope": scope, "status": "opt_in", "source": "web_form",
                          "changed_at_ms": now, "customer_id": None, "evidence": "form-1"})
        for p in phones], "consent_change")


def outcomes(settings: Settings, count: int, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Read outcomes until `count` distinct requests have one; request_id -> outcome."""
    got = kafka_io.read_topic(settings, topics.OUTCOMES,
                              lambda msgs: len({m.key for m in msgs}) >= count, timeout)
    by_id: dict[str, dict[str, Any]] = {}
    for m in got:
        assert m.record is not None
        assert m.record["request_id"] not in by_id, f"two outcomes for {m.record['request_id']}"
        by_id[m.record["request_id"]] = m.record
    assert len(by_id) >= count, f"expected {count} outcomes within {timeout}s, got {len(by_id)}"
    return by_id


def phone(n: int) -> str:
    """A distinct valid Russian mobile number per `n`."""
    return f"+7916{n % 10_000_000:07d}"


def config_with(tmp_path: Path, base: Path, **limits: Any) -> Path:
    """A copy of `base` config with top-level sections of limits.yaml replaced."""
    import shutil

    import yaml

    dst = tmp_path / f"config-{uuid.uuid4().hex[:6]}"
    shutil.copytree(base, dst)
    data = yaml.safe_load((dst / "limits.yaml").read_text(encoding="utf-8"))
    data.update(limits)
    (dst / "limits.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return dst


def check_stream(requests: list[dict[str, Any]], got: dict[str, dict[str, Any]],
                 submits: list[dict[str, Any]],
                 expirable: frozenset[str] = frozenset()) -> Counter[str]:
    """The fault-test contract over one stream; returns accepted copies per number.

    One outcome per request (`outcomes()` already asserted it), no number got the same
    part twice unless a transactional in-doubt resend says so (attempts > 1), every
    transactional request was sent — or, when its id is in `expirable`, recorded as
    expired — and a marketing one went at most once.
    """
    accepted = [s for s in submits if s["status"] == 0]
    copies = Counter((s["destination"], s["short_message"]) for s in accepted)
    per_number = Counter(s["destination"] for s in accepted)
    assert len(got) == len(requests), f"{len(got)} outcomes for {len(requests)} requests"
    for request in requests:
        outcome = got[request["request_id"]]
        number = request["phone"][1:]
        twice = [k for k, n in copies.items() if k[0] == number and n > 1]
        if request["lane"] == "transactional":
            if outcome["status"] == "expired" and request["request_id"] in expirable:
                assert outcome["reason"] == "ttl_expired", outcome
                assert NOW() > request["expires_at_ms"]
                continue
            assert outcome["status"] == "submitted", outcome
            assert per_number[number] >= 1, f"transactional {number} never reached the SMSC"
            if twice:
                assert outcome["attempts"] > 1, ("resent without saying so", outcome)
        else:
            assert not twice, f"marketing SMS to {number} went twice"
            assert (outcome["status"], outcome["reason"]) in {
                ("submitted", None), ("failed", "in_doubt_not_resent")}, outcome
            if outcome["status"] == "submitted":
                assert per_number[number] == 1
    return per_number


def one_outcome_per_request(settings: Settings, requests: list[dict[str, Any]],
                            idle: float = 3.0) -> dict[str, dict[str, Any]]:
    """Read all of sms.outcomes (until quiet for `idle` s) and assert exactly one record per
    request id and none for anything else; returns request_id -> outcome."""
    got = kafka_io.read_topic(settings, topics.OUTCOMES, None, 60.0, idle=idle)
    per_id = Counter(m.record["request_id"] for m in got if m.record is not None)
    twice = {rid: n for rid, n in per_id.items() if n > 1}
    assert not twice, f"{len(twice)} requests have more than one outcome record: {list(twice)[:5]}"
    wanted = {r["request_id"] for r in requests}
    assert set(per_id) == wanted, (f"{len(wanted - set(per_id))} requests without an outcome, "
                                   f"{len(set(per_id) - wanted)} outcomes of unknown requests")
    return {m.record["request_id"]: m.record for m in got if m.record is not None}


def one_receipt_per_part(settings: Settings, sim: Simulator, timeout: float = 60.0,
                         idle: float = 3.0) -> Counter[str]:
    """Wait until every part the SMSC accepted has a receipt on sms.receipts, then assert
    each has exactly one (by SMSC id); returns receipt states counted."""
    accepted = {s["message_id"] for s in sim.submits() if s["status"] == 0 and s["message_id"]}

    def complete(msgs: list[kafka_io.Received]) -> bool:
        return accepted <= {m.record["gateway_message_id"] for m in msgs if m.record}

    kafka_io.read_topic(settings, topics.RECEIPTS, complete, timeout)
    got = kafka_io.read_topic(settings, topics.RECEIPTS, None, timeout, idle=idle)
    per_part = Counter(m.record["gateway_message_id"] for m in got if m.record is not None)
    missing = accepted - set(per_part)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted parts have no receipt"
    twice = {k: n for k, n in per_part.items() if n > 1}
    assert not twice, f"{len(twice)} parts have more than one receipt: {list(twice.items())[:5]}"
    assert set(per_part) == accepted, f"receipts for parts the SMSC never accepted: " \
                                      f"{list(set(per_part) - accepted)[:5]}"
    return Counter(m.record["state"] for m in got if m.record is not None)
