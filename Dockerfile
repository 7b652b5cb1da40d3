# The Rassylka image: one image, every worker. `docker run rassylka router --worker-id 0`,
# `... sender`, `... sink`, `... campaign worker`, `... redirect`, ...: the arguments are a
# `rassylka` command (ENTRYPOINT). infra/docker-compose.yml runs the whole stack from it;
# tests/infra/test_deploy.py checks both statically (no Docker engine runs in CI).
#
# The source tree is installed in place (`pip install -e`), not copied into site-packages:
# the code finds schemas/, config/ and infra/clickhouse/ next to pipeline/
# (pipeline.settings.ROOT, pipeline.avro.SCHEMA_DIR, connectors.clickhouse.MIGRATIONS_DIR).
# Health checks are per service in the compose file: each worker answers /healthz on its
# own port (RASSYLKA_METRICS_PORT, or --port for redirect, api and dashboard).

# --- build: a virtualenv with Rassylka and its dependencies (compilers only here) ---------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# What `pip install .` reads (pyproject.toml names README.md as the readme), then the
# packages and the files they load at run time.
COPY pyproject.toml README.md LICENSE ./
COPY pipeline ./pipeline
COPY connectors ./connectors
COPY schemas ./schemas
COPY config ./config
COPY infra/clickhouse ./infra/clickhouse
RUN pip install --upgrade pip && pip install -e . \
 && python -m compileall -q pipeline connectors

# --- runtime: the virtualenv and the tree, a non-root user ---------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/rassylka --create-home \
      --shell /usr/sbin/nologin rassylka
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# Faust (attribution) keeps its data folder in the working directory; releases of
# config.rules are unpacked under RASSYLKA_STATE_DIR: both belong to the user.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RASSYLKA_STATE_DIR=/var/lib/rassylka/state
WORKDIR /var/lib/rassylka
USER rassylka
ENTRYPOINT ["rassylka"]
CMD ["--help"]
