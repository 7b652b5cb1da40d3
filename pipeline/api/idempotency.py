"""First answers per `Idempotency-Key`: a retried request publishes nothing new.

Where the state lives: the topic `api.answers` (compacted, and deleted after the TTL;
key = `<client>|<Idempotency-Key>`, value = JSON with a fingerprint of the request and
the answer). Each API process reads it to the end before it serves, then tails it, so the
first answer survives a restart and is found by every process of the deployment.

Order of writes for one request with a key: its records, acknowledged; then its answer,
acknowledged; then the 202. A request whose key this process is already serving waits
for that one's answer instead of publishing (`Flights`).

Limits (README, "HTTP API"): two processes that receive the same key at the same moment,
before either has stored its answer, both publish; and a process that dies between the
records and the answer leaves nothing for the retry to find. In both cases the retry
publishes the same event ids again (ids the API makes are derived from the key, see
`bodies.EventIds`), and the pipeline deduplicates business events by event id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass

from pipeline.api.table import TopicTable, ensure_topic
from pipeline.settings import Settings

ANSWERS_TOPIC = "api.answers"
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class Answer:
    """The first answer to a request: its status and JSON body, and what it answered."""

    fingerprint: str
    status: int
    body: str
    at_ms: int

    def to_json(self) -> bytes:
        return json.dumps({"fingerprint": self.fingerprint, "status": self.status,
                           "body": self.body, "at_ms": self.at_ms}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Answer:
        raw = json.loads(data)
        return cls(raw["fingerprint"], int(raw["status"]), raw["body"], int(raw["at_ms"]))


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests the same request."""
    return hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an Idempotency-Key, or None."""
    if not key or len(key) > MAX_KEY_CHARS:
        return f"the Idempotency-Key header must be 1-{MAX_KEY_CHARS} characters"
    if not key.isprintable() or not key.isascii():
        return "the Idempotency-Key header must be printable ASCII"
    return None


def answers_topic(settings: Settings) -> str:
    return settings.topic(ANSWERS_TOPIC)


def ensure_answers_topic(settings: Settings, ttl_s: float) -> None:
    ensure_topic(settings.kafka_bootstrap, answers_topic(settings), settings.partitions, {
        "cleanup.policy": "compact,delete", "retention.ms": str(int(ttl_s * 1000)),
        "min.cleanable.dirty.ratio": "0.1", "segment.ms": str(min(int(ttl_s * 1000), 3_600_000)),
    })


class Answers:
    """The first answers of every API process, by `<client>|<key>`, younger than the TTL."""

    def __init__(self, settings: Settings, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.topic = answers_topic(settings)
        self.table: TopicTable[Answer] = TopicTable(settings.kafka_bootstrap, self.topic,
                                                    Answer.from_json)
        self.flights = Flights()

    def start(self) -> int:
        return self.table.start()

    def stop(self) -> None:
        self.table.stop()

    def get(self, client: str, key: str) -> Answer | None:
        found = self.table.get(f"{client}|{key}")
        if found is not None and found.at_ms < (time.time() - self.ttl_s) * 1000:
            return None
        return found

    def remember(self, client: str, key: str, answer: Answer) -> None:
        self.table.put(f"{client}|{key}", answer)

    def expire(self) -> int:
        """Forget answers older than the TTL (the topic deletes them too); returns how many."""
        oldest = (time.time() - self.ttl_s) * 1000
        return self.table.drop(lambda a: a.at_ms >= oldest)


class Flights:
    """Requests this process is serving now, by `<client>|<key>`: a second request with
    the same key waits for the first's answer instead of publishing again."""

    def __init__(self) -> None:
        self._now: dict[str, asyncio.Future[None]] = {}

    def begin(self, client: str, key: str) -> asyncio.Future[None] | None:
        """None when the caller may go on (and must `end`), else a future to wait on."""
        name = f"{client}|{key}"
        if name in self._now:
            return self._now[name]
        self._now[name] = asyncio.get_running_loop().create_future()
        return None

    def end(self, client: str, key: str) -> None:
        future = self._now.pop(f"{client}|{key}", None)
        if future is not None and not future.done():
            future.set_result(None)
