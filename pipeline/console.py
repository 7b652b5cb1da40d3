"""Console tools for operators: `tail`, `produce`, `deadletters list|replay`, `--version`.

`tail` reads any catalog topic like `kafka-avro-console-consumer` (Avro, JSON and YAML
values decoded; a record that cannot be decoded is shown with its error). `produce`
validates every item of a file against the topic's Avro contract before it publishes any.
`deadletters replay` publishes the original records of dead letters again, at most once
per original record: each replay writes, in the same Kafka transaction as the records, a
marker keyed by the original's topic, partition and offset on the compacted topic
`deadletter.replayed`, and skips originals that already have one.

Phone numbers (profile, consent, request and outcome fields, consent and inbound keys)
are masked by default; `--unmask` shows them.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from pipeline import avro, topics
from pipeline.errors import ConfigError, RassylkaError
from pipeline.settings import Settings
from pipeline.validation import avro_contract, default_key, validate_items

REPLAYED = topics.DEAD_LETTERS_REPLAYED
"""Compacted topic of replay markers: key `<topic>|<partition>|<offset>` of the original."""

PHONE_FIELDS = frozenset({"phone", "from_number", "to", "msisdn", "e164"})
"""Record fields that hold phone numbers: masked unless --unmask."""

PHONE_KEYS = {topics.CONSENT: 0, topics.INBOUND: 0}
"""Topics whose key holds a phone number, and which `|`-separated part of it."""

_PHONE_IN_TEXT = re.compile(r"\+?\d[\d ()-]{6,}\d")


def print_version(value: bool) -> None:
    """Eager callback of the top-level `--version` flag: print `rassylka X.Y.Z` and exit."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"rassylka {version('rassylka')}")
    except PackageNotFoundError:
        typer.echo("rassylka (not installed: run `pip install -e .`)")
    raise typer.Exit()


# ---------------------------------------------------------------- shared helpers
def _settings_and_kafka() -> Settings:
    from pipeline.cli import wait_for_kafka

    settings = Settings.from_env()
    wait_for_kafka(settings)
    return settings


def catalog_name(settings: Settings, name: str) -> str:
    """The catalog name of topic `name`, given by its catalog or its deployed name.

    Raises ConfigError listing the known names when it is neither.
    """
    if name in topics.BY_NAME:
        return name
    if settings.topic_prefix and name.startswith(settings.topic_prefix):
        bare = name[len(settings.topic_prefix):]
        if bare in topics.BY_NAME:
            return bare
    known = ", ".join(sorted(topics.BY_NAME))
    raise ConfigError([f"unknown topic {name!r}; known topics: {known}"],
                      hint=f"deployed names carry the prefix {settings.topic_prefix!r}"
                      if settings.topic_prefix else None)


def _partitions(settings: Settings, full: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(full, timeout=10)
    found = meta.topics.get(full)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError([f"topic {full!r} does not exist on {settings.kafka_bootstrap}"],
                          hint="create the catalog with `rassylka topics create`")
    return sorted(found.partitions)


def mask(text: str) -> str:
    """`+79161234567` -> `+7*******67`: the country's first digit and the last two stay."""
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    keep = set(digits[:1] + digits[-2:]) if len(digits) > 4 else set()
    return "".join("*" if c.isdigit() and i not in keep else c for i, c in enumerate(text))


def mask_record(value: Any) -> Any:
    """`value` with every phone field (PHONE_FIELDS, at any depth) masked."""
    if isinstance(value, dict):
        return {k: mask(v) if k in PHONE_FIELDS and isinstance(v, str) else mask_record(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_record(v) for v in value]
    return value


def _mask_text(text: str) -> str:
    return _PHONE_IN_TEXT.sub(lambda m: mask(m.group()), text)


def _key_text(name: str, key: bytes | None, unmask: bool) -> str | None:
    if key is None:
        return None
    text = key.decode("utf-8", "backslashreplace")
    if unmask:
        return text
    if name in PHONE_KEYS:
        parts = text.split("|")
        part = PHONE_KEYS[name]
        if part < len(parts):
            parts[part] = mask(parts[part])
        return "|".join(parts)
    if name == topics.DEAD_LETTERS:
        return _mask_text(text)  # the original's key: may be a phone number
    return text


def _bytes_view(data: bytes, unmask: bool) -> Any:
    """Bytes inside a record (a dead letter's original value): decoded when possible."""
    try:
        schema, record = avro.decode_any(data)
        return {"schema": schema, "record": _jsonable(record if unmask else mask_record(record),
                                                      unmask)}
    except RassylkaError:  # not Avro (DecodeError), or its writer schema is out of reach
        pass
    try:
        text = data.decode("utf-8")
        return text if unmask else _mask_text(text)
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _jsonable(value: Any, unmask: bool) -> Any:
    if isinstance(value, bytes):
        return _bytes_view(value, unmask)
    if isinstance(value, dict):
        return {k: _jsonable(v, unmask) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v, unmask) for v in value]
    return value


def decode_value(name: str, data: bytes | None, unmask: bool) -> tuple[str | None, Any]:
    """(schema, value fit for JSON) of a record on catalog topic `name`.

    Raises avro.DecodeError (ValueError for JSON topics; a RetryableError when a
    Confluent-framed record's writer schema cannot be fetched) when it cannot be read.
    """
    if data is None:
        return None, None  # a tombstone on a compacted topic
    contract = topics.BY_NAME[name].schema if name in topics.BY_NAME else "json"
    if contract.startswith("json"):
        value = json.loads(data)
        return "json", _jsonable(value if unmask else mask_record(value), unmask)
    if contract == "yaml bundle":
        return "yaml", data.decode("utf-8")
    schema, record = avro.decode_any(data)
    if not unmask:
        record = mask_record(record)
        if name == topics.DEAD_LETTERS:
            record["error"] = _mask_text(record["error"])
    return schema, _jsonable(record, unmask)


# ---------------------------------------------------------------------- tail
def tail_command(
    topic: str = typer.Argument(..., help="Catalog name (events.order_status) or deployed name."),
    from_beginning: bool = typer.Option(False, "--from-beginning",
                                        help="Start at the oldest record (default: only new ones)."),
    max_records: int = typer.Option(0, "--max", min=0, help="Stop after N records (0: no limit)."),
    timeout: float = typer.Option(0.0, "--timeout", min=0,
                                  help="Stop after S seconds without a record (0: never)."),
    key: str = typer.Option(None, "--key", help="Only records with this key (as text)."),
    fmt: str = typer.Option("pretty", "--format",
                            help="pretty (headers and indented JSON) or json (one object a line)."),
    partition: int = typer.Option(None, "--partition", min=0, help="Only this partition."),
    unmask: bool = typer.Option(False, "--unmask", help="Show phone numbers in full."),
) -> None:
    """Print the decoded records of a topic, like kafka-avro-console-consumer (read_committed).

    Phone numbers are masked unless --unmask. Ctrl-C stops cleanly.
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    if fmt not in ("pretty", "json"):
        raise ConfigError([f"--format {fmt!r}: use json or pretty"])
    settings = Settings.from_env()
    name = catalog_name(settings, topic)
    _settings_and_kafka()
    full = settings.topic(name)
    parts = _partitions(settings, full)
    if partition is not None:
        if partition not in parts:
            raise ConfigError([f"{full} has partitions {parts[0]}..{parts[-1]}, not {partition}"])
        parts = [partition]
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.app_id}-tail-{uuid.uuid4().hex[:8]}",  # never committed
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
    })
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(full, p, start) for p in parts])
    wanted = key.encode() if key is not None else None
    shown = 0
    last = time.monotonic()
    try:
        while not (max_records and shown >= max_records):
            if timeout and time.monotonic() - last > timeout:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            last = time.monotonic()
            if msg.error() or (wanted is not None and msg.key() != wanted):
                continue
            _print_record(name, msg, fmt, unmask)
            shown += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `rassylka tail ... | head`
        sys.stderr.close()
        return
    finally:
        consumer.close()
    typer.echo(f"[rassylka] {shown} record(s) from {full}", err=True)


def _print_record(name: str, msg: Any, fmt: str, unmask: bool) -> None:
    _kind, stamp = msg.timestamp()
    row: dict[str, Any] = {
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "timestamp": stamp if stamp > 0 else None,
        "key": _key_text(name, msg.key(), unmask),
    }
    try:
        row["schema"], row["value"] = decode_value(name, msg.value(), unmask)
    except (ValueError, RassylkaError) as exc:  # DecodeError; a registry that is down
        row |= {"schema": None, "value": None, "error": str(exc),
                "size": len(msg.value() or b"")}
    if fmt == "json":
        typer.echo(json.dumps(row, ensure_ascii=False, default=str))
        return
    when = _utc(row["timestamp"]) if row["timestamp"] else "-"
    head = (f"{row['topic']}[{row['partition']}]@{row['offset']}  {when}  "
            f"key={row['key']}  {row['schema'] or ''}")
    typer.echo(head.rstrip())
    if "error" in row:
        typer.echo(f"  ! undecodable ({row['size']} bytes): {row['error']}")
    else:
        body = json.dumps(row["value"], ensure_ascii=False, indent=2, default=str)
        typer.echo("\n".join("  " + line for line in body.splitlines()))


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------------- produce
def produce_command(
    topic: str = typer.Argument(..., help="Catalog name (events.order_status) or deployed name."),
    json_file: str = typer.Option(..., "--json", help="JSON lines or a JSON array; - is stdin."),
    key_field: str = typer.Option(None, "--key-field",
                                  help="Field(s) of each item giving its key, joined by | "
                                       "(default: the topic's key; '' for no key)."),
) -> None:
    """Publish JSON items to a topic after validating every one against its Avro contract.

    Nothing is published unless every item is valid; exit 1 names each bad item and field.
    """
    from pipeline.cli import console

    settings = Settings.from_env()
    name = catalog_name(settings, topic)
    spec = topics.BY_NAME[name]
    avro_topics = sorted(n for n, s in topics.BY_NAME.items() if avro_contract(s.schema))
    if not avro_contract(spec.schema):
        raise ConfigError([f"{name} carries {spec.schema}, not an Avro contract: produce takes "
                           f"the Avro topics: {', '.join(avro_topics)}"])
    contract = avro.registry().contract(spec.schema)
    fields = key_field.split("|") if key_field else [] if key_field == "" else default_key(spec)
    if fields is None:
        raise ConfigError([f"{name} has no key field in {spec.schema} (its key is {spec.key})"],
                          hint="name one with --key-field FIELD, or --key-field '' for no key")
    items = read_items(json_file)
    encoded, problems = validate_items(name, contract, items, fields)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/red] {problem}", highlight=False)
        console.print(f"[red]{len(problems)} problem(s)[/red] in {len(items)} item(s) of "
                      f"{json_file}: nothing published to {settings.topic(name)}", highlight=False)
        raise typer.Exit(1)
    if not encoded:
        raise ConfigError([f"{json_file} holds no items: nothing to publish"])
    from pipeline.cli import wait_for_kafka
    from pipeline.kafka_io import producer, publish

    wait_for_kafka(settings)
    _partitions(settings, settings.topic(name))
    try:
        acked = publish(settings, name, encoded, prod=producer(settings))
    except RuntimeError as exc:
        raise ConfigError([f"publishing to {settings.topic(name)} failed: {exc}"],
                          hint="some items may have been published; check with `rassylka tail "
                               f"{name} --from-beginning`") from exc
    console.print(f"published {len(encoded)} {spec.schema} record(s) to {settings.topic(name)}: "
                  f"{acked} acknowledged", highlight=False)


def read_items(source: str) -> list[Any]:
    """The items of a JSON array or JSON-lines file (`-`: stdin); ConfigError naming the
    line of the first one that is not JSON."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {source}: {exc.strerror or exc}"]) from exc
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError([f"{source}:{exc.lineno}: not JSON: {exc.msg}"]) from exc
        if not isinstance(items, list):
            raise ConfigError([f"{source}: a JSON array of objects expected"])
        return items
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError([f"{source}:{number}: not JSON: {exc.msg} (column {exc.colno})"],
                              hint="give one JSON object per line, or one JSON array") from exc
    return items



# --------------------------------------------------------------- dead letters
deadletters_cli = typer.Typer(help="Dead letters: list them, replay their originals after a fix.",
                              no_args_is_help=True)


@dataclass(frozen=True)
class Letter:
    """One dead letter as read from the dead-letter topic."""

    partition: int
    offset: int
    record: dict[str, Any]

    @property
    def source_id(self) -> str:
        """Where the original is: `<topic>|<partition>|<offset>`, the replay marker's key."""
        r = self.record
        return f"{r['source_topic']}|{r['source_partition']}|{r['source_offset']}"


def read_to_end(settings: Settings, full: str) -> Iterator[Any]:
    """Every committed message of topic `full` (deployed name), oldest first per partition,
    up to the end as it is now (read_committed: open transactions are not waited for)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    parts = _partitions(settings, full)
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.app_id}-deadletters-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })
    try:
        consumer.assign([TopicPartition(full, p, OFFSET_BEGINNING) for p in parts])
        left = set(parts)
        deadline = time.monotonic() + 60
        while left:
            if time.monotonic() > deadline:
                raise ConfigError([f"reading {full} did not reach its end within 60 s"])
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        left.discard(msg.partition())
                    continue
                yield msg
    finally:
        consumer.close()


def read_letters(settings: Settings) -> list[Letter]:
    """Every dead letter on the deployment's dead-letter topic, in failure-time order.

    A record that is not a dead letter is skipped with a warning on stderr.
    """
    out = []
    for msg in read_to_end(settings, settings.topic(topics.DEAD_LETTERS)):
        try:
            record = avro.decode("dead_letter", msg.value() or b"")
        except avro.DecodeError as exc:
            typer.echo(f"[rassylka] skipped {msg.topic()}[{msg.partition()}]@{msg.offset()}: "
                       f"{exc}", err=True)
            continue
        out.append(Letter(msg.partition(), msg.offset(), record))
    return sorted(out, key=lambda d: (d.record["failed_at_ms"], d.partition, d.offset))


def read_markers(settings: Settings) -> dict[str, dict[str, Any]]:
    """Replay markers: original's `<topic>|<partition>|<offset>` -> what replayed it."""
    out = {}
    for msg in read_to_end(settings, settings.topic(REPLAYED)):
        if msg.key() is not None and msg.value() is not None:
            out[msg.key().decode()] = json.loads(msg.value())
    return out


def ensure_marker_topic(settings: Settings) -> None:
    """Create the compacted replay-marker topic (one partition) unless it exists."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    full = settings.topic(REPLAYED)
    if full in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics([NewTopic(full, num_partitions=1, replication_factor=1,
                                            config={"cleanup.policy": "compact"})])
    try:
        futures[full].result(timeout=30)
    except Exception as exc:  # KafkaException wraps TOPIC_ALREADY_EXISTS races
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


def parse_since(text: str | None, now_ms: int | None = None) -> int | None:
    """Epoch ms of `--since`: an age (`90s`, `30m`, `2h`, `7d`) or an ISO time (UTC unless
    it says otherwise); ConfigError when it is neither."""
    if not text:
        return None
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if age:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return now_ms - int(float(age.group(1)) * unit * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError([f"--since {text!r}: give an age (30m, 2h, 7d) or an ISO time "
                           f"(2026-12-01T10:00)"]) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def select(settings: Settings, letters: list[Letter], reason: str | None, topic: str | None,
           since: str | None) -> list[Letter]:
    """The dead letters matching the filters; `topic` is the original's catalog or deployed name."""
    full = settings.topic(catalog_name(settings, topic)) if topic else None
    since_ms = parse_since(since)
    return [d for d in letters
            if (reason is None or d.record["reason"] == reason)
            and (full is None or d.record["source_topic"] == full)
            and (since_ms is None or d.record["failed_at_ms"] >= since_ms)]


def _source_name(settings: Settings, full: str) -> str:
    prefix = settings.topic_prefix
    return full[len(prefix):] if prefix and full.startswith(prefix) else full


@deadletters_cli.command("list")
def deadletters_list(
    reason: str = typer.Option(None, "--reason", help="Only this reason (unknown_customer, ...)."),
    topic: str = typer.Option(None, "--topic", help="Only dead letters of this original topic."),
    since: str = typer.Option(None, "--since", help="Only newer: an age (2h, 7d) or an ISO time."),
    limit: int = typer.Option(50, "--limit", min=0, help="Show the newest N (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line, for scripts."),
    unmask: bool = typer.Option(False, "--unmask", help="Show phone numbers in full."),
) -> None:
    """A table of dead letters (newest last) and their counts per reason."""
    from rich.table import Table

    from pipeline.cli import console

    settings = _settings_and_kafka()
    ensure_marker_topic(settings)
    letters = select(settings, read_letters(settings), reason, topic, since)
    markers = read_markers(settings)
    shown = letters[-limit:] if limit else letters
    if as_json:
        for d in shown:
            r = d.record
            row = {"partition": d.partition, "offset": d.offset, "stage": r["stage"],
                   "reason": r["reason"], "error": r["error"] if unmask else _mask_text(r["error"]),
                   "source_topic": r["source_topic"], "source_partition": r["source_partition"],
                   "source_offset": r["source_offset"],
                   "key": _key_text(topics.DEAD_LETTERS, r["key"], unmask),
                   "event_id": r["event_id"], "failed_at_ms": r["failed_at_ms"],
                   "has_value": r["value"] is not None,
                   "replayed_at_ms": markers.get(d.source_id, {}).get("replayed_at_ms")}
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    if not letters:
        console.print(f"no dead letters on {settings.topic(topics.DEAD_LETTERS)}"
                      + (" matching the filters" if reason or topic or since else ""),
                      highlight=False)
        return
    table = Table(title=f"Dead letters on {settings.topic(topics.DEAD_LETTERS)} "
                        f"({len(shown)} of {len(letters)})", title_justify="left")
    for column in ("failed at (UTC)", "stage", "reason", "original", "key", "error", "replayed"):
        table.add_column(column, overflow="fold")
    for d in shown:
        r = d.record
        error = r["error"] if unmask else _mask_text(r["error"])
        table.add_row(
            _utc(r["failed_at_ms"])[:19], r["stage"], r["reason"],
            f"{_source_name(settings, r['source_topic'])}[{r['source_partition']}]@{r['source_offset']}",
            _key_text(topics.DEAD_LETTERS, r["key"], unmask) or "-",
            error if len(error) <= 80 else error[:77] + "...",
            _utc(markers[d.source_id]["replayed_at_ms"])[:19] if d.source_id in markers else "-")
    console.print(table)
    counts = Table(title="Per reason", title_justify="left")
    for column in ("reason", "dead letters", "replayed"):
        counts.add_column(column)
    by_reason = Counter(d.record["reason"] for d in letters)
    replayed = Counter(d.record["reason"] for d in letters if d.source_id in markers)
    for name, count in by_reason.most_common():
        counts.add_row(name, str(count), str(replayed[name]))
    console.print(counts)


@deadletters_cli.command("replay")
def deadletters_replay(
    reason: str = typer.Option(..., "--reason", help="Replay the dead letters of this reason."),
    topic: str = typer.Option(None, "--topic", help="Only originals from this topic."),
    since: str = typer.Option(None, "--since", help="Only newer: an age (2h, 7d) or an ISO time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed; publish nothing."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Publish the originals of matching dead letters again to their topics, once each.

    Run it after fixing what made them fail (config, schema, a missing profile). An
    original already replayed (by any earlier run) is skipped, so running it twice
    replays nothing the second time; a replayed record that fails again becomes a new
    dead letter, which a later replay can publish again.
    """
    from confluent_kafka import Producer

    from pipeline.cli import console
    from pipeline.kafka_io import TRANSACTIONAL_PRODUCER, abort_transaction, commit_transaction

    settings = _settings_and_kafka()
    ensure_marker_topic(settings)
    producer = None
    if not dry_run:
        # One transactional id per deployment: starting it fences (aborts) any replay still
        # running, so the markers read next are complete and no two runs publish the same.
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                             "transactional.id": f"{settings.app_id}-deadletter-replay",
                             "linger.ms": 5, **TRANSACTIONAL_PRODUCER})
        producer.init_transactions(60)
    every = read_letters(settings)
    letters = select(settings, every, reason, topic, since)
    markers = read_markers(settings)
    todo: dict[str, Letter] = {}
    done = empty = 0
    for d in letters:
        if d.source_id in markers:
            done += 1
        elif d.record["value"] is None:
            empty += 1
        else:
            todo.setdefault(d.source_id, d)  # several dead letters of one original: once
    targets = Counter(d.record["source_topic"] for d in todo.values())
    skipped = (f"; skipped {done} already replayed" if done else "") + (
        f", {empty} without the original bytes (see `deadletters list`)" if empty else "")
    if not todo:
        reasons = sorted({d.record["reason"] for d in every})
        known = "" if reason in reasons else (
            f" (the reasons on {settings.topic(topics.DEAD_LETTERS)}: {', '.join(reasons)})"
            if reasons else f" ({settings.topic(topics.DEAD_LETTERS)} is empty)")
        console.print(f"nothing to replay for reason {reason!r}{skipped}{known}", highlight=False)
        return
    plan = ", ".join(f"{_source_name(settings, t)}: {n}" for t, n in sorted(targets.items()))
    if dry_run:
        console.print(f"would replay {len(todo)} original record(s) ({plan}){skipped}",
                      highlight=False)
        return
    for full in targets:
        _partitions(settings, full)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError([f"replay of {len(todo)} record(s) ({plan}) needs confirmation"],
                              hint="add --yes (or check first with --dry-run)")
        typer.confirm(f"replay {len(todo)} record(s) ({plan})?", abort=True)
    assert producer is not None
    marker_topic = settings.topic(REPLAYED)
    now = int(time.time() * 1000)
    batch = list(todo.values())
    for start in range(0, len(batch), 1000):
        producer.begin_transaction()
        try:
            for d in batch[start:start + 1000]:
                r = d.record
                _produce(producer, r["source_topic"], r["key"], r["value"])
                _produce(producer, marker_topic, d.source_id.encode(), json.dumps({
                    "replayed_at_ms": now, "reason": r["reason"], "stage": r["stage"],
                    "dead_letter": f"{settings.topic(topics.DEAD_LETTERS)}|{d.partition}|{d.offset}",
                }).encode())
            commit_transaction(producer)
        except BaseException:
            abort_transaction(producer)
            raise
    console.print(f"replayed {len(todo)} original record(s) ({plan}){skipped}", highlight=False)


def _produce(producer: Any, topic: str, key: bytes | None, value: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)
