# Rassylka — `make help` lists the targets. Two commands do everything: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA := infra/kafka/kafka.sh
REGISTRY := infra/registry/registry.sh
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

.DEFAULT_GOAL := help
.PHONY: help install kafka-up kafka-down kafka-status registry-up registry-down registry-status topics demo test test-unit bench lint fmt clean

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

topics: install kafka-up ## create every topic of the catalog (idempotent)
	@$(BIN)/rassylka topics create

demo: install kafka-up ## the whole pipeline on sample data, printed as tables
	@$(BIN)/rassylka demo

test: install kafka-up registry-up ## the whole test suite on the real broker and Schema Registry
	@$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## unit tests only (no broker)
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: install kafka-up ## the benchmark: throughput, latency percentiles, ratio to a plain Kafka loop
	@$(BIN)/rassylka bench

lint: install ## ruff check
	@$(BIN)/ruff check pipeline connectors tests

fmt: install ## ruff format
	@$(BIN)/ruff format pipeline connectors tests

clean: kafka-down registry-down ## stop the broker and registry, remove the virtualenv, caches and local state
	rm -rf $(VENV) .run infra/kafka/.cache infra/registry/.cache .pytest_cache
