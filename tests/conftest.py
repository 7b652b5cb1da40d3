"""Shared fixtures: one real Kafka broker per test session, a private namespace per test.

Tests read their own copy of the configuration, `tests/fixtures/config/` (FIXTURE_CONFIG),
never the live `config/`: operators add rules and templates there without breaking tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from connectors import clickhouse
from connectors.clickhouse import Client, connect
from pipeline.outbox import Database
from pipeline.settings import ROOT, Settings, local_bootstrap
from pipeline.topics import create_topics, drop_namespace

FIXTURE_CONFIG = Path(__file__).resolve().parent / "fixtures" / "config"


@pytest.fixture(scope="session")
def chdb_client(tmp_path_factory: pytest.TempPathFactory) -> Client:
    """The analytics store tests share: chDB hosts one engine per process, so reuse the one
    already opened (or RASSYLKA_TEST_CLICKHOUSE_URL's server)."""
    url = os.environ.get("RASSYLKA_TEST_CLICKHOUSE_URL")
    if url:
        return connect(url)
    opened = [c for c in clickhouse._registry.values() if c.embedded]
    return opened[0] if opened else connect(f"chdb://{tmp_path_factory.mktemp('clickhouse')}")


@pytest.fixture(scope="session")
def fixture_config() -> Path:
    """The tests' copy of `config/` (read-only: copy it to tmp_path to change it)."""
    return FIXTURE_CONFIG


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The broker for this session: KAFKA_BOOTSTRAP, else the project's own local broker.

    With RASSYLKA_TESTCONTAINERS=1 and a Docker engine that answers, testcontainers'
    Kafka is used instead.
    """
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if os.environ.get("RASSYLKA_TESTCONTAINERS") == "1" and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    subprocess.run([str(ROOT / "infra" / "kafka" / "kafka.sh"), "up"], check=True, timeout=300)
    yield local_bootstrap(os.environ)  # where kafka.sh started it: 127.0.0.1:$KAFKA_PORT


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    """The Schema Registry for this session: SCHEMA_REGISTRY_URL, else the project's own
    (`infra/registry/registry.sh up`: idempotent, on 127.0.0.1:SCHEMA_REGISTRY_PORT)."""
    from pipeline.registry import registry_url

    if not os.environ.get("SCHEMA_REGISTRY_URL"):
        subprocess.run([str(ROOT / "infra" / "registry" / "registry.sh"), "up"], check=True,
                       timeout=600)
    return registry_url()


@pytest.fixture(scope="session")
def postgres() -> Database:
    """The ERP stand-in database for this session: `infra/postgres/postgres.sh up` (idempotent;
    installs Debian's server package when missing) on 127.0.0.1:POSTGRES_PORT."""
    subprocess.run([str(ROOT / "infra" / "postgres" / "postgres.sh"), "up"], check=True, timeout=900)
    return Database.from_env()


@pytest.fixture(scope="session")
def connect_url(kafka_bootstrap: str) -> str:
    """The Kafka Connect worker (with Debezium) for this session: CONNECT_URL, else
    `infra/connect/connect.sh up` (idempotent) against the session's broker."""
    from pipeline.outbox import connect_url as url

    if not os.environ.get("CONNECT_URL"):
        subprocess.run([str(ROOT / "infra" / "connect" / "connect.sh"), "up"], check=True,
                       timeout=900, env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap})
    return url()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one test: its own topic prefix, consumer groups and state folder, and
    the tests' copy of the configuration. The test's topics are deleted when it ends: they
    used to stay (18 integration tests left 444 topics, a whole run thousands), and every
    later test paid for them (metadata, memory, a broker restart's start-up)."""
    tag = uuid.uuid4().hex[:10]
    base = Settings.from_env({})
    mine = replace(
        base,
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{tag}.",
        app_id=f"t{tag}",
        partitions=2,
        config_dir=FIXTURE_CONFIG,
        state_dir=tmp_path / "state",
        clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",
    )
    yield mine
    drop_namespace(mine)


@pytest.fixture
def ns(settings: Settings, schema_registry_url: str) -> Settings:
    """`settings` with every catalog topic created in the test's namespace (and the Schema
    Registry running: stages decode Confluent-framed records with it)."""
    create_topics(settings)
    return settings
