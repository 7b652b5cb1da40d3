"""Build the sender's policy and gateway from `config/` and the environment (once, at start)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from connectors.http_gateway import HttpGateway, HttpRoute
from connectors.smpp import SmppGateway, SmppRoute
from pipeline.errors import ConfigError
from pipeline.sender.content import ContentRules
from pipeline.sender.core import SenderPolicy
from pipeline.sender.limits import Limits, load_limits
from pipeline.settings import Settings

ROUTE_KEYS = {"type", "host", "port", "system_id", "password_env", "binds", "window",
              "rate_per_bind", "currency"}
# `type: http`: a JSON provider; secrets come from the variables the *_env fields name.
HTTP_ROUTE_KEYS = {"type", "url", "api_key_env", "callback_host", "callback_port",
                   "callback_path", "callback_secret_env", "rate_per_s", "concurrency",
                   "timeout_s", "currency"}
HTTP_REQUIRED = ("url", "api_key_env", "callback_secret_env")


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
    """(default route name, route name -> settings) from `config/routes.yaml`."""
    path = config_dir / "routes.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    routes = data.get("routes") or {}
    problems = []
    for name, route in routes.items():
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
    default = data.get("default_route")
    if default not in routes:
        problems.append(f"{path}: default_route {default!r} is not one of {sorted(routes)}")
    if problems:
        raise ConfigError(problems)
    return default, routes


def build_gateway(
    settings: Settings, limits: Limits, route_name: str | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[SmppGateway | HttpGateway, float]:
    """The gateway for `route_name` (default route if None) and its total rate in msg/s.

    RASSYLKA_SMPP_HOST / RASSYLKA_SMPP_PORT override the configured address (tests and
    the demo run the simulator on a free port); the password comes from the variable the
    route's `password_env` names. HTTP routes: see `build_http_gateway`.
    """
    env = os.environ if environ is None else environ
    default, routes = load_routes(settings.config_dir)
    name = route_name or env.get("RASSYLKA_ROUTE") or default
    conf = routes[name]
    if conf.get("type") == "http":
        return build_http_gateway(name, conf, limits, env)
    rate = limits.routes.get(name)
    binds = int(conf.get("binds", rate.binds if rate else 1))
    per_bind = float(rate.rate_per_bind if rate else conf.get("rate_per_bind", 100))
    if env.get("RASSYLKA_RATE_PER_BIND"):
        per_bind = float(env["RASSYLKA_RATE_PER_BIND"])
    route = SmppRoute(
        host=env.get("RASSYLKA_SMPP_HOST", conf.get("host", "127.0.0.1")),
        port=int(env.get("RASSYLKA_SMPP_PORT", conf.get("port", 2775))),
        system_id=conf.get("system_id", "rassylka"),
        password=env.get(conf.get("password_env", ""), "") or "secret",
        name=name,
        binds=binds,
        window=int(conf.get("window", 32)),
        rate_per_bind=per_bind,
    )
    return SmppGateway(route), binds * per_bind


def build_http_gateway(name: str, conf: dict[str, Any], limits: Limits,
                       env: Mapping[str, str]) -> tuple[HttpGateway, float]:
    """The HTTP gateway for route `name` (a `type: http` entry) and its rate in msg/s.

    The API key and the callback secret come from the variables `api_key_env` and
    `callback_secret_env` name; either one unset is a ConfigError (an empty callback
    secret would let anyone forge receipts). RASSYLKA_HTTP_URL and
    RASSYLKA_HTTP_CALLBACK_PORT override the configured provider URL and callback port.
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
        url=env.get("RASSYLKA_HTTP_URL", conf["url"]),
        api_key=secrets["api_key_env"],
        callback_secret=secrets["callback_secret_env"],
        name=name,
        callback_host=conf.get("callback_host", "127.0.0.1"),
        callback_port=int(env.get("RASSYLKA_HTTP_CALLBACK_PORT", conf.get("callback_port", 8781))),
        callback_path=conf.get("callback_path", "/sms/callback"),
        rate_per_s=per_s,
        concurrency=int(conf.get("concurrency", 16)),
        response_timeout_s=float(conf.get("timeout_s", 10)),
    )
    return HttpGateway(route), per_s
