"""Settings: one object per process, built once at start-up from the environment.

Nothing reads the environment at import time; components take a `Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KAFKA_PORT = 19092
DEFAULT_BOOTSTRAP = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
DEMO_DIR = ROOT / ".run" / "demo"  # `make demo`: worker logs and its own chDB folder


@dataclass(frozen=True)
class Settings:
    """Where Kafka, ClickHouse and `config/` are, and how this deployment names things."""

    kafka_bootstrap: str = DEFAULT_BOOTSTRAP
    topic_prefix: str = ""
    partitions: int = 4
    config_dir: Path = ROOT / "config"
    state_dir: Path = ROOT / ".run" / "state"
    clickhouse_url: str = f"chdb://{ROOT / '.run' / 'clickhouse'}"
    phone_hash_key: str = field(default="rassylka-dev-key", repr=False)
    app_id: str = "rassylka"
    kafka_wait_s: float = 8.0  # how long a command waits for the broker at start

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: os.environ); unset names keep defaults.

        Kafka is `KAFKA_BOOTSTRAP` when set, else the project's local broker on
        127.0.0.1:`KAFKA_PORT` (default 19092) — the port `infra/kafka/kafka.sh` starts it
        on, so a broker moved with KAFKA_PORT is the one every command uses. Raises
        ConfigError for a KAFKA_PORT that is not a port number.
        """
        env = os.environ if environ is None else environ
        base = cls()
        return cls(
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP") or local_bootstrap(env),
            topic_prefix=env.get("RASSYLKA_TOPIC_PREFIX", base.topic_prefix),
            partitions=int(env.get("RASSYLKA_PARTITIONS", base.partitions)),
            config_dir=Path(env.get("RASSYLKA_CONFIG_DIR", base.config_dir)),
            state_dir=Path(env.get("RASSYLKA_STATE_DIR", base.state_dir)),
            clickhouse_url=env.get("CLICKHOUSE_URL") or base.clickhouse_url,
            phone_hash_key=env.get("RASSYLKA_PHONE_HASH_KEY", base.phone_hash_key),
            app_id=env.get("RASSYLKA_APP_ID", base.app_id),
            kafka_wait_s=_seconds(env, "RASSYLKA_KAFKA_WAIT_S", base.kafka_wait_s),
        )

    def topic(self, name: str) -> str:
        """The deployed name of catalog topic `name` (the prefix isolates tests and tenants)."""
        return f"{self.topic_prefix}{name}"


def local_bootstrap(environ: Mapping[str, str]) -> str:
    """The address of the project's own broker: 127.0.0.1:`KAFKA_PORT` (default 19092)."""
    raw = (environ.get("KAFKA_PORT") or "").strip()
    if not raw:
        return DEFAULT_BOOTSTRAP
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError([f"KAFKA_PORT={raw!r} is not a TCP port number (1-65535)"])
    return f"127.0.0.1:{int(raw)}"


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError([f"{name}={raw!r} is not a number of seconds"])
    return value
