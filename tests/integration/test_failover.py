"""Failover between routes: a primary SMSC that refuses binds, and one killed mid-stream.

The killed-primary test runs the real sender against two real simulator processes and
counts every message at both. The policy it checks (README, "Gateways and routes"):

* every request has exactly one outcome, naming the route that accepted it, and its cost
  is that route's tariff × segments;
* a message accepted by one SMSC is never accepted by the other - except a transactional
  one whose submit to the dying primary got no answer (in doubt): it is sent again on the
  backup (its outcome says ``attempts > 1`` and names the backup), so it may be at both;
* a marketing message in doubt is not sent again: ``failed`` / ``in_doubt_not_resent``,
  at most at the primary and never at the backup;
* a message the primary never took (waiting for its window when the link died) goes to
  the backup once: no loss, no second copy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from sendkit import (
    make_request,
    marketing,
    one_outcome_per_request,
    opt_in,
    outcomes,
    phone,
    publish_requests,
    sender,
    simulator,
)

from connectors.failover import RoutingGateway
from connectors.gateway import OutboundSms
from connectors.routing import RoutingTable, Tariff
from connectors.smpp import SmppGateway, SmppRoute
from connectors.smsc_sim import SimConfig, SmscSimulator
from pipeline import kafka_io, topics
from pipeline.procs import free_port
from pipeline.settings import Settings

ESME_RBINDFAIL = 0x0D
TARIFFS = {"primary": 2.0, "backup": 3.0}


def test_a_primary_that_refuses_binds_sends_everything_to_the_backup() -> None:
    async def scenario() -> tuple[list[Any], int, int, bool]:
        refusing = SmscSimulator(SimConfig(port=free_port(), refuse_binds=ESME_RBINDFAIL))
        backup = SmscSimulator(SimConfig(port=free_port(), seed=3))
        await refusing.start()
        await backup.start()

        def route(name: str, port: int) -> SmppGateway:
            return SmppGateway(SmppRoute("127.0.0.1", port, "rassylka", "secret", name=name,
                                         binds=1, bind_wait_s=1.0, reconnect_max_s=0.5))

        gateway = RoutingGateway(
            {"primary": route("primary", refusing.config.port),
             "backup": route("backup", backup.config.port)},
            RoutingTable((), ("primary", "backup")), {"backup": Tariff(3.0, "RUB")})
        try:
            await gateway.start()
            results = await asyncio.gather(*(gateway.send(OutboundSms(
                f"m{i}", "SHOP", phone(90_000 + i), 0, 0, [f"code {i}".encode()], lane="marketing"))
                for i in range(20)))
            return list(results), refusing.submit_count, backup.submit_count, \
                gateway.usable("primary")
        finally:
            await gateway.close()
            await refusing.stop()
            await backup.stop()

    results, at_refusing, at_backup, primary_usable = asyncio.run(
        asyncio.wait_for(scenario(), 30))
    assert all(r.ok and r.route == "backup" and r.cost_per_segment == 3.0 for r in results)
    assert all(r.gateway_message_ids[0].startswith("backup/") for r in results)
    assert (at_refusing, at_backup, primary_usable) == (0, 20, False)


def _two_route_config(base: Path) -> Path:
    """`base` (a copy) with routes primary and backup, every message [primary, backup]."""
    path = base / "routes.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    smpp = dict(data["routes"]["smsc-sim"], binds=2, window=16)
    data["routes"] = {name: dict(smpp, tariff={"per_segment": price, "currency": "RUB"})
                      for name, price in TARIFFS.items()}
    data["default_route"] = "primary"
    data["routing"] = [
        {"match": {"country": ["RU"], "operator_prefix": ["+7916"]}, "routes": ["primary", "backup"]},
        {"routes": ["backup"]},
    ]
    data["failover"] = {"retry_after_s": 60, "retry_max_s": 60}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return base


def test_killing_the_primary_smsc_mid_stream_fails_over_without_loss_or_doubles(
        ns: Settings, tmp_path: Path) -> None:
    from sendkit import config_with

    cfg = replace(ns, config_dir=_two_route_config(
        config_with(tmp_path, ns.config_dir, quiet_hours={}, frequency_caps={})))
    payments = [make_request(phone=phone(60_000 + i), text=f"Код {i} для оплаты заказа")
                for i in range(300)]
    promos = [marketing(phone=phone(61_000 + i), text=f"Акция {i}. Отписка: STOP")
              for i in range(300)]
    requests = payments + promos
    opt_in(cfg, [r["phone"] for r in promos])
    flags = ("--latency-ms", "150-300")  # slow answers: a full window is on the wire

    def trickle() -> None:  # payments at ~100/s next to the promotions, so both are in flight
        for i in range(0, len(payments), 20):
            publish_requests(cfg, payments[i:i + 20])
            time.sleep(0.2)
    with simulator(tmp_path, *flags) as primary, simulator(tmp_path, *flags) as backup:
        env = {"RASSYLKA_ROUTE_PRIMARY_PORT": str(primary.port),
               "RASSYLKA_ROUTE_BACKUP_PORT": str(backup.port),
               "RASSYLKA_RATE_PER_BIND": "60"}  # 120/s per route: the stream lasts seconds
        with sender(cfg, primary, tmp_path, **env) as proc:
            publish_requests(cfg, promos)
            feeder = threading.Thread(target=trickle)
            feeder.start()
            deadline = time.monotonic() + 60
            while len([s for s in primary.submits() if s["status"] == 0]) < 150:
                assert time.monotonic() < deadline, "the stream did not start"
                time.sleep(0.02)
            primary.proc.kill()  # SIGKILL: no unbind, submits on the wire get no answer
            primary.proc.wait(10)
            feeder.join()
            got = outcomes(cfg, len(requests), timeout=90)
            assert proc.poll() is None, "the sender must survive losing a route"
            got = one_outcome_per_request(cfg, requests)
            at_backup = [s for s in backup.submits() if s["status"] == 0]
            sent_ids = {i for o in got.values() for i in o["gateway_message_ids"]
                        if i.startswith("backup/")}
            receipts = kafka_io.read_topic(
                cfg, topics.RECEIPTS,
                lambda msgs: sent_ids <= {m.record["gateway_message_id"] for m in msgs if m.record},
                60)
    at_primary = [s for s in primary.submits() if s["status"] == 0]
    copies = {"primary": Counter(s["destination"] for s in at_primary),
              "backup": Counter(s["destination"] for s in at_backup)}
    ids = {"primary": {s["message_id"] for s in at_primary},
           "backup": {s["message_id"] for s in at_backup}}
    counts: Counter[str] = Counter()
    for request in requests:
        outcome = got[request["request_id"]]
        number = request["phone"][1:]
        here = {route: copies[route][number] for route in copies}
        if outcome["status"] == "submitted":
            route = outcome["gateway"]
            assert route in TARIFFS, outcome
            (gw_id,) = outcome["gateway_message_ids"]
            assert gw_id.split("/", 1) == [route, gw_id.split("/", 1)[1]]
            assert gw_id.split("/", 1)[1] in ids[route], (outcome, "not in that SMSC's log")
            assert here[route] == 1, (here, outcome)
            assert outcome["cost"] == outcome["segments"] * TARIFFS[route]
            other = "backup" if route == "primary" else "primary"
            if here[other]:  # at both SMSCs: only a transactional resend after a lost answer
                assert (request["lane"], route, here[other]) == ("transactional", "backup", 1)
                assert outcome["attempts"] > 1, ("resent without saying so", here, outcome)
                counts["resent_in_doubt"] += 1
            counts[f"{request['lane']}@{route}"] += 1
        else:
            assert request["lane"] == "marketing", ("a transactional message lost", outcome)
            assert (outcome["status"], outcome["reason"]) == ("failed", "in_doubt_not_resent")
            assert here["backup"] == 0 and here["primary"] <= 1, (here, outcome)
            counts["marketing_in_doubt"] += 1
    assert counts["transactional@primary"] + counts["marketing@primary"] > 100, counts
    assert counts["transactional@backup"] > 0 and counts["marketing@backup"] > 0, counts
    assert sum(copies["primary"].values()) >= 150 and sum(copies["backup"].values()) > 0
    print("failover:", dict(counts))  # shown with -s: how the stream split
    by_id = {m.record["gateway_message_id"]: m.record for m in receipts if m.record}
    for gw_id in sent_ids:  # receipts come back over the route that took the message
        assert by_id[gw_id]["gateway"] == "backup"
