"""Routing rules, tariffs and the routing gateway's failover decisions (no network)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from connectors.failover import IN_DOUBT, NOT_SENT, REJECTED, THROTTLED, RoutingGateway, classify
from connectors.gateway import GatewayEvent, GatewayReceipt, OutboundSms, SubmitResult
from connectors.routing import FailoverSettings, RoutingTable, Tariff, parse_routing
from pipeline.errors import ConfigError
from pipeline.sender.limits import load_limits
from pipeline.sender.setup import build_gateway, read_routes
from pipeline.settings import Settings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "config"
ROUTES = ("primary", "backup", "cheap")
RULES = [
    {"match": {"country": ["RU"], "operator_prefix": ["+7916", "+7903"], "lane": "marketing"},
     "routes": ["cheap", "primary"]},
    {"match": {"country": "KZ"}, "routes": ["backup"]},
    {"match": {"operator": "MTS", "lane": ["transactional"]}, "routes": ["primary", "backup"]},
    {"routes": ["primary", "backup"]},
]


def table() -> RoutingTable:
    parsed, problems = parse_routing(RULES, "routes.yaml", ROUTES, "primary")
    assert problems == []
    return parsed


@pytest.mark.parametrize(("destination", "region", "operator", "lane", "expected"), [
    ("+79161234567", "RU", "MTS", "marketing", ("cheap", "primary")),
    ("+79031234567", "RU", "Beeline", "marketing", ("cheap", "primary")),
    ("+79261234567", "RU", "MegaFon", "marketing", ("primary", "backup")),  # other prefix
    ("+79161234567", "RU", "MTS", "transactional", ("primary", "backup")),  # other lane
    ("+77011234567", "KZ", "Kcell", "marketing", ("backup",)),
    ("+79161234567", "RU", "mts", "transactional", ("primary", "backup")),  # any case
    ("+375291234567", "BY", None, None, ("primary", "backup")),  # the catch-all
])
def test_country_operator_and_lane_pick_the_route_list(
        destination: str, region: str, operator: str | None, lane: str | None,
        expected: tuple[str, ...]) -> None:
    assert table().routes_for(destination, region, operator, lane) == expected


def test_without_a_catch_all_unmatched_messages_take_the_default_route() -> None:
    parsed, problems = parse_routing(RULES[:1], "routes.yaml", ROUTES, "backup")
    assert problems == []
    assert parsed.routes_for("+79261234567", "RU", None, "marketing") == ("backup",)
    assert parsed.route_names == ("cheap", "primary", "backup")
    assert parse_routing(None, "r.yaml", ROUTES, "primary")[0].routes_for("+7916") == ("primary",)


def test_routing_problems_name_the_file_and_the_key() -> None:
    bad = [
        {"match": {"contry": ["RU"], "lane": "promo", "operator_prefix": ["7916"]},
         "routes": ["primary", "nowhere"]},
        {"routes": ["primary"]},
        {"match": {"country": ["ru"]}, "routes": [], "weight": 1},
    ]
    _table, problems = parse_routing(bad, "cfg/routes.yaml", ROUTES, "primary")
    assert all(p.startswith("cfg/routes.yaml: routing[") for p in problems), problems
    text = "\n".join(problems)
    for needle in ("routing[0].match: unknown key 'contry'", "routing[0].match.lane: 'promo'",
                   "routing[0].match.operator_prefix: '7916'",
                   "routing[0].routes: unknown route 'nowhere'",
                   "routing[1]: a rule without `match`", "routing[2]: unknown key 'weight'",
                   "routing[2].routes: must list", "routing[2].match.country: 'ru'"):
        assert needle in text, (needle, problems)


def _config(tmp_path: Path, **changes: object) -> Path:
    dst = tmp_path / "config"
    shutil.copytree(FIXTURE, dst)
    data = yaml.safe_load((dst / "routes.yaml").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (dst / "routes.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return dst


def test_routes_yaml_is_validated_as_a_whole(tmp_path: Path) -> None:
    routes = yaml.safe_load((FIXTURE / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    routes["smsc-sim"]["tariff"] = {"per_segment": -1, "currency": "USD", "vat": 20}
    routes["smsc-sim"]["message_ids"] = {"submit_sm_resp": "hexadecimal", "receipt": "hex"}
    routes["smsc-sim"]["bind"] = "receiver"
    routes["smsc-sim"]["dest_addr_ton"] = "international"
    config = _config(tmp_path, routes=routes, routing=[{"routes": ["gone"]}],
                     failover={"throttled_for_s": 0}, extra={})
    with pytest.raises(ConfigError) as caught:
        read_routes(config)
    text = "\n".join(caught.value.problems)
    path = str(config / "routes.yaml")
    assert all(p.startswith(path) for p in caught.value.problems), caught.value.problems
    for needle in ("unknown section 'extra'", "routes.smsc-sim.tariff: unknown key 'vat'",
                   "routes.smsc-sim.tariff.per_segment", "differs from the route's currency",
                   "routing[0].routes: unknown route 'gone'", "failover.throttled_for_s",
                   "routes.smsc-sim.message_ids.submit_sm_resp: 'hexadecimal' is not one of "
                   "text, decimal, hex", "routes.smsc-sim.message_ids: unknown PDU 'receipt'",
                   "routes.smsc-sim.bind: 'receiver' is not one of transceiver, "
                   "transmitter_and_receiver",
                   "routes.smsc-sim.dest_addr_ton: 'international' is not a TON/NPI value"):
        assert needle in text, (needle, caught.value.problems)


def test_build_gateway_gives_each_route_its_own_address_and_rate(tmp_path: Path) -> None:
    routes = yaml.safe_load((FIXTURE / "routes.yaml").read_text(encoding="utf-8"))["routes"]
    routes["backup"] = dict(routes["smsc-sim"], port=2999, rate_per_bind=50,
                            tariff={"per_segment": 4.0},
                            message_ids={"submit_sm_resp": "hex", "deliver_sm": "decimal"},
                            bind="transmitter_and_receiver", system_type="VMA",
                            source_addr_ton=3, source_addr_npi=0)
    config = _config(tmp_path, routes=routes,
                     routing=[{"match": {"lane": "marketing"}, "routes": ["backup"]},
                              {"routes": ["smsc-sim", "backup"]}])
    settings = Settings.from_env({"RASSYLKA_CONFIG_DIR": str(config)})
    limits = load_limits(config / "limits.yaml")
    env = {"RASSYLKA_SMPP_PORT": "3001", "RASSYLKA_ROUTE_BACKUP_PORT": "3002"}
    gateway, rate = build_gateway(settings, limits, environ=env)
    assert list(gateway.gateways) == ["backup", "smsc-sim"]
    ports = {n: g.route.port for n, g in gateway.gateways.items()}  # type: ignore[attr-defined]
    assert ports == {"smsc-sim": 3001, "backup": 3002}
    formats = {n: (g.route.submit_id_format, g.route.receipt_id_format)  # type: ignore[attr-defined]
               for n, g in gateway.gateways.items()}
    assert formats == {"smsc-sim": ("text", "text"), "backup": ("hex", "decimal")}
    backup = gateway.gateways["backup"].route  # type: ignore[attr-defined]
    assert (backup.bind_mode, backup.system_type) == ("transmitter_and_receiver", "VMA")
    assert (backup.source_addr_ton, backup.source_addr_npi, backup.dest_addr_ton) == (3, 0, 1)
    assert rate == 2 * 500 + 2 * 50
    assert gateway.tariffs["backup"] == Tariff(4.0, "RUB")
    assert gateway.route.window == 2 * 32 + 2 * 32
    only, only_rate = build_gateway(settings, limits, "backup", environ={})
    assert list(only.gateways) == ["backup"] and only_rate == 100
    assert only.gateways["backup"].route.port == 2999  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        build_gateway(settings, limits, "nope", environ={})


# ── the routing gateway, against scripted gateways ───────────────────────────


class FakeGateway:
    """Answers each send with the next scripted result (repeating the last one)."""

    def __init__(self, name: str, *answers: str, bound: int = 1) -> None:
        self.name = name
        self.answers = list(answers) or ["ok"]
        self.bound = bound
        self.sent: list[str] = []
        self.queue: asyncio.Queue[GatewayEvent | None] = asyncio.Queue()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self.queue.put_nowait(None)

    async def send(self, sms: OutboundSms) -> SubmitResult:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.sent.append(sms.message_id)
        mid = sms.message_id
        return {
            "ok": SubmitResult(mid, [f"{len(self.sent)}"], True, 0, None, False),
            "not_bound": SubmitResult(mid, [], False, 0, "not_bound", True),
            "in_doubt": SubmitResult(mid, [], False, 0, "in_doubt", True),
            "throttled": SubmitResult(mid, [], False, 0x58, "ESME_RTHROTTLED", True),
            "partial": SubmitResult(mid, ["1"], False, 0, "not_bound", True),
            "invalid": SubmitResult(mid, [], False, 0x0B, "ESME_RINVDSTADR", False),
        }[answer]

    async def events(self) -> AsyncIterator[GatewayEvent]:
        while (event := await self.queue.get()) is not None:
            yield event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sms(n: int = 0, lane: str = "transactional") -> OutboundSms:
    return OutboundSms(f"m{n}", "SHOP", "+79161234567", 0, 0, [b"hi"], lane=lane, region="RU")


def rig(*gateways: FakeGateway, clock: Clock | None = None,
        failover: FailoverSettings | None = None) -> RoutingGateway:
    names = tuple(g.name for g in gateways)
    return RoutingGateway({g.name: g for g in gateways}, RoutingTable((), names),
                          {"a": Tariff(2.0, "RUB")}, failover or FailoverSettings(),
                          clock or Clock())


def test_answers_are_classified_for_failover() -> None:
    def result(*args: object) -> SubmitResult:
        return SubmitResult("m", *args)  # type: ignore[arg-type]

    assert classify(result([], False, 0, "not_sent: ClientConnectorError", True)) == NOT_SENT
    assert classify(result([], False, 401, "HTTP 401", True)) == NOT_SENT
    assert classify(result([], False, 429, "throttled: HTTP 429", True)) == THROTTLED
    assert classify(result([], False, 0, "in_doubt: TimeoutError", True)) == IN_DOUBT
    assert classify(result(["1"], False, 0, "not_bound", True)) == IN_DOUBT
    assert classify(result([], False, 8, "ESME_RSYSERR", False)) == REJECTED


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_send_refused_before_sending_goes_to_the_next_route_and_stamps_it() -> None:
    a, b = FakeGateway("a", "not_bound", "ok"), FakeGateway("b")
    gw = rig(a, b)
    first = run(gw.send(sms(1)))
    assert (first.ok, first.route, first.gateway_message_ids) == (True, "b", ["b/1"])
    assert first.cost_per_segment is None  # b has no tariff
    second = run(gw.send(sms(2)))  # a is down now: not even tried
    assert second.route == "b" and a.sent == ["m1"] and b.sent == ["m1", "m2"]


def test_in_doubt_is_never_failed_over_and_a_partial_send_is_in_doubt() -> None:
    a, b = FakeGateway("a", "in_doubt", "partial"), FakeGateway("b")
    gw = rig(a, b)
    doubt = run(gw.send(sms(1)))
    assert (doubt.ok, doubt.error, doubt.route) == (False, "in_doubt", "a")
    partial = run(gw.send(sms(2)))
    assert partial.error == "in_doubt: not_bound" and partial.gateway_message_ids == ["a/1"]
    assert b.sent == []
    rejected = run(rig(FakeGateway("a", "invalid"), b).send(sms(3)))
    assert (rejected.status, rejected.route, b.sent) == (0x0B, "a", [])


def test_an_unbound_route_is_skipped_and_with_none_bound_the_first_is_tried() -> None:
    a, b = FakeGateway("a", bound=0), FakeGateway("b")
    result = run(rig(a, b).send(sms()))
    assert result.route == "b" and a.sent == []
    b.bound = 0
    result = run(rig(a, b).send(sms()))
    assert result.route == "a" and result.cost_per_segment == 2.0


def test_throttled_past_the_limit_fails_over_then_the_route_is_probed_again() -> None:
    clock = Clock()
    a, b = FakeGateway("a", "throttled"), FakeGateway("b")
    gw = rig(a, b, clock=clock, failover=FailoverSettings(throttled_for_s=10, retry_after_s=5,
                                                          retry_max_s=20))
    assert run(gw.send(sms(1))).status == 0x58  # throttled: back to the sender, no failover
    clock.now += 9
    assert run(gw.send(sms(2))).route == "a"
    clock.now += 1
    assert run(gw.send(sms(3))).route == "b"  # throttled for 10 s: down, m3 goes to b
    assert run(gw.send(sms(4))).route == "b" and a.sent == ["m1", "m2", "m3"]
    clock.now += 5
    assert run(gw.send(sms(5))).route == "b"  # probed, still throttled: down again at once
    assert a.sent[-1] == "m5" and gw.states["a"].down_until == clock.now + 10  # doubled
    a.answers = ["ok"]
    clock.now += 10
    assert run(gw.send(sms(6))).route == "a" and not gw.states["a"].down


def test_receipts_of_every_route_are_merged_with_qualified_ids() -> None:
    async def scenario() -> list[GatewayEvent]:
        a, b = FakeGateway("a"), FakeGateway("b")
        gw = rig(a, b)
        await gw.start()
        a.queue.put_nowait(GatewayReceipt("7", "DELIVRD", "000", "+7916", 1, ack))
        b.queue.put_nowait(GatewayReceipt("7", "UNDELIV", "001", "+7916", 2))
        got = []
        async for event in gw.events():
            got.append(event)
            if len(got) == 2:
                await gw.close()
        return got

    def ack() -> None:
        pass

    got = run(scenario())
    assert sorted((e.gateway_message_id, e.route) for e in got) == [("a/7", "a"), ("b/7", "b")]
    # everything else the route said is kept as it was, the acknowledgement too
    assert sorted((e.state, e.error_code, e.destination, e.received_at_ms, e.ack) for e in got) == [
        ("DELIVRD", "000", "+7916", 1, ack), ("UNDELIV", "001", "+7916", 2, None)]


def test_one_route_keeps_the_smsc_ids_as_they_are() -> None:
    result = run(rig(FakeGateway("a")).send(sms()))
    assert result.gateway_message_ids == ["1"] and result.route == "a"
