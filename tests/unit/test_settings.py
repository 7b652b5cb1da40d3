"""Settings from the environment: where Kafka is (KAFKA_PORT, KAFKA_BOOTSTRAP) and how
child processes inherit it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.errors import ConfigError
from pipeline.procs import settings_env
from pipeline.settings import DEFAULT_BOOTSTRAP, ROOT, Settings


def test_default_is_the_local_broker_on_19092() -> None:
    assert Settings.from_env({}).kafka_bootstrap == DEFAULT_BOOTSTRAP == "127.0.0.1:19092"


def test_kafka_port_moves_the_bootstrap_address() -> None:
    assert Settings.from_env({"KAFKA_PORT": "29092"}).kafka_bootstrap == "127.0.0.1:29092"


def test_kafka_bootstrap_wins_over_kafka_port() -> None:
    env = {"KAFKA_PORT": "29092", "KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092"}
    assert Settings.from_env(env).kafka_bootstrap == "kafka-1:9092,kafka-2:9092"


def test_empty_kafka_port_means_the_default() -> None:
    assert Settings.from_env({"KAFKA_PORT": ""}).kafka_bootstrap == DEFAULT_BOOTSTRAP


@pytest.mark.parametrize("bad", ["abc", "0", "70000", "-1", "19092x"])
def test_a_bad_kafka_port_is_a_config_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"KAFKA_PORT": bad})
    assert "KAFKA_PORT" in str(info.value) and bad in str(info.value)


def test_kafka_wait_comes_from_the_environment() -> None:
    assert Settings.from_env({}).kafka_wait_s == 8.0
    assert Settings.from_env({"RASSYLKA_KAFKA_WAIT_S": "2.5"}).kafka_wait_s == 2.5
    with pytest.raises(ConfigError, match="RASSYLKA_KAFKA_WAIT_S"):
        Settings.from_env({"RASSYLKA_KAFKA_WAIT_S": "soon"})


def test_a_worker_process_uses_the_address_its_parent_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("KAFKA_PORT", "19092")  # what the child inherits besides settings_env
    parent = Settings.from_env({"KAFKA_PORT": "29092"})
    env = settings_env(parent)
    assert env["KAFKA_BOOTSTRAP"] == "127.0.0.1:29092"
    child = subprocess.run(
        [sys.executable, "-c",
         "from pipeline.settings import Settings; print(Settings.from_env().kafka_bootstrap)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert child.stdout.strip() == "127.0.0.1:29092"
