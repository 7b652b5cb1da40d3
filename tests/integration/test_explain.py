"""`rules explain`, unmatched events and `send-test` through the real broker (and SMSC simulator)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from sendkit import opt_in, phone, sender, simulator
from stages import profiles_read, stage, wait_for

from pipeline import kafka_io, topics
from pipeline.offsets import wait_committed_to_end
from pipeline.procs import settings_env
from pipeline.samples import make_profile, order_event, promotion_event
from pipeline.sendtest import TEST_MARK
from pipeline.settings import ROOT, Settings

NOW = int(time.time() * 1000)


def rassylka(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          env=settings_env(settings), capture_output=True, text=True,
                          timeout=timeout)


def test_explain_reads_the_customer_and_consent_from_kafka(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(11)
    customer = make_profile(rng, 1, locale="en") | {"first_name": "Emma", "phone": phone(4242),
                                                    "segments": ["vip"]}
    kafka_io.publish(ns, topics.PROFILES, [(customer["customer_id"], customer)], "customer_profile")
    opt_in(ns, [phone(4242)])
    event = order_event(rng, customer["customer_id"], "shipped", NOW)
    del event["event_id"], event["occurred_at_ms"]  # explain fills them in
    (tmp_path / "shipped.json").write_text(json.dumps(event))
    done = rassylka(ns, "rules", "explain", "--event", str(tmp_path / "shipped.json"),
                    "--format", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["event_type"] == "order_status_changed"
    assert result["customer_id"] == customer["customer_id"]
    assert result["matched"] == ["order_shipped"]
    rules = {r["rule_id"]: r for r in result["rules"]}
    assert rules["order_created"]["why"] == 'when: status eq "created"; the event has "shipped"'
    shipped = rules["order_shipped"]
    chosen = next(t for t in shipped["texts"] if t["chosen"])
    assert chosen["locale"] == "en" and "Emma" in chosen["text"] and chosen["segments"] >= 1
    assert shipped["decision"].startswith(f"send to {phone(4242)}")

    # The same customer and a promotion: consent comes from the consent topic.
    promo = promotion_event(rng, customer["customer_id"], NOW, "bf")
    (tmp_path / "promo.json").write_text(json.dumps(promo))
    done = rassylka(ns, "rules", "explain", "--event", str(tmp_path / "promo.json"),
                    "--customer", customer["customer_id"], "--format", "json")
    assert done.returncode == 0, done.stderr
    promotion = {r["rule_id"]: r for r in json.loads(done.stdout)["rules"]}["promotion_discount"]
    checks = {c["name"]: c for c in promotion["checks"]}
    assert checks["consent"]["verdict"] == "pass", checks["consent"]
    assert checks["quiet hours"]["detail"].startswith("local time ")

    # A customer the topic does not have: one clear line, exit 1.
    done = rassylka(ns, "rules", "explain", "--event", str(tmp_path / "promo.json"),
                    "--customer", "cust-nobody")
    assert done.returncode == 1
    assert "unknown_customer" in done.stderr and "cust-nobody" in done.stderr


def test_router_counts_unmatched_events_per_type(ns: Settings, tmp_path: Path) -> None:
    rng = random.Random(12)
    customers = [make_profile(rng, i) for i in range(3)]
    matched = order_event(rng, customers[0]["customer_id"], "shipped", NOW)
    unmatched = [order_event(rng, customers[1]["customer_id"], "returned", NOW),
                 order_event(rng, customers[2]["customer_id"], "on_hold", NOW)]
    no_discount = dict(promotion_event(rng, customers[0]["customer_id"], NOW, "bf"),
                       discount_percent=0)
    with stage(ns, ["router", "--loglevel", "info"], tmp_path):
        kafka_io.publish(ns, topics.PROFILES, ((p["customer_id"], p) for p in customers),
                         "customer_profile")
        profiles_read(ns)
        kafka_io.publish(ns, topics.ORDER_STATUS, ((e["customer_id"], e)
                                                  for e in [*unmatched, matched]),
                         "order_status_changed")
        kafka_io.publish(ns, topics.PROMOTION, [(no_discount["customer_id"], no_discount)],
                         "promotion")
        requests = wait_for(ns, topics.REQUESTS_TRANSACTIONAL, 1)
        for name in (topics.ORDER_STATUS, topics.PROMOTION):
            assert wait_committed_to_end(ns, "router", name, 45)
    assert [m.record["event_id"] for m in requests] == [matched["event_id"]]
    log = next(tmp_path.glob("router-*.log")).read_text(errors="replace")
    stopped = next(line for line in log.splitlines() if "router 0 stopped" in line)
    assert "no_rule:order_status_changed=2" in stopped, stopped
    assert "no_rule:promotion=1" in stopped, stopped


def test_send_test_goes_through_the_sender_and_is_marked(ns: Settings, tmp_path: Path) -> None:
    to = phone(5151)
    with simulator(tmp_path) as sim, sender(ns, sim, tmp_path):
        done = rassylka(ns, "send-test", "--to", to, "--rule", "order_shipped", "--locale", "en",
                        "--wait", "90")
        submits = sim.submits()
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "outcome: submitted" in done.stdout, done.stdout
    assert f"campaign_id {TEST_MARK}" in done.stdout
    assert [s["destination"] for s in submits] == [to.lstrip("+")]
    outcome = next(m.record for m in wait_for(ns, topics.OUTCOMES, 1))
    assert outcome["status"] == "submitted" and outcome["rule_id"] == "order_shipped"
    assert outcome["campaign_id"] == TEST_MARK and outcome["customer_id"] == TEST_MARK
    assert outcome["variant"] == "test:default" and outcome["segments"] >= 1
    assert outcome["message_id"] in done.stdout


def test_send_test_of_a_marketing_rule_needs_consent_unless_transactional(
        ns: Settings, tmp_path: Path) -> None:
    to = phone(5252)
    with simulator(tmp_path) as sim, sender(ns, sim, tmp_path):
        refused = rassylka(ns, "send-test", "--to", to, "--rule", "promotion_discount",
                           "--time-zone", "UTC", "--wait", "90")
        forced = rassylka(ns, "send-test", "--to", to, "--rule", "promotion_discount",
                          "--transactional", "--wait", "90")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "suppressed no_marketing_consent" in refused.stdout, refused.stdout
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "outcome: submitted" in forced.stdout
