"""ClickHouse through clickhouse-connect: embedded chDB by default, a server over HTTP(S).

`connect(url)` is called once per process by whatever writes or reads analytics (the sink,
the report CLI, tests) and returns the process-wide `Client` for that URL:

- `chdb:///abs/path` — the embedded chDB engine keeping its data under `/abs/path`
  (created if missing). clickhouse-connect drives it itself:
  `clickhouse_connect.get_client(dsn="chdb:///abs/path")` returns its `ChdbClient`.
  chDB hosts one engine per process and refuses a second path, so the client is shared
  and calls on it are serialised by a lock.
- `http(s)://user:password@host:port/database` — a ClickHouse server (CLICKHOUSE_URL).

Every driver failure comes out as the project's taxonomy: `RetryableError` when the server
is unreachable or busy (back off, keep the offsets), `PermanentError` for bad SQL, unknown
tables or rows that cannot be serialised (retrying gives the same failure), and
`ClickHouseLocked` when another process holds the chDB folder (chDB itself only says
"Error initializing EmbeddedServer").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver import exceptions as ch_errors
from clickhouse_connect.driver.client import Client as DriverClient

from pipeline.errors import PermanentError, RetryableError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "infra" / "clickhouse"
DEFAULT_DATABASE = "rassylka"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

T = TypeVar("T")

# Server error codes that describe a passing condition rather than a wrong request.
RETRYABLE_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        160,  # TOO_SLOW
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        473,  # DEADLOCK_AVOIDED
        999,  # KEEPER_EXCEPTION
    }
)


class ClickHouseUnavailable(RetryableError):
    """The server cannot be reached or is overloaded right now."""

    reason = "clickhouse_unavailable"


class ClickHouseRejected(PermanentError):
    """ClickHouse refused the statement or the data; the same call fails the same way."""

    reason = "clickhouse_rejected"


class ClickHouseLocked(PermanentError):
    """The embedded engine's data folder is held by another process (one per folder)."""

    reason = "clickhouse_locked"

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"another process (pid {pid}; the sink?)" if pid else "another process (the sink?)"
        super().__init__(
            f"ClickHouse data folder {_shown(path)} is in use by {holder} — stop it, or query "
            f"through a ClickHouse server: set CLICKHOUSE_URL"
        )


class ArrowRows:
    """Rows of one table held as pyarrow columns; `Client.insert` sends them in Arrow format.

    The analytics sink builds them column by column: ClickHouse parses Arrow in C++, where
    the driver's Native encoding walks every value in Python. Row tuples may be appended
    too; they are converted to `schema` inside the insert, so a value that does not fit
    fails there, like any row the driver cannot serialise. Iterated, they are row tuples
    as the row functions build them (timestamp columns as epoch milliseconds).
    """

    def __init__(self, schema: pa.Schema,
                 parts: Iterable[ArrowRows | pa.Table | list[Any]] = ()) -> None:
        self.schema = schema
        self._parts: list[pa.Table | list[Any]] = []
        for part in parts:
            self.extend(part)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    def __len__(self) -> int:
        return sum(p.num_rows if isinstance(p, pa.Table) else len(p) for p in self._parts)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for part in self._parts:
            if isinstance(part, pa.Table):
                yield from zip(*(_python_values(column) for column in part.columns), strict=True)
            else:
                yield from part

    def append(self, row: Sequence[Any]) -> None:
        """Add one row tuple (in `columns` order)."""
        if not self._parts or isinstance(self._parts[-1], pa.Table):
            self._parts.append([])
        self._parts[-1].append(row)  # type: ignore[union-attr]

    def extend(self, rows: ArrowRows | pa.Table | Iterable[Sequence[Any]]) -> None:
        """Add rows after those held: another `ArrowRows`, a Table of `schema`, or tuples."""
        if isinstance(rows, ArrowRows):
            for part in rows._parts:
                self.extend(part)
        elif isinstance(rows, pa.Table):
            if not rows.schema.equals(self.schema):
                raise ValueError(f"columns {rows.schema} are not {self.schema}")
            self._parts.append(rows)
        else:
            for row in rows:
                self.append(row)

    def to_arrow(self) -> pa.Table:
        """Every row as one Table of `schema`; ValueError for a value that does not fit."""
        tables = [part if isinstance(part, pa.Table) else self._table(part) for part in self._parts]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _table(self, rows: list[Sequence[Any]]) -> pa.Table:
        columns = list(zip(*rows, strict=True))
        if len(columns) != len(self.schema):
            raise ValueError(f"rows have {len(columns)} values, {len(self.schema)} columns")
        return pa.table([pa.array(list(values), type=field.type)
                         for values, field in zip(columns, self.schema, strict=True)],
                        schema=self.schema)


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return column.to_pylist()


class Client:
    """The small surface the pipeline needs: commands, queries, idempotent inserts.

    Thread-safe. Obtained from `connect`; `driver` is the clickhouse-connect client
    underneath for anything this surface does not cover.
    """

    def __init__(self, driver: DriverClient, url: str, embedded: bool) -> None:
        self.driver = driver
        self.url = url
        self.embedded = embedded
        # chDB: one engine handle per process; HTTP clients without a session are
        # safe to share between threads, so only the embedded engine is serialised.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if embedded else contextlib.nullcontext()
        )

    def __repr__(self) -> str:
        return f"Client({redact(self.url)})"

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a statement (DDL, ALTER, SET, a one-value SELECT); returns its value."""
        return self._call(lambda: self.driver.command(sql, parameters=parameters))

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT; one dict per row, keyed by column name."""

        def run() -> list[dict[str, Any]]:
            result = self.driver.query(sql, parameters=parameters)
            names = result.column_names
            return [dict(zip(names, row, strict=True)) for row in result.result_rows]

        return self._call(run)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT; plain row tuples in column order."""
        return self._call(
            lambda: [tuple(r) for r in self.driver.query(sql, parameters=parameters).result_rows]
        )

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]] | ArrowRows,
        columns: Sequence[str],
        *,
        database: str | None = None,
        token: str | None = None,
    ) -> int:
        """Insert row tuples (in `columns` order) or `ArrowRows`; returns rows written.

        With `token`, ClickHouse stores the block once however often the same token is
        inserted (the table needs `non_replicated_deduplication_window` > 0 on MergeTree).
        """
        if not rows:
            return 0
        settings = {"insert_deduplication_token": token} if token else None

        def run() -> int:
            if isinstance(rows, ArrowRows):
                if rows.columns != tuple(columns):
                    raise ValueError(f"rows have columns {rows.columns}, {table} takes {columns}")
                summary = self.driver.insert_arrow(table, rows.to_arrow(), database=database,
                                                   settings=settings)
                return int(summary.written_rows)
            # Column-oriented data skips the driver's own row → column pivot: about twice
            # as fast for wide rows (bench/clickhouse_insert.py).
            data = [list(column) for column in zip(*rows, strict=True)]
            if len(data) != len(columns):
                raise ValueError(f"rows have {len(data)} values, {table} takes {len(columns)}")
            summary = self.driver.insert(
                table,
                data,
                column_names=list(columns),
                database=database,
                settings=settings,
                column_oriented=True,
            )
            return int(summary.written_rows)

        return self._call(run)

    def close(self) -> None:
        """Close the driver and forget the shared client (call at process shutdown)."""
        with _registry_lock:
            if _registry.get(self.url) is self:
                del _registry[self.url]
        with self._lock:
            self.driver.close()

    def _call(self, fn: Callable[[], T]) -> T:
        with self._lock, translate_errors():
            return fn()


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn clickhouse-connect exceptions into `RetryableError` / `PermanentError`."""
    try:
        yield
    except (RetryableError, PermanentError):
        raise
    except ch_errors.OperationalError as exc:  # connection refused, timeouts, broken streams
        if exc.code is not None and exc.code not in RETRYABLE_CODES:
            raise ClickHouseRejected(str(exc)) from exc
        raise ClickHouseUnavailable(str(exc)) from exc
    except ch_errors.Error as exc:
        if exc.code in RETRYABLE_CODES:
            raise ClickHouseUnavailable(str(exc)) from exc
        raise ClickHouseRejected(str(exc)) from exc
    except (TypeError, ValueError, OverflowError) as exc:  # a row the driver cannot serialise
        raise ClickHouseRejected(f"cannot serialise rows: {exc}") from exc
    except OSError as exc:
        raise ClickHouseUnavailable(str(exc)) from exc


_registry: dict[str, Client] = {}
_registry_lock = threading.Lock()


def connect(url: str) -> Client:
    """The process-wide client for `url` (`chdb:///abs/path` or `http(s)://…`).

    Called at start-up; later calls with the same URL return the same client. Raises
    `RetryableError` when a server cannot be reached, `PermanentError` for a malformed
    URL or a second chDB path in one process.
    """
    key = _normalise(url)
    with _registry_lock:
        client = _registry.get(key)
        if client is None:
            client = _open(key)
            _registry[key] = client
        return client


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _normalise(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/"):
            raise ClickHouseRejected(f"chDB URL must be chdb:///absolute/path, got {url!r}")
        return f"chdb://{os.path.realpath(parts.path)}"
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ClickHouseRejected(f"ClickHouse URL has no host: {redact(url)!r}")
        return url
    raise ClickHouseRejected(f"unsupported ClickHouse URL scheme {parts.scheme!r}")


def _open(url: str) -> Client:
    embedded = url.startswith("chdb://")
    if embedded:
        path = urlsplit(url).path
        open_paths = [c.url for c in _registry.values() if c.embedded]
        if open_paths:
            raise ClickHouseRejected(
                f"chDB already runs on {open_paths[0]} in this process; "
                f"one embedded engine per process, cannot open {url}"
            )
        Path(path).mkdir(parents=True, exist_ok=True)
        holder = _lock_holder(path)
        if holder is not None:  # chDB would print a stack of its own and fail obscurely
            raise ClickHouseLocked(path, holder or None)
        log.info("opening embedded ClickHouse (chDB) at %s", path)
        try:
            with translate_errors():
                driver = clickhouse_connect.get_client(dsn=url)
        except ClickHouseRejected as exc:
            holder = _lock_holder(path)  # taken while we were opening it
            if holder is not None:
                raise ClickHouseLocked(path, holder or None) from exc
            raise
    else:
        log.info("connecting to ClickHouse at %s", redact(url))
        with translate_errors():
            driver = clickhouse_connect.get_client(
                dsn=url,
                # no HTTP session: concurrent queries from several threads are allowed
                autogenerate_session_id=False,
                connect_timeout=5,
                send_receive_timeout=60,
            )
    return Client(driver, url, embedded)


def _lock_holder(folder: str) -> int | None:
    """Pid (0 when unknown) of another process holding chDB's lock on `folder`, else None.

    ClickHouse holds an exclusive flock on `<folder>/status` while it runs. Linux lists
    flocks in /proc/locks, which is read without touching the lock; elsewhere a
    non-blocking flock attempt (released at once) tells.
    """
    status = Path(folder) / "status"
    try:
        st = status.stat()
    except OSError:
        return None
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return _flock_probe(status)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 10482 fe:00:9978680 0 EOF"; blocked waiters have "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            pid = int(fields[4]) if fields[4].isdigit() else 0
            if pid != os.getpid():
                return pid
    return None


def _flock_probe(status: Path) -> int | None:
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it (`.run/clickhouse`)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except (OSError, ValueError):
        return path


def migrate(
    client: Client, database: str = DEFAULT_DATABASE, directory: Path = MIGRATIONS_DIR
) -> list[str]:
    """Apply the `NNN_*.sql` files of `directory` not yet applied to `database`, in order.

    Called at start-up by the sink and the report CLI; returns the names applied (empty
    when the schema is current). Applied versions are recorded in
    `<database>.schema_migrations`; every statement is `IF NOT EXISTS`, so two processes
    migrating at once do no harm. A failing statement raises and leaves its migration
    unrecorded, to be retried on the next start.
    """
    if not _IDENTIFIER.match(database):
        raise ClickHouseRejected(f"invalid database name {database!r}")
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations ("
        " version String, name String, checksum String,"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        " ENGINE = ReplacingMergeTree ORDER BY version"
    )
    recorded = dict(
        client.rows(f"SELECT version, checksum FROM {database}.schema_migrations FINAL")
    )
    applied: list[str] = []
    for path in sorted(directory.glob("[0-9][0-9][0-9]_*.sql")):
        version = path.name.split("_", 1)[0]
        text = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if version in recorded:
            if recorded[version] != checksum:
                log.warning("migration %s changed after it was applied; not re-applied", path.name)
            continue
        log.info("applying ClickHouse migration %s to %s", path.name, database)
        for statement in split_statements(text.replace("{db}", database)):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [(version, path.stem, checksum)],
            ["version", "name", "checksum"],
            database=database,
        )
        applied.append(path.stem)
    return applied


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: each ends with `;` at the end of a line."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        current.append(line)
        stripped = line.rstrip()
        if stripped.endswith(";") and not stripped.lstrip().startswith("--"):
            current[-1] = stripped[:-1]
            statements.append("\n".join(current))
            current = []
    statements.append("\n".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    return any(
        line.strip() and not line.strip().startswith("--") for line in statement.splitlines()
    )
