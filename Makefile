# Rassylka — `make help` lists the targets. Two commands do everything: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA := infra/kafka/kafka.sh
REGISTRY := infra/registry/registry.sh
POSTGRES := infra/postgres/postgres.sh
CONNECT := infra/connect/connect.sh
PYTEST_ARGS ?=
# The local broker's port. Exported: kafka.sh starts the broker on it and every rassylka
# command, worker and test uses 127.0.0.1:$(KAFKA_PORT) — unless KAFKA_BOOTSTRAP names a cluster.
KAFKA_PORT ?= 19092
export KAFKA_PORT
KAFKA_ADDRESS = $(if $(KAFKA_BOOTSTRAP),$(KAFKA_BOOTSTRAP) (KAFKA_BOOTSTRAP: nothing is started),127.0.0.1:$(KAFKA_PORT) (KAFKA_PORT=$(KAFKA_PORT)))
# The local Schema Registry's port, likewise: registry.sh starts it there and everything uses
# http://127.0.0.1:$(SCHEMA_REGISTRY_PORT)/apis/ccompat/v7 — unless SCHEMA_REGISTRY_URL names another.
SCHEMA_REGISTRY_PORT ?= 18081
export SCHEMA_REGISTRY_PORT
# The database outbox: the local PostgreSQL (ERP stand-in) and Kafka Connect worker with Debezium.
POSTGRES_PORT ?= 15432
export POSTGRES_PORT
CONNECT_PORT ?= 18083
export CONNECT_PORT

.DEFAULT_GOAL := help
.PHONY: help install chromium prometheus kannel smsc-bench kafka-up kafka-down kafka-status registry-up registry-down registry-status postgres-up postgres-down connect-up connect-down topics demo test test-unit bench lint fmt clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'
	@echo "Kafka for every target: $(KAFKA_ADDRESS)"

$(BIN)/.installed: pyproject.toml
	@echo "[setup] creating the virtualenv in $(VENV) and installing Rassylka with its test tools ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check -U pip
	@$(BIN)/pip install -q --disable-pip-version-check -e ".[test,bench]"
	@touch $@
	@echo "[setup] installed"

install: $(BIN)/.installed ## create the virtualenv and install everything

chromium: ## install headless Chromium (Debian `chromium`) when missing: the dashboard test renders with it
	@command -v chromium >/dev/null || { \
		echo "[setup] installing chromium (apt-get) for the dashboard test ..."; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q -o DPkg::Lock::Timeout=300 chromium; }

prometheus: ## install Prometheus (Debian `prometheus`) when missing: a test scrapes the workers with it
	@command -v prometheus >/dev/null || { \
		echo "[setup] installing prometheus (apt-get) for the metrics test ..."; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 prometheus; }

smsc-bench: ## build the benchmark's fast SMSC simulator (Go, standard library only; infra/smsc-bench/.cache)
	@infra/smsc-bench/build.sh

kannel: ## install Kannel (Debian `kannel`) when missing: the bench runs it side by side
	@infra/kannel/kannel.sh install

kafka-up: ## fetch (once) and start the local broker on 127.0.0.1:KAFKA_PORT (19092), wait until it answers
	@$(KAFKA) up

kafka-down: ## stop the local Kafka broker cleanly
	@$(KAFKA) down

kafka-status: ## is the local broker running?
	@$(KAFKA) status

registry-up: ## fetch (once) and start the local Schema Registry on 127.0.0.1:SCHEMA_REGISTRY_PORT (18081)
	@$(REGISTRY) up

registry-down: ## stop the local Schema Registry (it forgets its schemas: they live in memory)
	@$(REGISTRY) down

registry-status: ## is the local Schema Registry running?
	@$(REGISTRY) status

postgres-up: ## start the local PostgreSQL on 127.0.0.1:POSTGRES_PORT (15432), logical replication on, outbox tables ready
	@$(POSTGRES) up

postgres-down: ## stop the local PostgreSQL (its data stays in infra/postgres/.cache)
	@$(POSTGRES) down

connect-up: kafka-up ## fetch (once) and start Kafka Connect with Debezium on 127.0.0.1:CONNECT_PORT (18083)
	@$(CONNECT) up

connect-down: ## stop the local Kafka Connect worker
	@$(CONNECT) down

topics: install kafka-up ## create every topic of the catalog (idempotent)
	@$(BIN)/rassylka topics create

demo: install kafka-up postgres-up connect-up ## the whole pipeline on sample data, printed as tables
	@$(BIN)/rassylka demo

test: install chromium prometheus kannel smsc-bench kafka-up registry-up postgres-up connect-up ## the whole test suite on the real broker, Schema Registry, PostgreSQL and Kafka Connect
	@$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## unit tests only (no broker)
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: install kannel smsc-bench kafka-up ## the benchmark: throughput, CPU per process, latency, Kannel side by side, scale-out
	@$(BIN)/rassylka bench

lint: install ## ruff check
	@$(BIN)/ruff check pipeline connectors tests

fmt: install ## ruff format
	@$(BIN)/ruff format pipeline connectors tests

clean: connect-down postgres-down kafka-down registry-down ## stop the broker, registry, Connect and PostgreSQL, remove the virtualenv, caches and local state
	rm -rf $(VENV) .run infra/kafka/.cache infra/registry/.cache infra/connect/.cache infra/postgres/.cache infra/smsc-bench/.cache .pytest_cache
