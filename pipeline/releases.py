"""Config releases: `config/` published as versioned, audited bundles on Kafka.

`rassylka config publish -m "why"` validates every file under `config/` (rules and
templates, limits, content rules, routes, segments, campaigns) and publishes one JSON
record to the compacted `config.rules` topic: the next release number (`v1`, `v2`, ...),
the content hash, author, time, message, a diff summary against the release before, the
time it takes effect, and every file's text. Each release has its own key, so compaction
keeps the whole history; `config history`, `config diff A B` and `config rollback V`
(a new release with V's files) read it back. The sink stores releases in ClickHouse
(`config_releases`), and requests and outcomes carry the version that produced them.

Workers (router, sender, campaign worker) follow the topic (`ReleaseFollower`): the
newest release that validates *in the worker* is written to a folder under the state
directory and applied when its `activate_at_ms` comes. A release takes effect a few
seconds after it is published (`ACTIVATE_AFTER_MS`), so workers that read it at
slightly different moments still switch at the same instant (as far as their clocks
agree). A release a worker cannot validate is logged and ignored; the publisher refuses
one in the first place.

Where the config comes from is `RASSYLKA_CONFIG_SOURCE`: `auto` (default: the newest
release when the topic has one, else the files under `config/`, reloaded when they
change — the development mode), `kafka` (releases only; a worker waits for the first),
or `files`.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline import kafka_io, topics
from pipeline.errors import ConfigError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ACTIVATE_AFTER_MS = 3_000
SOURCES = ("auto", "kafka", "files")
MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Release:
    """One published config: its files and the record of who published it and why."""

    number: int
    content_hash: str
    author: str
    created_at_ms: int
    activate_at_ms: int
    message: str
    files: dict[str, str]
    diff: dict[str, list[str]] = field(default_factory=dict)  # added / removed / changed
    previous: str | None = None
    rollback_of: str | None = None

    @property
    def version(self) -> str:
        return f"v{self.number}"

    @property
    def stamp(self) -> str:
        """What requests and outcomes carry: `v12@3f9a2c1b` (number and content hash)."""
        return f"{self.version}@{self.content_hash[:8]}"

    def to_json(self) -> bytes:
        return json.dumps({"version": self.version, **asdict(self)}, ensure_ascii=False,
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Release:
        data = json.loads(raw)
        return cls(number=int(data["number"]), content_hash=str(data["content_hash"]),
                   author=str(data["author"]), created_at_ms=int(data["created_at_ms"]),
                   activate_at_ms=int(data["activate_at_ms"]), message=str(data["message"]),
                   files={str(k): str(v) for k, v in data["files"].items()},
                   diff={str(k): [str(x) for x in v] for k, v in (data.get("diff") or {}).items()},
                   previous=data.get("previous"), rollback_of=data.get("rollback_of"))


# -------------------------------------------------------------------- files
def read_files(config_dir: Path) -> dict[str, str]:
    """Every YAML file under `config_dir`, by path relative to it (POSIX)."""
    files = {}
    for path in sorted(config_dir.rglob("*.yaml")):
        if not path.is_file():
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; a config "
                               f"file this big is not a config file"])
        files[path.relative_to(config_dir).as_posix()] = path.read_text(encoding="utf-8")
    return files


def content_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()


def write_files(files: dict[str, str], folder: Path) -> Path:
    """Write `files` into `folder` (replaced whole, atomically by rename) and return it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    for name, text in files.items():
        target = (staging / name).resolve()
        if staging.resolve() not in target.parents:
            raise ConfigError([f"release file {name!r} points outside the config folder"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def validate_folder(config_dir: Path) -> list[str]:
    """Every problem any worker would refuse in `config_dir` (empty when valid)."""
    from pipeline.campaigns.model import check_references, load_campaigns
    from pipeline.campaigns.segments import load_segments
    from pipeline.rules.loader import load_ruleset
    from pipeline.sender.setup import load_policy, load_routes

    problems: list[str] = []
    ruleset = None
    for check in (lambda: load_ruleset(config_dir), lambda: load_policy(config_dir),
                  lambda: load_routes(config_dir), lambda: load_segments(config_dir)):
        try:
            result = check()
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{config_dir}: {exc}")
            continue
        if ruleset is None and hasattr(result, "rules_for"):
            ruleset = result
    try:
        campaigns = load_campaigns(config_dir)
        if ruleset is not None:
            rules = {r.id: tuple(v.name for v in r.variants) for r in ruleset.rules_for("promotion")}
            segments = set(load_segments(config_dir))
            for campaign in campaigns.values():
                problems.extend(check_references(campaign, segments, rules))
    except ConfigError as exc:
        problems.extend(exc.problems)
    return problems


def validate_files(files: dict[str, str]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="rassylka-release-") as tmp:
        folder = write_files(files, Path(tmp) / "config")
        return [p.replace(str(folder) + "/", "") for p in validate_folder(folder)]


def diff_summary(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {"added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(n for n in set(before) & set(after) if before[n] != after[n])}


def unified_diff(a: Release, b: Release) -> str:
    """A unified diff of every file that differs between releases `a` and `b`."""
    out = []
    for name in sorted(set(a.files) | set(b.files)):
        old, new = a.files.get(name, ""), b.files.get(name, "")
        if old != new:
            out.extend(difflib.unified_diff(old.splitlines(keepends=True),
                                            new.splitlines(keepends=True),
                                            f"{a.version}/{name}", f"{b.version}/{name}"))
    return "".join(out)


# -------------------------------------------------------------------- the topic
def history(settings: Settings) -> list[Release]:
    """Every release on the topic, oldest first (records that are not releases skipped)."""
    from pipeline.state.store import read_partitions

    found: dict[int, Release] = {}
    for _p, _key, value in read_partitions(settings.kafka_bootstrap,
                                           settings.topic(topics.CONFIG), [0]):
        release = _parse(value)
        if release is not None:
            found[release.number] = release
    return [found[n] for n in sorted(found)]


def find(releases: list[Release], version: str) -> Release:
    wanted = version if version.startswith("v") else f"v{version}"
    for release in releases:
        if release.version == wanted:
            return release
    known = ", ".join(r.version for r in releases[-10:]) or "none yet"
    raise ConfigError([f"no release {version!r} (latest: {known}; see `rassylka config history`)"])


def default_author() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return os.environ.get("RASSYLKA_AUTHOR") or f"{user}@{socket.gethostname()}"


def publish(settings: Settings, files: dict[str, str], message: str, author: str,
            rollback_of: str | None = None, activate_after_ms: int = ACTIVATE_AFTER_MS) -> Release:
    """Validate `files` and publish them as the next release; ConfigError when they do not
    validate, when the message is empty, or when they equal the current release."""
    if not message.strip():
        raise ConfigError(["a release needs a message (-m \"why\"): it is the audit trail"])
    problems = validate_files(files)
    if problems:
        raise ConfigError(problems)
    releases = history(settings)
    last = releases[-1] if releases else None
    digest = content_hash(files)
    if last is not None and last.content_hash == digest:
        raise ConfigError([f"nothing to publish: the files equal the current release "
                           f"{last.version} ({last.content_hash[:8]})"])
    now = int(time.time() * 1000)
    release = Release(number=(last.number + 1) if last else 1, content_hash=digest,
                      author=author, created_at_ms=now, activate_at_ms=now + activate_after_ms,
                      message=message.strip(), files=files,
                      diff=diff_summary(last.files if last else {}, files),
                      previous=last.version if last else None, rollback_of=rollback_of)
    kafka_io.publish(settings, topics.CONFIG, [(f"release:{release.number:08d}", release.to_json())])
    return release


def _parse(value: bytes | None) -> Release | None:
    if not value:
        return None
    try:
        return Release.from_json(value)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# -------------------------------------------------------------------- workers
def config_source(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    source = env.get("RASSYLKA_CONFIG_SOURCE", "auto").strip().lower() or "auto"
    if source not in SOURCES:
        raise ConfigError([f"RASSYLKA_CONFIG_SOURCE={source!r}: use one of {', '.join(SOURCES)}"])
    return source


class ReleaseFollower:
    """The newest valid release of the config topic, for one worker.

    `poll()` reads what arrived (without waiting) and returns a release the worker
    should switch to now: valid, newer than the one applied, and due (`activate_at_ms`
    passed). Its files are written under `<state_dir>/releases/<worker>/<version>`, the
    folder `config_dir(release)` names, which the worker then loads like `config/`.
    """

    def __init__(self, settings: Settings, worker: str) -> None:
        self.settings = settings
        self.folder = settings.state_dir / "releases" / f"{settings.app_id}-{worker}-{os.getpid()}"
        self.topic = settings.topic(topics.CONFIG)
        self.applied: Release | None = None
        self.candidates: dict[int, Release] = {}  # newer than the applied one, unchecked
        self.refused: set[int] = set()
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                                  "group.id": f"releases-{worker}-{os.getpid()}",
                                  "enable.auto.commit": False, "enable.partition.eof": True,
                                  "isolation.level": "read_committed"})
        from pipeline.state.store import watermarks

        low, self._end = watermarks(self.consumer, self.topic, 0, timeout=30.0)
        self.consumer.assign([TopicPartition(self.topic, 0, low)])
        self._at_end = self._end <= low

    def close(self) -> None:
        self.consumer.close()

    def config_dir(self, release: Release) -> Path:
        return self.folder / release.version

    def wait_current(self, timeout: float = 15.0) -> Release | None:
        """Read the topic to its end (bounded); the newest valid release, applied now
        whatever its activation time (a worker starting late must not lag), else None."""
        deadline = time.monotonic() + timeout
        while not self._at_end and time.monotonic() < deadline:
            self._read(1.0)
        release = self._newest_valid(None)
        if release is not None:
            self._apply(release)
        return release

    def poll(self, now_ms: int | None = None) -> Release | None:
        """A newer valid release that is due now (applied: the caller loads its folder)."""
        self._read(0)
        release = self._newest_valid(int(now_ms or time.time() * 1000))
        if release is not None:
            self._apply(release)
        return release

    def _newest_valid(self, now_ms: int | None) -> Release | None:
        for number in sorted(self.candidates, reverse=True):
            release = self.candidates[number]
            if now_ms is not None and now_ms < release.activate_at_ms:
                continue  # not yet: an older due one may apply meanwhile
            problems = validate_files(release.files)
            if not problems:
                return release
            del self.candidates[number]
            self.refused.add(number)
            log.error("config release %s ignored, it does not validate here: %s",
                      release.version, "; ".join(problems[:5]))
        return None

    def _apply(self, release: Release) -> None:
        write_files(release.files, self.config_dir(release))
        if self.applied is not None and self.applied.version != release.version:
            shutil.rmtree(self.config_dir(self.applied), ignore_errors=True)
        self.applied = release
        self.candidates = {n: r for n, r in self.candidates.items() if n > release.number}
        log.info("config release %s applied (%s: %s)", release.stamp, release.author,
                 release.message)

    def _read(self, timeout: float) -> None:
        for msg in self.consumer.consume(500, timeout):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    self._at_end = True
                continue
            if msg.offset() + 1 >= self._end:
                self._at_end = True
            release = _parse(msg.value())
            if release is None or release.number in self.refused:
                continue
            if self.applied is None or release.number > self.applied.number:
                self.candidates[release.number] = release


def files_stamp(config_dir: Path) -> str:
    """The version of a config read from disk: `files@` and its content hash."""
    try:
        return f"files@{content_hash(read_files(config_dir))[:8]}"
    except (OSError, ConfigError):
        return "files@unknown"


class LiveConfig:
    """Where one worker's config comes from, and when it changes (`RASSYLKA_CONFIG_SOURCE`).

    `folder` and `stamp` name the config in force; `changed()` returns the next (folder,
    stamp) to load — a release that took effect, or `config/` after a file changed — and
    the worker keeps its previous config when that folder does not load.
    """

    def __init__(self, settings: Settings, worker: str) -> None:
        self.follower: ReleaseFollower | None = None
        self.folder = settings.config_dir
        source = config_source()
        if source != "files":
            self.follower = ReleaseFollower(settings, worker)
            release = self.follower.wait_current()
            while release is None and source == "kafka":
                log.warning("no config release on %s yet: waiting for `rassylka config "
                            "publish`", settings.topic(topics.CONFIG))
                release = self.follower.wait_current(timeout=5.0)
            if release is not None:
                self.folder = self.follower.config_dir(release)
            # `auto` without a release: config/ now, and the first release when it comes
        self.stamp = (self.follower.applied.stamp if self.follower and self.follower.applied
                      else files_stamp(self.folder))
        self._mtimes = self._scan()

    @property
    def on_release(self) -> bool:
        return self.follower is not None and self.follower.applied is not None

    @property
    def check_every_s(self) -> float:
        """How often to call `changed()`: often while following releases (they switch at an
        instant), every 2 s when only files are watched."""
        return 0.25 if self.follower is not None else 2.0

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()

    def _scan(self) -> tuple[tuple[str, float], ...]:
        if self.on_release:
            return ()
        files = sorted(p for p in self.folder.rglob("*.yaml") if p.is_file())
        return tuple((str(p), p.stat().st_mtime) for p in files)

    def changed(self) -> tuple[Path, str] | None:
        if self.follower is not None:
            release = self.follower.poll()
            if release is not None:
                self.folder = self.follower.config_dir(release)
                return self.folder, release.stamp
            if self.on_release:
                return None
        mtimes = self._scan()
        if mtimes == self._mtimes:
            return None
        self._mtimes = mtimes
        return self.folder, files_stamp(self.folder)
