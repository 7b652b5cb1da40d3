"""Settings: one object per process, built once at start-up from the environment.

Nothing reads the environment at import time; components take a `Settings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: os.environ); unset names keep defaults."""
        env = os.environ if environ is None else environ
        base = cls()
        return cls(
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP") or base.kafka_bootstrap,
            topic_prefix=env.get("RASSYLKA_TOPIC_PREFIX", base.topic_prefix),
            partitions=int(env.get("RASSYLKA_PARTITIONS", base.partitions)),
            config_dir=Path(env.get("RASSYLKA_CONFIG_DIR", base.config_dir)),
            state_dir=Path(env.get("RASSYLKA_STATE_DIR", base.state_dir)),
            clickhouse_url=env.get("CLICKHOUSE_URL") or base.clickhouse_url,
            phone_hash_key=env.get("RASSYLKA_PHONE_HASH_KEY", base.phone_hash_key),
            app_id=env.get("RASSYLKA_APP_ID", base.app_id),
        )

    def topic(self, name: str) -> str:
        """The deployed name of catalog topic `name` (the prefix isolates tests and tenants)."""
        return f"{self.topic_prefix}{name}"
