"""Build the sender's policy and gateway from `config/` and the environment (once, at start)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from connectors.failover import RoutingGateway
from connectors.gateway import Gateway
from connectors.http_gateway import HttpGateway, HttpRoute
from connectors.routing import (
    FailoverSettings,
    RoutingTable,
    Tariff,
    parse_failover,
    parse_routing,
    parse_tariff,
)
from connectors.smpp import BIND_MODES, ID_FORMATS, SmppGateway, SmppRoute
from pipeline.errors import ConfigError
from pipeline.sender.content import ContentRules
from pipeline.sender.core import SenderPolicy
from pipeline.sender.limits import Limits, load_limits
from pipeline.settings import Settings

# TON / NPI of an SMPP route's numeric sender ids and destinations (SMPP 3.4, 5.2.5-6)
ADDRESS_KEYS = ("source_addr_ton", "source_addr_npi", "dest_addr_ton", "dest_addr_npi")
ROUTE_KEYS = {"type", "host", "port", "system_id", "password_env", "binds", "window",
              "rate_per_bind", "currency", "tariff", "message_ids", "bind", "system_type",
              *ADDRESS_KEYS}
# `message_ids:` of an SMPP route: how its SMSC writes message ids in each PDU.
MESSAGE_ID_PDUS = ("submit_sm_resp", "deliver_sm")
# `type: http`: a JSON provider; secrets come from the variables the *_env fields name.
HTTP_ROUTE_KEYS = {"type", "url", "api_key_env", "callback_host", "callback_port",
                   "callback_path", "callback_secret_env", "rate_per_s", "concurrency",
                   "timeout_s", "currency", "tariff"}
HTTP_REQUIRED = ("url", "api_key_env", "callback_secret_env")
TOP_KEYS = ("default_route", "routes", "routing", "failover")


@dataclass(frozen=True)
class RoutesConfig:
    """`config/routes.yaml`, validated: the routes, how messages pick them, their prices."""

    default: str
    routes: dict[str, dict[str, Any]]
    table: RoutingTable
    tariffs: dict[str, Tariff]
    failover: FailoverSettings


def load_policy(config_dir: Path) -> tuple[SenderPolicy, Limits]:
    """The decision chain's policy from `config_dir`; ConfigError lists every problem."""
    limits = load_limits(config_dir / "limits.yaml")
    content = ContentRules.load(config_dir / "content.yaml")
    policy = SenderPolicy(
        allowed_regions=limits.allowed_regions,
        content=content,
        quiet_hours=limits.quiet_hours,
        caps=limits.frequency_caps,
        zones_by_country=limits.zones_by_country,
        stop_words=limits.stop_words,
    )
    return policy, limits


def load_routes(config_dir: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """(default route name, route name -> settings) from `config/routes.yaml`; the whole
    file is validated (routing rules and tariffs too): ConfigError lists every problem."""
    config = read_routes(config_dir)
    return config.default, config.routes


def read_routes(config_dir: Path) -> RoutesConfig:
    """Everything in `config/routes.yaml` (see `connectors.routing` for `routing:`,
    `tariff:` and `failover:`); ConfigError lists every problem, each naming the file."""
    path = config_dir / "routes.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must be a mapping with `routes:`"])
    routes = data.get("routes") or {}
    problems = [f"{path}: unknown section {key!r} (known: {', '.join(TOP_KEYS)})"
                for key in data if key not in TOP_KEYS]
    tariffs: dict[str, Tariff] = {}
    for name, route in routes.items():
        tariff, bad = parse_tariff(route.get("tariff"), f"{path}: routes.{name}.tariff",
                                   route.get("currency"))
        problems += bad
        if tariff is not None:
            tariffs[name] = tariff
        if route.get("type") == "http":
            for key in sorted(set(route) - HTTP_ROUTE_KEYS):
                problems.append(f"{path}: routes.{name}: unknown field {key!r}")
            for key in HTTP_REQUIRED:
                if not route.get(key):
                    problems.append(f"{path}: routes.{name}: missing {key!r}")
            continue
        for key in set(route) - ROUTE_KEYS:
            problems.append(f"{path}: routes.{name}: unknown field {key!r}")
        if route.get("type") != "smpp":
            problems.append(f"{path}: routes.{name}: type must be 'smpp' or 'http'")
        problems += _message_id_problems(route.get("message_ids"), f"{path}: routes.{name}")
        for key in ADDRESS_KEYS:
            value = route.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 18:
                problems.append(f"{path}: routes.{name}.{key}: {value!r} is not a TON/NPI "
                                f"value (a whole number 0-18, e.g. 1 international)")
        if route.get("bind", BIND_MODES[0]) not in BIND_MODES:
            problems.append(f"{path}: routes.{name}.bind: {route['bind']!r} is not one of "
                            f"{', '.join(BIND_MODES)}")
    default = data.get("default_route")
    if default not in routes:
        problems.append(f"{path}: default_route {default!r} is not one of {sorted(routes)}")
    table, bad = parse_routing(data.get("routing"), str(path), routes, default)
    problems += bad
    failover, bad = parse_failover(data.get("failover"), f"{path}: failover")
    problems += bad
    if problems:
        raise ConfigError(problems)
    return RoutesConfig(default, routes, table, tariffs, failover)


def _message_id_problems(spec: Any, at: str) -> list[str]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        return [f"{at}.message_ids: must be a mapping like "
                f"{{submit_sm_resp: hex, deliver_sm: decimal}}"]
    problems = [f"{at}.message_ids: unknown PDU {key!r} (known: {', '.join(MESSAGE_ID_PDUS)})"
                for key in spec if key not in MESSAGE_ID_PDUS]
    problems += [f"{at}.message_ids.{key}: {value!r} is not one of {', '.join(ID_FORMATS)}"
                 for key, value in spec.items() if key in MESSAGE_ID_PDUS
                 and value not in ID_FORMATS]
    return problems


def build_gateway(
    settings: Settings, limits: Limits, route_name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[RoutingGateway, float]:
    """The sender's gateway over its routes, and their total rate in msg/s.

    Messages are routed by `routing:` in routes.yaml (`connectors.routing`), failing over
    as `connectors.failover` says; `route_name` (`--route`) or RASSYLKA_ROUTE sends
    everything over that one route instead. Each route paces itself at its own rate:
    see `build_route`.
    """
    env = os.environ if environ is None else environ
    config = read_routes(settings.config_dir)
    only = route_name or env.get("RASSYLKA_ROUTE")
    if only and only not in config.routes:
        raise ConfigError([f"{settings.config_dir / 'routes.yaml'}: route {only!r} is not "
                           f"one of {sorted(config.routes)}"])
    table = RoutingTable.single(only) if only else config.table
    primary = only or config.default
    gateways: dict[str, Gateway] = {}
    total = 0.0
    for name in table.route_names:
        gateways[name], rate = build_route(name, config.routes[name], limits, env,
                                           primary=name == primary)
        total += rate
    return RoutingGateway(gateways, table, config.tariffs, config.failover), total


def route_env(env: Mapping[str, str], name: str, key: str, generic: str,
              primary: bool) -> str | None:
    """An address override for route `name`: RASSYLKA_ROUTE_<NAME>_<KEY> (NAME upper-cased,
    other characters than letters and digits as `_`), else - for the default route, or
    the one `--route` names - the `generic` variable; None when neither is set."""
    specific = f"RASSYLKA_ROUTE_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_{key}"
    if env.get(specific):
        return env[specific]
    if primary and env.get(generic):
        return env[generic]
    return None


def build_route(name: str, conf: dict[str, Any], limits: Limits, env: Mapping[str, str],
                primary: bool = True) -> tuple[SmppGateway | HttpGateway, float]:
    """The gateway of one route (a `routes:` entry) and its rate in msg/s.

    SMPP: RASSYLKA_ROUTE_<NAME>_HOST / _PORT, or for the primary route RASSYLKA_SMPP_HOST /
    RASSYLKA_SMPP_PORT, override the configured address (tests and the demo run
    simulators on free ports); the password comes from the variable the route's
    `password_env` names; a `limits.yaml` entry for the route wins over its
    binds / rate_per_bind, and RASSYLKA_RATE_PER_BIND over both. HTTP: `build_http_gateway`.
    """
    if conf.get("type") == "http":
        return build_http_gateway(name, conf, limits, env, primary=primary)
    rate = limits.routes.get(name)
    binds = int(conf.get("binds", rate.binds if rate else 1))
    per_bind = float(rate.rate_per_bind if rate else conf.get("rate_per_bind", 100))
    if env.get("RASSYLKA_RATE_PER_BIND"):
        per_bind = float(env["RASSYLKA_RATE_PER_BIND"])
    host = route_env(env, name, "HOST", "RASSYLKA_SMPP_HOST", primary)
    port = route_env(env, name, "PORT", "RASSYLKA_SMPP_PORT", primary)
    route = SmppRoute(
        host=host or conf.get("host", "127.0.0.1"),
        port=int(port or conf.get("port", 2775)),
        system_id=conf.get("system_id", "rassylka"),
        system_type=str(conf.get("system_type", "")),
        password=env.get(conf.get("password_env", ""), "") or "secret",
        name=name,
        binds=binds,
        window=int(conf.get("window", 32)),
        rate_per_bind=per_bind,
        submit_id_format=(conf.get("message_ids") or {}).get("submit_sm_resp", "text"),
        receipt_id_format=(conf.get("message_ids") or {}).get("deliver_sm", "text"),
        bind_mode=conf.get("bind", BIND_MODES[0]),
        **{key: int(conf[key]) for key in ADDRESS_KEYS if key in conf},
    )
    return SmppGateway(route), binds * per_bind


def build_http_gateway(name: str, conf: dict[str, Any], limits: Limits,
                       env: Mapping[str, str], primary: bool = True) -> tuple[HttpGateway, float]:
    """The HTTP gateway for route `name` (a `type: http` entry) and its rate in msg/s.

    The API key and the callback secret come from the variables `api_key_env` and
    `callback_secret_env` name; either one unset is a ConfigError (an empty callback
    secret would let anyone forge receipts). RASSYLKA_ROUTE_<NAME>_URL and
    RASSYLKA_ROUTE_<NAME>_CALLBACK_PORT (for the primary route also RASSYLKA_HTTP_URL and
    RASSYLKA_HTTP_CALLBACK_PORT) override the configured provider URL and callback port.
    A `limits.yaml` entry for the route (binds × rate_per_bind) wins over `rate_per_s`.
    """
    problems = []
    secrets = {}
    for field_name in ("api_key_env", "callback_secret_env"):
        variable = conf[field_name]
        secrets[field_name] = env.get(variable, "")
        if not secrets[field_name]:
            problems.append(f"routes.{name}: environment variable {variable} "
                            f"({field_name}) is not set")
    if problems:
        raise ConfigError(problems)
    rate = limits.routes.get(name)
    per_s = rate.binds * rate.rate_per_bind if rate else float(conf.get("rate_per_s", 50))
    route = HttpRoute(
        url=route_env(env, name, "URL", "RASSYLKA_HTTP_URL", primary) or conf["url"],
        api_key=secrets["api_key_env"],
        callback_secret=secrets["callback_secret_env"],
        name=name,
        callback_host=conf.get("callback_host", "127.0.0.1"),
        callback_port=int(route_env(env, name, "CALLBACK_PORT", "RASSYLKA_HTTP_CALLBACK_PORT",
                                    primary) or conf.get("callback_port", 8781)),
        callback_path=conf.get("callback_path", "/sms/callback"),
        rate_per_s=per_s,
        concurrency=int(conf.get("concurrency", 16)),
        response_timeout_s=float(conf.get("timeout_s", 10)),
    )
    return HttpGateway(route), per_s
