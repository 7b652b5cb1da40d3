"""The deployment files, checked statically: infra/docker-compose.yml, the Dockerfile,
.dockerignore, infra/prometheus/prometheus.yml and Grafana's provisioning.

No Docker engine runs where the tests run, so nothing here builds an image or starts a
container. Instead every claim the files make is checked against the code:

* the compose file parses, and each Rassylka service's command is parsed by the real
  `rassylka` CLI (click, through typer) with the service's environment, so an unknown
  command or option, or a value of the wrong type, fails here as it would at start-up;
* every variable set for a Rassylka service is one the code reads (third-party images'
  variables are theirs), and one read only as a CLI option's envvar is set only for a
  command that has that option;
* every published port, health check, Prometheus target and address one service gives
  another (Kafka, ClickHouse, the registry, Connect, the SMSC) is a port the process there
  listens on, on an address other containers reach;
* secrets are required variables (`${VAR:?...}`), never literals, and README's
  "Deployment" names each one;
* the Dockerfile installs the tree with `rassylka` as its entry point and a non-root user,
  and .dockerignore keeps nothing out that the install needs;
* Grafana's provisioning parses and points at the stack's Prometheus and the dashboard.

The image ships the live `config/`, so the SMSC address is checked against it (read only).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from pipeline import links, outbox, registry, releases
from pipeline.api.settings import ENV_PREFIX, ApiSettings
from pipeline.cli import app
from pipeline.sender.setup import build_gateway, load_policy, read_routes
from pipeline.settings import ROOT, Settings

INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
GRAFANA = INFRA / "grafana"
CONFIG = ROOT / "config"  # what the image ships (Dockerfile: COPY config)

# The workers and doors the stack must run (README: "Metrics and health", "HTTP API", ...).
DEPLOYED = {"router", "sender", "sink", "attribution", "campaign worker", "outbox", "redirect",
            "api", "dashboard"}
# Commands without --metrics-port that serve /metrics on their own --port.
METRICS_ON_OWN_PORT = {"redirect": ROOT / "connectors" / "redirect.py"}
# What `pip install -e .` and the code at run time need in the image, next to pipeline/.
IMAGE_NEEDS = ["pyproject.toml", "README.md", "pipeline", "connectors", "schemas", "config",
               "infra/clickhouse"]
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|_KEY)$")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
REQUIRED = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*):\?[^}]*\}")
HEALTH_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):(?P<port>\d+)(?P<path>/[\w/]*)")


# ----------------------------------------------------------------- the compose file
def _interpolate(value: Any) -> Any:
    """`value` with compose's variables replaced as on a machine that sets only the required
    ones: `${VAR:-default}` is the default, a required or plain `${VAR}` the text `<VAR>`."""
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        return match["arg"] if match["op"] in ("-", ":-") else f"<{match['name']}>"

    return VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


RAW = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # YAML anchors and `<<` merged
SERVICES: dict[str, dict[str, Any]] = _interpolate(RAW["services"])
OURS = {name: s for name, s in SERVICES.items() if "build" in s}


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _raw_environment(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (RAW["services"][name].get("environment") or {}).items()}


def _published(service: Mapping[str, Any]) -> list[tuple[str | None, int, int]]:
    """(host address, host port, container port) of each `ports:` entry."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        address = parts[0] if len(parts) == 3 else None
        out.append((address, int(parts[-2]) if len(parts) > 1 else int(parts[-1]), int(parts[-1])))
    return out


def _registry_host(image: str) -> str | None:
    """The registry host an image name starts with (`host.tld/...`), None for a Docker Hub
    name (`python:3.11-slim`, `apache/kafka:4.1.1`)."""
    first, slash, _rest = image.partition("/")
    return first if slash and ("." in first or ":" in first or first == "localhost") else None


def _mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source of each volume entry."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


# ------------------------------------------------------- what each process listens on
CLI = typer.main.get_command(app)


@dataclass(frozen=True)
class Process:
    """One service's process, as its command line and environment make it."""

    command: str  # "router", "campaign worker", "python -m connectors.smsc_sim"
    params: dict[str, Any]
    host: str | None  # the address it listens on
    ports: frozenset[int]  # where it serves (its --port, the simulator's ports)
    metrics_port: int  # its --metrics-port / RASSYLKA_METRICS_PORT (0: off, or no such option)
    option_envvars: frozenset[str]  # variables its own options (and the root's) read


def _root_envvars() -> set[str]:
    return {p.envvar for p in CLI.params if getattr(p, "envvar", None)}


def _walk(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _walk(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def _process(name: str) -> Process:
    service = SERVICES[name]
    env = _environment(service)
    argv = [str(arg) for arg in service.get("command", [])]
    entrypoint = [str(arg) for arg in service.get("entrypoint", [])]
    if entrypoint:  # `python -m <module>`: the module's own argparse
        assert entrypoint[:2] == ["python", "-m"] and len(entrypoint) == 3, entrypoint
        config = importlib.import_module(entrypoint[2]).parse_args(argv)
        ports = {config.port} | ({config.control_port} if config.control_port else set())
        return Process(" ".join(entrypoint), vars(config), config.host, frozenset(ports), 0,
                       frozenset())
    command, path = CLI, []
    while hasattr(command, "commands"):
        assert argv and argv[0] in command.commands, \
            f"{name}: `rassylka {' '.join(path + argv[:1])}` is no rassylka command"
        path.append(argv[0])
        command = command.commands[argv.pop(0)]
    with mock.patch.dict(os.environ, env, clear=True):  # options read their envvars
        params = command.make_context(f"rassylka {' '.join(path)}", argv).params
    envvars = {p.envvar for p in command.params if getattr(p, "envvar", None)}
    port = params.get("port")
    return Process(" ".join(path), params, params.get("host"),
                   frozenset({port} if port else set()), params.get("metrics_port") or 0,
                   frozenset(envvars | _root_envvars()))


@functools.cache
def _processes() -> dict[str, Process]:
    """Every Rassylka service's process (the simulator's too), parsed once."""
    return {name: _process(name) for name in OURS}


def _is_option_elsewhere(key: str) -> bool:
    """Whether `key` is the envvar of some command's option."""
    return any(getattr(p, "envvar", None) == key for _, c in _walk(CLI) for p in c.params)


def _serves(process: Process) -> set[int]:
    return set(process.ports) | ({process.metrics_port} if process.metrics_port else set())


# ------------------------------------------------------ what the code reads from the env
READ = re.compile(r"""(?:\b(?:environ|env)(?:\.get\(|\[)|\bgetenv\()\s*"""
                  r"""(?:["'](?P<literal>[A-Z][A-Z0-9_]+)["']|(?P<constant>[A-Z][A-Z0-9_]*)\b)""")
CONSTANT = re.compile(r"""^(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*["'](?P<value>[A-Z][A-Z0-9_]+)["']""",
                      re.M)


class _Reads(dict):
    """An environment that remembers which names were looked up."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.names.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.names.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.names.add(str(key))
        return super().__contains__(key)


@functools.cache
def _read_by_the_code() -> frozenset[str]:
    """Variables pipeline/ and connectors/ read.

    In the source: `os.environ.get("X")`, `env["X"]`, `getenv("X")`, `env.get(X_ENV)` with
    the module's constant. Looked up when built: the settings objects (`Settings.from_env`,
    the API's `RASSYLKA_API_<FIELD>` limits, the registry, link, config-source and outbox
    settings) and the sender's gateway over the image's routes, once with each route as
    `--route` (per-route addresses, the generic ones of the primary route, the variables
    the routes name for their secrets).
    """
    names: set[str] = set()
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        constants = {m["name"]: m["value"] for m in CONSTANT.finditer(text)}
        for match in READ.finditer(text):
            name = match["literal"] or constants.get(match["constant"])
            if name:
                names.add(name)
    for build in (Settings.from_env, ApiSettings.from_env, registry.registry_url,
                  releases.config_source, links.link_secret, links.link_base,
                  outbox.Database.from_env, outbox.connect_url):
        env = _Reads({})
        build(env)
        names |= env.names
    assert {ENV_PREFIX + f.name.upper() for f in fields(ApiSettings)} <= names
    routes = read_routes(CONFIG).routes
    secrets = {value for conf in routes.values() for key, value in conf.items()
               if key.endswith("_env")}
    settings = replace(Settings(), config_dir=CONFIG)
    _policy, limits = load_policy(CONFIG)
    for only in (None, *routes):
        env = _Reads(dict.fromkeys(secrets, "x"))
        build_gateway(settings, limits, only, env)
        names |= env.names
    return frozenset(names)


# =========================================================================== tests
def test_the_compose_file_parses_and_runs_every_worker_and_door() -> None:
    assert RAW["services"] and OURS
    deployed = {_processes()[name].command for name in OURS}
    assert DEPLOYED - deployed == set(), f"not deployed: {sorted(DEPLOYED - deployed)}"
    third_party = {"kafka", "clickhouse", "registry", "prometheus", "grafana"}
    assert third_party <= set(SERVICES), sorted(third_party - set(SERVICES))
    for name, service in OURS.items():
        assert (INFRA / service["build"]["context"]).resolve() == ROOT, name
        assert service["build"].get("dockerfile", "Dockerfile") == DOCKERFILE.name, name


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_command_is_a_real_rassylka_command(name: str) -> None:
    process = _process(name)  # raises for an unknown command, option or option value
    assert process.command
    assert not SERVICES[name].get("entrypoint") or name == "smsc-sim", \
        f"{name}: only the simulator replaces the image's `rassylka` entry point"


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_variable_a_service_sets_is_one_the_code_reads(name: str) -> None:
    process = _processes()[name]
    for key in _environment(SERVICES[name]):
        if key in process.option_envvars:
            continue
        assert key in _read_by_the_code(), (
            f"{name}: {key} is read by no code in pipeline/ or connectors/"
            + (" (only as an option of other commands)" if _is_option_elsewhere(key) else ""))


def test_secrets_come_from_the_environment_and_compose_refuses_to_start_without_them() -> None:
    for name in OURS:
        for key, raw in _raw_environment(name).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", raw), \
                    f"{name}: {key} must be `${{{key}:?set {key}}}`, not {raw!r}"
        url = _raw_environment(name).get("CLICKHOUSE_URL")
        if url:
            assert urlsplit(_interpolate(url)).password == "<CLICKHOUSE_PASSWORD>", url
            assert "${CLICKHOUSE_PASSWORD:?" in url
    assert _raw_environment("clickhouse")["CLICKHOUSE_PASSWORD"].startswith(
        "${CLICKHOUSE_PASSWORD:?")
    assert _raw_environment("grafana")["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?")


def test_the_readme_deployment_section_names_every_required_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Deployment\n")
    assert start < readme.index("\n## Configuration and environment\n")
    section = readme[start:readme.index("\n## ", start + 1)]
    required = {m["name"] for m in REQUIRED.finditer(COMPOSE.read_text(encoding="utf-8"))}
    assert required and {v for v in required if v not in section} == set()
    assert "docker compose -f infra/docker-compose.yml" in section


@pytest.mark.parametrize("name", sorted(OURS))
def test_published_ports_and_health_checks_are_where_the_process_listens(name: str) -> None:
    service, process = SERVICES[name], _processes()[name]
    serves = _serves(process)
    for address, _host_port, container_port in _published(service):
        assert container_port in serves, f"{name}: publishes {container_port}, serves {serves}"
        assert address == "127.0.0.1", f"{name}: publish on 127.0.0.1 (a proxy goes in front)"
    if process.ports:
        assert process.host == "0.0.0.0", f"{name}: listens on {process.host}: other " \
                                          f"containers cannot reach it"
    assert _environment(service).get("RASSYLKA_METRICS_HOST", "0.0.0.0") == "0.0.0.0"
    if service.get("restart") == "no":  # a one-shot step
        assert not serves, name
        return
    test = " ".join(service["healthcheck"]["test"])
    match = HEALTH_URL.search(test)
    assert match, f"{name}: no health check URL in {test!r}"
    assert int(match["port"]) in serves and match["path"] in ("/healthz", "/health"), test


def test_every_worker_with_metrics_is_scraped_on_its_metrics_port() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    targets = [t for job in config["scrape_configs"] for group in job["static_configs"]
               for t in group["targets"]]
    scraped = set()
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":  # Prometheus itself
            continue
        assert host in _processes(), f"{target}: no such compose service"
        process = _processes()[host]
        if "metrics_port" in process.params:
            assert int(port) == process.metrics_port, f"{target}: metrics on {process.metrics_port}"
        else:
            source = METRICS_ON_OWN_PORT[process.command]
            assert '"/metrics"' in source.read_text(encoding="utf-8")
            assert int(port) in process.ports, target
        scraped.add(host)
    for name, process in _processes().items():
        if "metrics_port" in process.params:
            assert process.metrics_port > 0, f"{name}: set RASSYLKA_METRICS_PORT"
            assert name in scraped, f"{name}: not in {PROMETHEUS.relative_to(ROOT)}"
    assert {n for n, p in _processes().items() if p.command in METRICS_ON_OWN_PORT} <= scraped


def test_addresses_services_give_each_other_are_where_those_listen() -> None:
    env = _environment(SERVICES["router"])
    # Kafka: the containers' listener is the one KAFKA_BOOTSTRAP names; the host's is published.
    kafka = _environment(SERVICES["kafka"])
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for listener, address in advertised.items():
        assert listeners[listener].rsplit(":", 1)[1] == address.rsplit(":", 1)[1], listener
    host_ports = {host for _, host, _ in _published(SERVICES["kafka"])}
    assert env["KAFKA_BOOTSTRAP"] in advertised.values()
    for address in advertised.values():
        host, port = address.rsplit(":", 1)
        assert host == "kafka" or (host == "127.0.0.1" and int(port) in host_ports), address
    # ClickHouse: its HTTP port, its user and database.
    url = urlsplit(env["CLICKHOUSE_URL"])
    clickhouse = _environment(SERVICES["clickhouse"])
    assert (url.scheme, url.hostname, url.port) == ("http", "clickhouse", 8123)
    assert url.username == clickhouse["CLICKHOUSE_USER"]
    assert url.path.strip("/") == clickhouse["CLICKHOUSE_DB"]
    assert 8123 in {c for _, _, c in _published(SERVICES["clickhouse"])}
    assert "/var/lib/clickhouse" in _mounts(SERVICES["clickhouse"])
    # The registry: its container port and the Confluent-compatible path the code uses.
    url = urlsplit(env["SCHEMA_REGISTRY_URL"])
    assert url.hostname == "registry" and url.path == registry.COMPAT_PATH
    assert url.port in {c for _, _, c in _published(SERVICES["registry"])}
    for name in OURS:  # the same addresses everywhere
        own = _environment(SERVICES[name])
        for key in ("KAFKA_BOOTSTRAP", "CLICKHOUSE_URL", "SCHEMA_REGISTRY_URL"):
            assert own.get(key, env[key]) == env[key], (name, key)


def test_the_outbox_stage_reaches_connect_where_connect_listens() -> None:
    stage, connect = _environment(SERVICES["outbox"]), SERVICES["connect"]
    url = urlsplit(stage["CONNECT_URL"])
    # Connect shares the database's network namespace: pipeline.outbox.Database is 127.0.0.1.
    assert connect["network_mode"] == f"service:{url.hostname}"
    assert url.port == 8083 and 8083 in {c for _, _, c in _published(SERVICES[url.hostname])}
    database = _environment(SERVICES[url.hostname])
    assert stage["POSTGRES_PORT"] == "5432" and stage["POSTGRES_DB"] == database["POSTGRES_DB"]
    assert "--create-connector" in SERVICES["outbox"]["command"]


def test_the_sender_reaches_the_smsc_the_compose_file_names() -> None:
    env = _Reads(_environment(SERVICES["sender"]))
    _policy, limits = load_policy(CONFIG)
    settings = replace(Settings.from_env(dict(env)), config_dir=CONFIG)
    gateway, _rate = build_gateway(settings, limits, None, env)
    for route, routed in gateway.gateways.items():
        smsc = routed.route
        assert smsc.host in _processes(), f"route {route}: {smsc.host} is no compose service"
        assert smsc.port in _processes()[smsc.host].ports, f"route {route}: port {smsc.port}"
        assert smsc.password.startswith("<"), f"route {route}: password not from the env"
    sender_only = set(_environment(SERVICES["sender"])) - set(_environment(SERVICES["router"]))
    assert sender_only - {"RASSYLKA_METRICS_PORT"} <= env.names, "set for the sender, unread"


def test_workers_that_name_transactions_run_one_process_per_distinct_id() -> None:
    ids: dict[str, list[str]] = {}
    for name, process in _processes().items():
        if "worker_id" in process.params:
            ids.setdefault(process.command, []).append(process.params["worker_id"])
            deploy = SERVICES[name].get("deploy", {})
            assert int(deploy.get("replicas", 1)) == 1 and int(SERVICES[name].get("scale", 1)) == 1, \
                f"{name}: replicas would share transactional ids; add a service per --worker-id"
    for command, given in ids.items():
        assert len(given) == len(set(given)), f"{command}: worker ids {given}"


def test_dependencies_volumes_and_images() -> None:
    for name, service in SERVICES.items():
        profiles = set(service.get("profiles", []))
        depends = service.get("depends_on", {})
        for dependency in depends:
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            theirs = set(SERVICES[dependency].get("profiles", []))
            assert not theirs or theirs & profiles, f"{name} needs {dependency} of {theirs}"
            if isinstance(depends, dict) and depends[dependency].get("condition") == \
                    "service_completed_successfully":
                assert SERVICES[dependency].get("restart") == "no", dependency
        shared = service.get("network_mode", "")
        if shared.startswith("service:"):
            assert shared.split(":", 1)[1] in SERVICES, name
        for target, source in _mounts(service).items():
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name}: {source} -> {target} is missing"
            else:
                assert source in RAW["volumes"], f"{name}: volume {source} is not declared"
        image = service.get("image", "")
        assert _registry_host(image) is None, \
            f"{name}: {image}: name images by their Docker Hub name, without a registry host"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert (INFRA / provisioning).resolve() == GRAFANA / "provisioning"
    files = sorted((GRAFANA / "provisioning").rglob("*.yml"))
    loaded = {path.parent.name: yaml.safe_load(path.read_text(encoding="utf-8")) for path in files}
    assert set(loaded) == {"datasources", "dashboards"}
    [source] = loaded["datasources"]["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert url.hostname == "prometheus"
    assert url.port in {c for _, _, c in _published(SERVICES["prometheus"])}
    [provider] = loaded["dashboards"]["providers"]
    folder = provider["options"]["path"]
    boards = {t: s for t, s in mounts.items() if t.startswith(folder.rstrip("/") + "/")}
    assert boards, f"nothing is mounted into {folder}"
    for target, source in boards.items():
        assert (INFRA / source).resolve() == GRAFANA / "rassylka.json", target
        json.loads((INFRA / source).read_text(encoding="utf-8"))
    prometheus = SERVICES["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"]
                       if a.startswith("--config.file="))
    assert (INFRA / _mounts(prometheus)[config_file]).resolve() == PROMETHEUS


# ------------------------------------------------------------------ the Dockerfile
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def test_the_image_installs_the_tree_and_runs_rassylka_as_a_user() -> None:
    stages = _stages()
    for stage in stages:
        image = stage[0][1].split()[0]
        assert _registry_host(image) is None, f"FROM {image}: use its Docker Hub name"
    final = stages[-1]
    assert [json.loads(a) for i, a in final if i == "ENTRYPOINT"] == [["rassylka"]]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # Some stage copies what `pip install` and the code need into its WORKDIR, installs it
    # in place (the code finds schemas/ and infra/clickhouse/ next to pipeline/) ...
    installs = []
    for stage in stages:
        workdir = next((a for i, a in reversed(stage) if i == "WORKDIR"), "/")
        copied = [shlex.split(a)[:-1] for i, a in stage if i == "COPY" and "--from" not in a]
        sources = {s.rstrip("/") for group in copied for s in group}
        if any(i == "RUN" and re.search(r"pip install (-e |--editable )\.", a) for i, a in stage):
            missing = [p for p in IMAGE_NEEDS
                       if not ({".", p} | {str(q) for q in Path(p).parents}) & sources]
            assert missing == [], f"not copied into the image: {missing}"
            installs.append(workdir)
    assert installs, "no stage runs `pip install -e .`"
    # ... and the image that runs has that tree at the same path.
    if len(stages) > 1:
        assert any(i == "COPY" and "--from=" in a and shlex.split(a)[-1].rstrip("/") == installs[0]
                   for i, a in final), f"the runtime stage does not copy {installs[0]}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["readme"] in IMAGE_NEEDS
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= set(IMAGE_NEEDS)
    assert pyproject["project"]["scripts"]["rassylka"] == "pipeline.cli:main"


def test_the_image_environment_is_read_by_the_code() -> None:
    for instruction, arguments in _instructions():
        if instruction != "ENV":
            continue
        for name in re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", arguments):
            if name.startswith(("PYTHON", "PIP_")) or name == "PATH":
                continue
            assert name in _read_by_the_code(), f"Dockerfile sets {name}, which nothing reads"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out: the last pattern matching it or a parent wins."""
    candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        forms = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, form) for c in candidates for form in forms):
            verdict = not negated
    return verdict


def test_dockerignore_keeps_nothing_out_that_the_image_needs() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    needed = []
    for item in IMAGE_NEEDS:
        path = ROOT / item
        files = [path] if path.is_file() else [
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        needed += [str(p.relative_to(ROOT)) for p in files]
    assert needed
    assert [p for p in needed if _ignored(p, patterns)] == []
    for private in (".venv/bin/python", ".run/clickhouse/x", ".git/config", "x-attribution-data/a"):
        assert _ignored(private, patterns), private
