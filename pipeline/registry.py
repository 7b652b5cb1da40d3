"""The Schema Registry: writer schemas of Confluent-framed records, and the project's subjects.

Publishers that use a stock Confluent Avro serializer frame each record as magic byte 0,
the 4-byte big-endian id of the writer's schema in a Schema Registry, then the Avro body.
`pipeline.avro` decodes such records next to single-object encoded ones: it asks this
module for the writer's schema by id (`RegistryClient.schema`) and keeps the answer in a
bounded in-process cache, so steady state makes no HTTP call per record, and resolves it to the
project's current contract. The registry speaks the Confluent REST API; locally it is the
Apicurio Registry `infra/registry/registry.sh` starts (its API is under /apis/ccompat/v7).

Which registry: `SCHEMA_REGISTRY_URL` (a Confluent-compatible base URL) when set, else the
project's own on http://127.0.0.1:`SCHEMA_REGISTRY_PORT` (default 18081)/apis/ccompat/v7.

`register_contracts` registers every `schemas/*.avsc` contract under the subject
`<topic>-value` of each catalog topic that carries it (TopicNameStrategy, what Confluent
serializers use by default); `rassylka schemas register` runs it. The registry's
compatibility rule decides what a new version may change; a refusal is a `SchemaRejected`
naming the file, the subject and the registry's reason.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import typer
from confluent_kafka import KafkaError, KafkaException

from pipeline.errors import ConfigError, RetryableError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 18081
COMPAT_PATH = "/apis/ccompat/v7"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
TIMEOUT_S = 5.0
"""Longest one registry call waits; a registry slower than that counts as down."""
COMPATIBILITY_LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
                        "FULL", "FULL_TRANSITIVE", "NONE")


class RegistryUnavailable(RetryableError, KafkaException):
    """The Schema Registry did not answer (down, unreachable, timed out, or a 5xx).

    Retryable: a record whose writer schema cannot be fetched now is read again later,
    never dead-lettered. It is also a `KafkaException` carrying a retriable `KafkaError`,
    so the transactional stages, which abort and re-read their batch on a KafkaException,
    treat a registry outage like a broker hiccup without knowing about registries.
    """

    reason = "schema_registry_unavailable"

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        self.text = (f"Schema Registry is not reachable at {url} ({detail}) — start it with "
                     f"`make registry-up` or set SCHEMA_REGISTRY_URL")
        super().__init__(KafkaError(KafkaError._TRANSPORT, self.text, retriable=True))

    def __str__(self) -> str:
        return self.text


class SchemaRejected(ConfigError):
    """The registry refused a schema version (its compatibility rule, or an invalid schema)."""

    reason = "schema_rejected"


def registry_url(environ: Mapping[str, str] | None = None) -> str:
    """The registry's Confluent-compatible base URL: SCHEMA_REGISTRY_URL, else the local one
    on 127.0.0.1:SCHEMA_REGISTRY_PORT (default 18081). ConfigError for a bad port."""
    env = os.environ if environ is None else environ
    url = (env.get("SCHEMA_REGISTRY_URL") or "").strip()
    if url:
        return url.rstrip("/")
    raw = (env.get("SCHEMA_REGISTRY_PORT") or "").strip()
    if raw and (not raw.isdigit() or not 0 < int(raw) < 65536):
        raise ConfigError([f"SCHEMA_REGISTRY_PORT={raw!r} is not a TCP port number (1-65535)"])
    return f"http://127.0.0.1:{int(raw) if raw else DEFAULT_PORT}{COMPAT_PATH}"


class RegistryClient:
    """A small client of the Confluent Schema Registry REST API (standard library only).

    Raises RegistryUnavailable when the registry does not answer or answers 5xx; other
    answers are returned or turned into the caller's errors.
    """

    def __init__(self, url: str, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.fetches = 0  # lookups by id: `avro.SchemaRegistry` caches, so steady state adds none

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": CONTENT_TYPE, "Accept": f"{CONTENT_TYPE}, application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            doc = _json(exc.read())
            if exc.code >= 500:
                raise RegistryUnavailable(self.url, f"HTTP {exc.code}: {_message(doc)}") from exc
            return exc.code, doc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            detail = getattr(exc, "reason", None) or exc
            raise RegistryUnavailable(self.url, f"{detail}") from exc

    def schema(self, schema_id: int) -> str | None:
        """The Avro schema registered under `schema_id` (JSON text); None when there is none
        (or it is not Avro). Asks the registry every time: callers cache (ids never change)."""
        status, doc = self._call("GET", f"/schemas/ids/{schema_id}")
        self.fetches += 1
        if status == 404:
            return None
        if status != 200 or not isinstance(doc, dict) or "schema" not in doc:
            raise RegistryUnavailable(self.url, f"unexpected answer to schema id {schema_id}: "
                                                f"HTTP {status} {_message(doc)}")
        if doc.get("schemaType", "AVRO") != "AVRO":
            return None
        return str(doc["schema"])

    def register(self, subject: str, schema: Mapping[str, Any], source: str = "") -> int:
        """Register `schema` as the next version of `subject` (idempotent); returns its id.

        SchemaRejected when the registry refuses it, with the registry's reason."""
        status, doc = self._call("POST", f"/subjects/{_quote(subject)}/versions",
                                 {"schema": json.dumps(schema, separators=(",", ":"))})
        if status == 200 and isinstance(doc, dict) and "id" in doc:
            return int(doc["id"])
        what = f"{source} as subject {subject}" if source else f"subject {subject}"
        if status == 409:
            level = self.compatibility(subject)
            raise SchemaRejected(
                [f"{what}: not {level} compatible with the version the registry at {self.url} "
                 f"holds: {_message(doc)}"],
                hint="new fields need a default; keep the types and names of existing fields "
                     "(see README, Schema Registry)")
        raise SchemaRejected([f"{what}: the registry at {self.url} refused it "
                              f"(HTTP {status}): {_message(doc)}"])

    def compatibility(self, subject: str | None = None) -> str:
        """The compatibility level for `subject` (its own, else the global one)."""
        path = "/config" if subject is None else f"/config/{_quote(subject)}?defaultToGlobal=true"
        status, doc = self._call("GET", path)
        if status == 200 and isinstance(doc, dict):
            return str(doc.get("compatibilityLevel") or doc.get("compatibility") or "?")
        if subject is not None:
            return self.compatibility(None)
        return "?"

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set the compatibility level globally or for one subject."""
        if level not in COMPATIBILITY_LEVELS:
            raise ValueError(f"unknown compatibility level {level!r}")
        path = "/config" if subject is None else f"/config/{_quote(subject)}"
        status, doc = self._call("PUT", path, {"compatibility": level})
        if status != 200:
            raise SchemaRejected([f"the registry at {self.url} refused compatibility {level} "
                                  f"for {subject or 'the whole registry'}: {_message(doc)}"])

    def versions(self, subject: str) -> list[int]:
        """The versions registered under `subject` ([] when it has none)."""
        status, doc = self._call("GET", f"/subjects/{_quote(subject)}/versions")
        return [int(v) for v in doc] if status == 200 and isinstance(doc, list) else []


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return {"message": payload.decode("utf-8", errors="replace")[:300]}


def _message(doc: Any) -> str:
    if isinstance(doc, dict):
        return " ".join(str(doc.get("message") or doc).split())
    return str(doc)


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


_clients: dict[str, RegistryClient] = {}
_clients_lock = threading.Lock()


def client(url: str | None = None) -> RegistryClient:
    """The process-wide client for `url` (default: `registry_url()`), with its cache."""
    url = (url or registry_url()).rstrip("/")
    with _clients_lock:
        if url not in _clients:
            _clients[url] = RegistryClient(url)
        return _clients[url]


def subjects(settings: Settings) -> dict[str, str]:
    """Subject -> contract name for every catalog topic whose values are an Avro contract."""
    from pipeline import avro, topics

    contracts = avro.registry().current
    return {f"{settings.topic(spec.name)}-value": spec.schema
            for spec in topics.CATALOG if spec.schema in contracts}


def register_contracts(settings: Settings, registry: RegistryClient | None = None) -> dict[str, int]:
    """Register the current version of every contract under each of its topics' subjects.

    Called by `rassylka schemas register` (idempotent: a version the subject already holds
    keeps its id). Returns subject -> schema id. Raises SchemaRejected (the registry's
    compatibility rule refused a version) or RegistryUnavailable.
    """
    from pipeline import avro

    registry = registry or client()
    contracts = avro.registry()
    ids: dict[str, int] = {}
    for subject, name in subjects(settings).items():
        contract = contracts.contract(name)
        ids[subject] = registry.register(subject, contract.schema, f"schemas/{name}.avsc")
        log.info("registered schemas/%s.avsc as %s (id %d)", name, subject, ids[subject])
    return ids


schemas_cli = typer.Typer(help="Avro contracts in the Schema Registry.", no_args_is_help=True)


@schemas_cli.callback()
def _schemas() -> None:
    """Avro contracts in the Schema Registry (SCHEMA_REGISTRY_URL, else the local one)."""


@schemas_cli.command("register")
def register_command() -> None:
    """Register every schemas/*.avsc under `<topic>-value` for each topic carrying it."""
    registry = client()
    ids = register_contracts(Settings.from_env(), registry)
    for subject, schema_id in sorted(ids.items()):
        typer.echo(f"{subject}: id {schema_id}")
    typer.echo(f"[rassylka] {len(ids)} subjects registered at {registry.url} "
               f"(compatibility {registry.compatibility()})", err=True)


if __name__ == "__main__":  # python -m pipeline.registry register
    from pipeline.errors import RassylkaError, summary

    try:
        schemas_cli()
    except RassylkaError as exc:
        raise SystemExit("error: " + "\n       ".join(summary(exc))) from None
