"""Campaign analytics through the real sink into chDB: the audience snapshot and every
decision become tables, and `rassylka campaign report` counts the funnel by phase and
variant exactly as the facts say (each member once, the holdout without messages)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stages import stage
from test_sink import outcome, query, wait_stored

from pipeline import kafka_io, topics
from pipeline.procs import settings_env
from pipeline.settings import ROOT, Settings

pytestmark = pytest.mark.integration

AT = 1_764_000_000_000


def members() -> list[dict[str, Any]]:
    """30 members of `fall`: 10 test a, 10 test b, 4 holdout, 6 rollout."""
    out = []
    for i in range(30):
        phase = "test" if i < 20 else "holdout" if i < 24 else "rollout"
        out.append({"snapshot": "s1", "customer_id": f"fall-{i:02d}", "zone": "Europe/Moscow",
                    "phase": phase, "variant": "ab"[i % 2] if phase == "test" else None})
    return out


def test_sink_stores_audience_and_decisions_and_the_report_counts_each_member_once(
        ns: Settings, tmp_path: Path) -> None:
    people = members()
    # an old snapshot record without campaign_id: the sink takes it from the key
    audience = [(f"fall|{m['customer_id']}",
                 json.dumps(m if i % 7 else {"campaign_id": "fall", **m}).encode())
                for i, m in enumerate(people)]
    audience.append(("other|x", json.dumps({"snapshot": "s9", "customer_id": "x", "zone": "",
                                            "phase": "test", "variant": "a"}).encode()))
    kafka_io.publish(ns, topics.CAMPAIGN_AUDIENCE, audience)
    expected: Counter[tuple[str, str, str]] = Counter()
    outcomes, receipts, clicks, conversions, consents = [], [], [], [], []
    for i, m in enumerate(people):
        phase = m["phase"]
        variant = m["variant"] or "b"  # the rollout got the winner, b
        cell = (phase, variant if phase != "holdout" else "")
        expected[(*cell, "targeted")] += 1
        if phase == "holdout":
            continue
        status = "suppressed" if i == 25 else "submitted"
        phone = f"+7916555{i:04d}"
        outcomes.append((f"r-{i}", outcome(i, request_id=f"r-{i}", message_id=f"m-{i}",
                                           status=status, reason=None if status == "submitted"
                                           else "frequency_cap", campaign_id="fall",
                                           customer_id=m["customer_id"], variant=variant,
                                           phone=phone, lane="marketing",
                                           cost=1.5 if status == "submitted" else 0.0,
                                           decided_at_ms=AT + i)))
        if status != "submitted":
            continue
        expected[(*cell, "submitted")] += 1
        expected[(*cell, "cost")] += 1.5
        if i % 3:
            for n in (1, 2):  # two receipts of one message count once
                receipts.append((f"m-{i}", {"message_id": f"m-{i}", "gateway_message_id": f"g{i}",
                                            "state": "DELIVRD", "error_code": None, "segment": n,
                                            "segments": 2, "received_at_ms": AT + 50 + n,
                                            "gateway": "smpp"}))
            expected[(*cell, "delivered")] += 1
        if (variant == "b" and i % 2 == 1) or i in (4, 26):
            clicks.append((f"m-{i}", {"click_id": f"k{i}", "code": "c", "message_id": f"m-{i}",
                                      "url": "https://shop.example.ru", "clicked_at_ms": AT + 90,
                                      "user_agent": None}))
            expected[(*cell, "clicked")] += 1
            if i % 5 == 1:
                conversions.append((m["customer_id"], {
                    "conversion_id": f"v{i}", "order_id": f"o{i}", "customer_id": m["customer_id"],
                    "message_id": f"m-{i}", "touch": "click", "touch_at_ms": AT + 90,
                    "revenue_minor": 1000 + i, "currency": "RUB", "converted_at_ms": AT + 200,
                    "rule_id": None, "campaign_id": "fall", "variant": variant}))
                expected[(*cell, "converted")] += 1
                expected[(*cell, "revenue_minor")] += 1000 + i
        if i in (3, 28):  # opted out after the message; 7 opted out before it: not counted
            consents.append((phone, {"phone": phone, "scope": "marketing", "status": "opt_out",
                                     "source": "sms_reply", "changed_at_ms": AT + 500,
                                     "customer_id": None, "evidence": None}))
            expected[(*cell, "opt_outs")] += 1
    consents.append(("+79165550007", {"phone": "+79165550007", "scope": "marketing",
                                      "status": "opt_out", "source": "crm",
                                      "changed_at_ms": AT - 10_000, "customer_id": None,
                                      "evidence": None}))
    kafka_io.publish(ns, topics.OUTCOMES, outcomes, "send_outcome")
    kafka_io.publish(ns, topics.RECEIPTS, receipts, "delivery_receipt")
    kafka_io.publish(ns, topics.CLICKS, clicks, "click")
    kafka_io.publish(ns, topics.CONVERSIONS, conversions, "conversion")
    kafka_io.publish(ns, topics.CONSENT, consents, "consent_change")
    decision = {"campaign_id": "fall", "decided_at_ms": AT + 1000, "action": "rollout",
                "winner": "b", "probabilities": {"a": 0.01, "b": 0.99}, "reason": "b is best",
                "metric": "click", "inputs": {"variants": {"a": {"targeted": 10}}}}
    weights = {"rule_id": "promo", "kind": "bandit", "metric": "click",
               "weights": {"a": 0.3, "b": 0.7}, "previous_weights": {"a": 0.5, "b": 0.5},
               "updated_at_ms": AT + 2000, "inputs": {"min_share": 0.05}}
    kafka_io.publish(ns, topics.CAMPAIGN_DECISIONS, [
        ("fall", json.dumps(decision).encode()), ("promo", json.dumps(weights).encode()),
        ("fall", json.dumps(decision).encode()),  # a replayed decision is stored once
        ("bad", b"{not json"), ("bad", b"[1, 2]")])
    total = len(audience) + len(outcomes) + len(receipts) + len(clicks) + len(conversions) \
        + len(consents) + 5
    with stage(ns, ["sink"], tmp_path) as proc:
        wait_stored(ns, proc, total)

    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "campaign", "report", "fall",
                          "--format", "json"], cwd=ROOT, env=settings_env(ns),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    got: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        for name in ("targeted", "submitted", "delivered", "clicked", "converted",
                     "revenue_minor", "opt_outs", "cost"):
            if row[name]:
                got[(row["phase"], row["variant"], name)] += row[name]
    assert got == expected
    assert [(r["phase"], r["variant"]) for r in rows] == [
        ("holdout", ""), ("test", "a"), ("test", "b"), ("rollout", "b")]

    stored = query(ns, "SELECT kind, subject, action, winner, probabilities, weights, inputs "
                       "FROM rassylka.decisions FINAL ORDER BY decided_at")
    assert [(r["kind"], r["subject"], r["action"], r["winner"]) for r in stored] == [
        ("campaign", "fall", "rollout", "b"), ("bandit", "promo", "weights", "")]
    assert stored[0]["probabilities"] == {"a": 0.01, "b": 0.99}
    assert stored[1]["weights"] == {"a": 0.3, "b": 0.7}
    assert json.loads(stored[0]["inputs"]) == decision["inputs"]
    members_stored = query(ns, "SELECT campaign_id, count() AS n FROM rassylka.campaign_members "
                               "FINAL GROUP BY campaign_id ORDER BY campaign_id")
    assert members_stored == [{"campaign_id": "fall", "n": 30}, {"campaign_id": "other", "n": 1}]
    dead = kafka_io.read_topic(ns, topics.DEAD_LETTERS, lambda m: len(m) >= 2, 30)
    assert sorted(m.record["reason"] for m in dead) == ["invalid_record", "invalid_record"]
