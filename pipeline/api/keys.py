"""API keys: one or more per client, each with scopes, hashed at rest.

A key reads `rsk_<key id>_<secret>`: the key id (12 hex digits) is public and finds the
stored entry; the secret (256 random bits) is never stored, only SHA-256(salt + secret).
A fast hash is enough for secrets of this entropy (a slow one such as scrypt protects
guessable passwords, and would cost every request milliseconds).

Entries live on the compacted topic `api.keys` (one partition; key = key id, value = JSON
without the secret; a tombstone revokes), so every API process sees the same keys, new
ones within a second, and none is lost on restart. `rassylka api-keys create` prints a
key once; nobody can show it again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

import typer

from pipeline.api.table import TopicTable, ensure_topic
from pipeline.errors import ConfigError
from pipeline.settings import Settings

KEYS_TOPIC = "api.keys"
SCOPES = ("events", "profiles", "consents")
PREFIX = "rsk"
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")
_CLIENT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    """A stored key entry: who it is for, what it may do, and the hash of its secret."""

    key_id: str
    client: str
    scopes: tuple[str, ...]
    salt: str
    sha256: str
    created_at_ms: int

    def matches(self, secret: str) -> bool:
        digest = hashlib.sha256(bytes.fromhex(self.salt) + secret.encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ApiKey:
        raw = json.loads(data)
        return cls(raw["key_id"], raw["client"], tuple(raw["scopes"]), raw["salt"],
                   raw["sha256"], int(raw["created_at_ms"]))


def new_key(client: str, scopes: list[str], now_ms: int | None = None) -> tuple[ApiKey, str]:
    """A new entry and its key text (shown once). ConfigError for a bad client or scope."""
    problems = []
    if not _CLIENT.match(client):
        problems.append(f"client {client!r}: 1-64 characters of a-z, 0-9, '_', '.', '-'")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        problems.append(f"scopes {','.join(scopes) or '(none)'}: choose from {', '.join(SCOPES)}")
    if problems:
        raise ConfigError(problems)
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    entry = ApiKey(key_id, client, tuple(dict.fromkeys(scopes)), salt.hex(),
                   hashlib.sha256(salt + secret.encode()).hexdigest(),
                   now_ms if now_ms is not None else int(time.time() * 1000))
    return entry, f"{PREFIX}_{key_id}_{secret}"


def split_key(text: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key text, else None."""
    found = _KEY.match(text)
    return (found.group(1), found.group(2)) if found else None


class KeyRing:
    """The keys every request is checked against: the `api.keys` topic, in memory."""

    def __init__(self, settings: Settings) -> None:
        self.table: TopicTable[ApiKey] = TopicTable(settings.kafka_bootstrap,
                                                    keys_topic(settings), ApiKey.from_json)

    def start(self) -> int:
        return self.table.start()

    def stop(self) -> None:
        self.table.stop()

    def authenticate(self, text: str) -> ApiKey | None:
        """The entry of key `text` when it is a live key, else None (never says why)."""
        parts = split_key(text)
        if parts is None:
            return None
        entry = self.table.get(parts[0])
        return entry if entry is not None and entry.matches(parts[1]) else None


def keys_topic(settings: Settings) -> str:
    return settings.topic(KEYS_TOPIC)


def ensure_keys_topic(settings: Settings) -> None:
    ensure_topic(settings.kafka_bootstrap, keys_topic(settings), 1,
                 {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"})


def store_key(settings: Settings, key_id: str, value: bytes | None) -> None:
    """Write (or, with None, revoke) a key entry; returns once the broker stored it."""
    from pipeline import kafka_io

    ensure_keys_topic(settings)
    kafka_io.publish(settings, KEYS_TOPIC, [(key_id, value)])


def create_key(settings: Settings, client: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Create and store a key for `client`; returns its entry and its text (shown once)."""
    entry, text = new_key(client, scopes)
    store_key(settings, entry.key_id, entry.to_json())
    return entry, text


def read_keys(settings: Settings) -> dict[str, ApiKey]:
    ensure_keys_topic(settings)
    table: TopicTable[ApiKey] = TopicTable(settings.kafka_bootstrap, keys_topic(settings),
                                           ApiKey.from_json)
    table.start()
    table.stop()
    return table.rows()


# ----------------------------------------------------------------------- CLI
api_keys_cli = typer.Typer(help="API keys of the HTTP events API (hashed at rest on the "
                                "compacted topic api.keys).", no_args_is_help=True)


def _settings() -> Settings:
    from pipeline.cli import wait_for_kafka

    settings = Settings.from_env()
    wait_for_kafka(settings)
    return settings


@api_keys_cli.command("create")
def create_command(
    client: str = typer.Option(..., "--client", help="Client name: a-z, 0-9, '_', '.', '-'."),
    scopes: str = typer.Option(",".join(SCOPES), "--scopes",
                               help=f"Comma-separated: {', '.join(SCOPES)}."),
) -> None:
    """Create a key and print it once (only its hash is kept: store it now)."""
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    entry, text = new_key(client, wanted)  # ConfigError before touching Kafka
    settings = _settings()
    store_key(settings, entry.key_id, entry.to_json())
    typer.echo(text)
    typer.echo(f"key {entry.key_id} for client {entry.client}, scopes {','.join(entry.scopes)}: "
               f"shown once, only its hash is kept", err=True)


@api_keys_cli.command("list")
def list_command() -> None:
    """List the live keys: id, client, scopes, creation time (never the keys)."""
    settings = _settings()
    rows = sorted(read_keys(settings).values(), key=lambda k: (k.client, k.created_at_ms))
    if not rows:
        typer.echo(f"no API keys on {keys_topic(settings)}")
    for k in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created_at_ms / 1000))
        typer.echo(f"{k.key_id}  {k.client}  {','.join(k.scopes)}  created {when}Z")


@api_keys_cli.command("revoke")
def revoke_command(key_id: str = typer.Argument(..., help="The key id (12 hex digits).")) -> None:
    """Revoke a key: every API process refuses it within about a second."""
    settings = _settings()
    if key_id not in read_keys(settings):
        raise ConfigError([f"no live key {key_id!r} on {keys_topic(settings)}"],
                          hint="see the keys with `rassylka api-keys list`")
    store_key(settings, key_id, None)
    typer.echo(f"revoked {key_id}")
