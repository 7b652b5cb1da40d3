"""The API's limits: one object, built once at start-up from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from pipeline.errors import ConfigError

ENV_PREFIX = "RASSYLKA_API_"


@dataclass(frozen=True)
class ApiSettings:
    """Limits of one API process; each is `RASSYLKA_API_<NAME>` in the environment."""

    max_body_bytes: int = 8 * 2**20
    """Largest batch body (`events:batch`, arrays of profiles or consents): larger is 413."""
    max_item_bytes: int = 64 * 2**10
    """Largest single-event body (`/v1/events/{type}`): larger is 413."""
    max_batch: int = 5_000
    """Most items in one batch request: more is 413."""
    delivery_timeout_s: float = 15.0
    """How long a record may wait for the broker's acknowledgement before the request
    fails with 503 (librdkafka's message.timeout.ms)."""
    max_in_flight: int = 100_000
    """Records produced and not yet acknowledged, over all requests: beyond it, 429."""
    max_router_lag: int = 200_000
    """Event records the router has not committed yet, over every event topic: beyond it
    event requests get 429 (0: not watched)."""
    lag_check_s: float = 5.0
    """How often the router's lag is read."""
    idempotency_ttl_s: float = 86_400.0
    """How long a first answer is replayed for its Idempotency-Key (and kept on the topic)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Settings from `environ` (default os.environ); ConfigError naming a bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = int if f.type in ("int", int) else float
            try:
                value = kind(raw)
            except ValueError:
                value = -1
            if value < 0:
                raise ConfigError([f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a "
                                   f"{'whole ' if kind is int else ''}number >= 0"])
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]
