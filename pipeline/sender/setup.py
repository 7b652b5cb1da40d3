"""Build the sender's policy and gateway from `config/` and the environment (once, at start)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from connectors.smpp import SmppGateway, SmppRoute
from pipeline.errors import ConfigError
from pipeline.sender.content import ContentRules
from pipeline.sender.core import SenderPolicy
from pipeline.sender.limits import Limits, load_limits
from pipeline.settings import Settings

ROUTE_KEYS = {"type", "host", "port", "system_id", "password_env", "binds", "window",
              "rate_per_bind", "currency"}


def load_policy(config_dir: Path) -> tuple[SenderPolicy, Limits]:
    """The decision chain's policy from `config_dir`; ConfigError lists every problem."""
    limits = load_limits(config_dir / "limits.yaml")
    content = ContentRules.load(config_dir / "content.yaml")
    marketing_quiet = limits.quiet_hours.get("marketing")
    default_zone = marketing_quiet.default_time_zone if marketing_quiet else "Europe/Moscow"
    policy = SenderPolicy(
        allowed_regions=limits.allowed_regions,
        content=content,
        quiet_hours=limits.quiet_hours,
        caps=limits.frequency_caps,
        default_time_zone=default_zone,
    )
    return policy, limits


def load_routes(config_dir: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """(default route name, route name -> settings) from `config/routes.yaml`."""
    path = config_dir / "routes.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    routes = data.get("routes") or {}
    problems = []
    for name, route in routes.items():
        for key in set(route) - ROUTE_KEYS:
            problems.append(f"{path}: routes.{name}: unknown field {key!r}")
        if route.get("type") != "smpp":
            problems.append(f"{path}: routes.{name}: type must be 'smpp' (HTTP routes: not yet)")
    default = data.get("default_route")
    if default not in routes:
        problems.append(f"{path}: default_route {default!r} is not one of {sorted(routes)}")
    if problems:
        raise ConfigError(problems)
    return default, routes


def build_gateway(settings: Settings, limits: Limits, route_name: str | None = None,
                  environ: dict[str, str] | None = None) -> tuple[SmppGateway, float]:
    """The gateway for `route_name` (default route if None) and its total rate in msg/s.

    RASSYLKA_SMPP_HOST / RASSYLKA_SMPP_PORT override the configured address (tests and
    the demo run the simulator on a free port); the password comes from the variable the
    route's `password_env` names.
    """
    env = os.environ if environ is None else environ
    default, routes = load_routes(settings.config_dir)
    name = route_name or env.get("RASSYLKA_ROUTE") or default
    conf = routes[name]
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
