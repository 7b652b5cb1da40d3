"""Batched, idempotent writes of fact rows to ClickHouse.

The sink loop (wired to a Kafka consumer elsewhere) calls `SinkBuffer.add` for every
record it maps one by one (`add_rows` and `cover` for a run mapped in bulk), `due()` after
every poll, and when due: `drain()`, `write_with_retry(...)`, then commits the batch's
offsets. A failed write raises before the commit, so the records are read again and the
retried batch carries the same dedup token.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from connectors.clickhouse import DEFAULT_DATABASE, ArrowRows, Client
from pipeline.errors import RetryableError

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
Rows = list[Row] | ArrowRows
TopicPartition = tuple[str, int]
_TOKEN_VERSION = "rassylka-sink-v1"


class BatchWriter:
    """Inserts row tuples into one table; the same token twice stores the rows once."""

    def __init__(
        self, client: Client, table: str, columns: Sequence[str], database: str = DEFAULT_DATABASE
    ) -> None:
        self.client = client
        self.table = table
        self.columns = tuple(columns)
        self.database = database

    def __repr__(self) -> str:
        return f"BatchWriter({self.database}.{self.table})"

    def insert(self, rows: Sequence[Row] | ArrowRows, token: str) -> int:
        """Write `rows` under dedup `token`; returns rows sent (0 for an empty batch).

        Raises `RetryableError` when ClickHouse is unreachable or busy (retry with the same
        token), `PermanentError` when the rows or table are wrong.
        """
        if not token:
            raise ValueError("an insert needs a dedup token")
        if not rows:
            return 0
        self.client.insert(self.table, rows, self.columns, database=self.database, token=token)
        return len(rows)


class Offset(NamedTuple):
    """Where a consumed record came from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Batch:
    """What one flush writes and then commits.

    `rows` maps table → row tuples (`ArrowRows` when some were mapped in bulk); `token` is
    the dedup token for every table's insert (dedup is per table, so one token serves all);
    `offsets` maps (topic, partition) → the next offset to commit (last consumed + 1).
    """

    rows: dict[str, Rows]
    token: str
    offsets: dict[TopicPartition, int]

    @property
    def empty(self) -> bool:
        return not self.offsets

    @property
    def row_count(self) -> int:
        return sum(len(r) for r in self.rows.values())


@dataclass
class _Range:
    first: int
    last: int


@dataclass
class SinkBuffer:
    """Collects rows until `max_rows` rows or `max_age_s` seconds since the first one.

    Pure: no I/O; time comes from `clock` (or the `now` passed to `due`).
    """

    max_rows: int = 10_000
    max_age_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _rows: dict[str, Rows] = field(default_factory=dict, init=False)
    _ranges: dict[TopicPartition, _Range] = field(default_factory=dict, init=False)
    _count: int = field(default=0, init=False)
    _started_at: float | None = field(default=None, init=False)

    def __len__(self) -> int:
        return self._count

    def add(self, table: str, row: Row, source: Offset) -> None:
        """Buffer `row` for `table`, consumed from `source`."""
        self._rows.setdefault(table, []).append(row)
        self._count += 1
        self.skip(source)

    def add_rows(self, table: str, rows: ArrowRows) -> None:
        """Buffer rows mapped in bulk for `table`, after those held; `cover` their offsets."""
        held = self._rows.get(table)
        if held is None:
            self._rows[table] = rows
        elif isinstance(held, ArrowRows):
            held.extend(rows)
        else:
            self._rows[table] = ArrowRows(rows.schema, [held, rows])
        self._count += len(rows)

    def skip(self, source: Offset) -> None:
        """Mark a record consumed that yields no row (dead-lettered, filtered): its offset
        still advances with the batch."""
        self.cover(source.topic, source.partition, source.offset, source.offset)

    def cover(self, topic: str, partition: int, first: int, last: int) -> None:
        """Mark the records `first`..`last` of a partition consumed (their rows, if any,
        added): their offsets advance with the batch."""
        if self._started_at is None:
            self._started_at = self.clock()
        tp = (topic, partition)
        seen = self._ranges.get(tp)
        if seen is None:
            self._ranges[tp] = _Range(first, last)
        else:
            seen.first = min(seen.first, first)
            seen.last = max(seen.last, last)

    def due(self, now: float | None = None) -> bool:
        """True when the buffer should be flushed: full, or its oldest record is too old."""
        if self._started_at is None:
            return False
        if self._count >= self.max_rows:
            return True
        now = self.clock() if now is None else now
        return now - self._started_at >= self.max_age_s

    def drain(self) -> Batch:
        """Hand over everything buffered as a `Batch` and start empty."""
        batch = Batch(
            rows=self._rows,
            token=batch_token({tp: (r.first, r.last) for tp, r in self._ranges.items()})
            if self._ranges
            else "",
            offsets={tp: r.last + 1 for tp, r in self._ranges.items()},
        )
        self._rows = {}
        self._ranges = {}
        self._count = 0
        self._started_at = None
        return batch


def batch_token(ranges: Mapping[TopicPartition, tuple[int, int]]) -> str:
    """Dedup token of a batch: a hash of the (topic, partition, first, last) it covers.

    The same consumed range gives the same token in any process, so a batch re-read after
    a crash between insert and commit is dropped by ClickHouse as a repeat.
    """
    parts = [_TOKEN_VERSION] + [
        f"{topic}:{partition}:{first}-{last}"
        for (topic, partition), (first, last) in sorted(ranges.items())
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def write_with_retry(
    writers: Mapping[str, BatchWriter],
    batch: Batch,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_wait: float = 60.0,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
) -> dict[TopicPartition, int]:
    """Write every table of `batch` through `writers` (table → writer); returns the offsets
    to commit.

    A `RetryableError` is retried with exponential backoff (first_delay, doubling, capped
    at max_delay) until `max_wait` seconds of sleeping are spent, then re-raised: the
    caller must not commit, and reads the records again later. Tables already written are
    not written again; re-writing one would be harmless anyway (same token). A
    `PermanentError` is raised at once.
    """
    missing = set(batch.rows) - set(writers)
    if missing:
        raise ValueError(f"no writer for tables {sorted(missing)}")
    pending = [table for table, rows in batch.rows.items() if rows]
    waited = 0.0
    delay = first_delay
    while pending:
        table = pending[0]
        try:
            writers[table].insert(batch.rows[table], batch.token)
        except RetryableError as exc:
            if waited + delay > max_wait:
                log.error("giving up on %s after %.1fs of retries: %s", table, waited, exc)
                raise
            log.warning("insert into %s failed (%s); retrying in %.2fs", table, exc, delay)
            sleep(delay)
            waited += delay
            delay = min(delay * 2, max_delay)
            continue
        pending.pop(0)
    return dict(batch.offsets)
