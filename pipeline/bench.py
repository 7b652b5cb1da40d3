"""`make bench`: end-to-end throughput and latency on the real broker and SMSC simulator.

The main measurements, in one run, on one broker:

1. ceiling — a plain confluent-kafka consume → produce loop over the same event payloads;
2. throughput — N payment-due events published as fast as the broker takes them, timed
   from the first publish to the last accepted submit_sm at the simulator, through the
   router and the sender with every check on; three times, with each process's CPU per
   event (`bench_procs.CpuMeter`);
3. latency — events offered at a fixed rate (the target rate and half of it); per event,
   publish → submit_sm at the simulator (each bench customer has its own number, so the
   simulator's log tells which event each submit_sm belongs to); three runs of each rate,
   in turn, and the median of each percentile.

Then Kannel side by side, the restart, the state footprint, the bare Faust floor, the HTTP
API, campaigns, the scale-out run (`scale_out_run`), transactional latency while a marketing
flood saturates the route (`flood_latency_run`) and the analytics sink.

The SMSC is the Go build of the simulator (`infra/smsc-bench`, `make smsc-bench`): it
speaks the same SMPP and writes the same log as `connectors/smsc_sim.py`
(`tests/integration/test_fast_smsc.py` holds them to it) at a tenth of its CPU per submit,
so the simulator sharing the two cores is not what the benchmark measures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from rich.console import Console
from rich.table import Table

from pipeline import avro, kafka_io, progress, topics
from pipeline.bench_procs import CpuMeter, SimLog, faust_floor, group_spread, listener_pid, wait_for
from pipeline.fast_smsc import start_fast_simulator
from pipeline.offsets import wait_committed_to_end
from pipeline.procs import start_stage, stop
from pipeline.settings import ROOT, Settings
from pipeline.topics import create_topics

RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_gb, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _profile(i: int) -> dict[str, Any]:
    return {"customer_id": f"b{i:07d}", "phone": f"+7926{i:07d}", "country": "RU", "locale": "ru",
            "time_zone": "Europe/Moscow", "first_name": "Анна", "last_name": None,
            "segments": [], "attributes": {}, "updated_at_ms": 0}


def _event(i: int, run: str) -> dict[str, Any]:
    return {"event_id": f"{run}-{i}", "customer_id": f"b{i:07d}",
            "occurred_at_ms": int(time.time() * 1000), "source": "bench", "attributes": {},
            "invoice_id": f"INV-{i}", "order_id": None, "amount_minor": 150_000, "currency": "RUB",
            "due_date": "2026-12-31", "payment_url": None}


def ceiling(settings: Settings, payloads: list[bytes]) -> float:
    """Messages/s of a plain confluent-kafka consume → produce loop over `payloads`."""
    src, dst = settings.topic("bench.ceiling.in"), settings.topic("bench.ceiling.out")
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    for i, value in enumerate(payloads):
        while True:
            try:
                prod.produce(src, key=str(i).encode(), value=value)
                break
            except BufferError:
                prod.poll(0.01)
    prod.flush(60)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"ceiling-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    consumer.subscribe([src])
    out = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    done, start = 0, None
    deadline = time.monotonic() + 120
    while done < len(payloads) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error():
                continue
            if start is None:
                start = time.monotonic()
            while True:
                try:
                    out.produce(dst, key=msg.key(), value=msg.value())
                    break
                except BufferError:
                    out.poll(0.01)
            done += 1
        out.poll(0)
    out.flush(60)
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    return done / elapsed if elapsed > 0 else float("nan")


def _follow(log: SimLog, seen: dict[str, int], stamps: list[int] | None = None) -> dict[str, int]:
    """Take the simulator's new accepted submits into `seen` (destination -> first at_ms);
    `stamps`, when given, gets every accepted submit_sm's at_ms (segments too)."""
    for s in log.read_new():
        if s["status"] == 0:
            seen.setdefault(s["destination"], s["at_ms"])
            if stamps is not None:
                stamps.append(s["at_ms"])
    return seen


def _wait_submits(log: SimLog, count: int, timeout: float, seen: dict[str, int]) -> None:
    deadline = time.monotonic() + timeout
    while len(_follow(log, seen)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


STATE_PROBE = """
import json, resource, sys, time
from pipeline.settings import Settings
from pipeline.sender.worker import ConsentView
from pipeline.state.store import PartitionedStore
from dataclasses import replace
s = replace(Settings.from_env(), topic_prefix=sys.argv[1])
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
base = rss()
t = time.monotonic()
view = ConsentView(s)
n_consent = view.load()
store = PartitionedStore(s.kafka_bootstrap, sys.argv[2], s.partitions)
n_ledger = store.restore(range(s.partitions))
elapsed = time.monotonic() - t
print(json.dumps({"consent": n_consent, "ledger": n_ledger, "restore_s": elapsed,
                  "rss_mb": (rss() - base) / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def state_footprint(settings: Settings, numbers: int, console: Console) -> dict[str, Any]:
    """Consent and dedup state for `numbers` numbers: restore time and resident memory.

    Publishes one consent record per number and one dedup-ledger entry per number to a
    changelog, then a fresh process restores both exactly as a starting sender does.
    """
    from pipeline.sender.consent import ConsentState, apply_change  # noqa: F401
    from pipeline.sender.dedup import record
    from pipeline.state.store import ensure_compacted_topic

    now = int(time.time() * 1000)
    prod = kafka_io.producer(settings, **{"linger.ms": 20, "batch.num.messages": 10_000,
                                          "enable.idempotence": False})
    consent_topic = settings.topic(topics.CONSENT)
    ledger_topic = f"{settings.app_id}-bench-state-changelog"
    ensure_compacted_topic(settings.kafka_bootstrap, ledger_topic, settings.partitions)
    entry = record("sent", now, 86_400).to_bytes()
    for i in range(numbers):
        phone = f"+7903{i:07d}"
        change = avro.encode("consent_change", {
            "phone": phone, "scope": "marketing", "status": "opt_in", "source": "import",
            "changed_at_ms": now, "customer_id": None, "evidence": None})
        for topic, key, value, part in ((consent_topic, f"{phone}|marketing".encode(), change, None),
                                        (ledger_topic, b"L" + uuid.UUID(int=i).hex.encode(), entry,
                                         i % settings.partitions)):
            while True:
                try:
                    if part is None:
                        prod.produce(topic, key=key, value=value)
                    else:
                        prod.produce(topic, key=key, value=value, partition=part)
                    break
                except BufferError:
                    prod.poll(0.05)
        if i % 100_000 == 0:
            prod.poll(0)
    prod.flush(120)
    from pipeline.procs import settings_env

    probe = subprocess.run([sys.executable, "-c", STATE_PROBE, settings.topic_prefix, ledger_topic],
                           cwd=ROOT, env=settings_env(settings), capture_output=True, text=True,
                           timeout=600)
    if probe.returncode != 0:
        raise RuntimeError(f"state probe failed: {probe.stderr[-2000:]}")
    return json.loads(probe.stdout.strip().splitlines()[-1])


def restart_time(settings: Settings, sim_log: SimLog, env: dict[str, str], log_dir: Path,
                 seen: dict[str, int], first: int, count: int) -> float:
    """SIGKILL the sender, start a new one, and time until it delivers again (s)."""
    victims = [p for p in _children("sender")]
    for pid in victims:
        os.kill(pid, 9)
    start = time.time()
    proc = start_stage(settings, ["sender", "--worker-id", "0"], log_dir / "sender-restarted.log", env)
    kafka_io.publish(settings, topics.PAYMENT_DUE,
                     ((f"b{i:07d}", _event(i, "restart")) for i in range(first, first + count)),
                     "payment_due")
    before = len(seen)
    _wait_submits(sim_log, before + count, 120, seen)
    ready = min((t for d, t in seen.items() if t / 1000 >= start), default=None)
    stop(proc)
    return (ready / 1000 - start) if ready else float("nan")


def sink_throughput(records: int) -> dict[str, Any]:
    """Rows/s the analytics sink stores into (embedded) ClickHouse: bench/sink_throughput.py."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "sink_throughput.py"),
                          "--records", str(records)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"sink benchmark failed: {run.stdout[-1500:]} {run.stderr[-1500:]}")
    text = run.stdout
    return json.loads(text[text.index("{\n"):text.index("\n}") + 2])


def campaign_bench(settings: Settings, profiles: int, members: int, console: Console) -> dict[str, Any]:
    """Campaigns: the audience of `profiles` synthetic profiles resolved in embedded
    ClickHouse (one compiled segment query, rows fetched into Python), then a campaign of
    `members` of them fanned out from its snapshot to Kafka with no pacing limit."""
    import shutil
    import tempfile
    import threading

    from connectors.clickhouse import connect, migrate
    from pipeline.campaigns.model import Campaign
    from pipeline.campaigns.runner import CampaignRunner, read_latest, start_campaign
    from pipeline.campaigns.segments import audience_sql, parse_segments

    folder = Path(tempfile.mkdtemp(prefix="bench-chdb-"))
    out: dict[str, Any] = {"profiles": profiles, "members": members}
    try:
        client = connect(f"chdb://{folder}")
        migrate(client)
        client.command(
            "INSERT INTO rassylka.profiles (customer_id, phone_hash, phone_masked, country, "
            "region, city, locale, time_zone, operator, segments, attributes, deleted, "
            "updated_at, published_at) SELECT concat('b', toString(number)), hex(number), "
            "'+7926*****00', if(number % 10 = 0, 'KZ', 'RU'), "
            "['RU-MOW', 'RU-SPE', 'RU-NVS'][number % 3 + 1], '', 'ru', "
            "['Europe/Moscow', 'Asia/Novosibirsk'][number % 2 + 1], '', "
            "if(number % 4 = 0, ['vip'], []), map(), 0, now64(3), now64(3) "
            f"FROM numbers({profiles})")
        segments, problems = parse_segments(
            "segments:\n  bench:\n    description: Russian customers outside Novosibirsk.\n"
            "    where: {all: [{country: RU}, {not: {region: RU-NVS}}]}\n")
        assert not problems, problems
        started = time.perf_counter()
        rows = client.query(audience_sql(segments, "bench", int(time.time() * 1000),
                                         "customer_id, time_zone"))
        audience = [(str(r["customer_id"]), str(r["time_zone"] or "")) for r in rows]
        out["audience_s"] = time.perf_counter() - started
        out["audience"] = len(audience)
        client.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    campaign = Campaign.model_validate({
        "id": "bench", "audience": {"segment": "bench"}, "rule": "promotion_discount",
        "variants": ["a", "b"], "promotion": {"promo_code": "BENCH", "discount_percent": 5},
        "pacing": {"per_minute": 100_000_000}, "on_no_winner": "stop",
        "test": {"fraction": 1.0, "holdout": 0.0, "evaluate_after": "1s"}})
    started = time.perf_counter()
    start_campaign(settings, campaign, ("a", "b"), audience[:members])
    out["snapshot_s"] = time.perf_counter() - started
    runner = CampaignRunner(settings, {"bench": campaign}, worker_id="bench")
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    while "bench" not in runner.running and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker reads the commands and the snapshot first
    started = time.perf_counter()
    while time.monotonic() < deadline:
        run = runner.running.get("bench")
        if run is not None and run.state["sent"].get("test", 0) >= members:
            break
        time.sleep(0.01)
    out["fanout_s"] = time.perf_counter() - started
    runner.stop()
    thread.join(30)
    state = read_latest(settings, topics.CAMPAIGN_PROGRESS).get("bench") or {}
    out["sent"] = state.get("sent", {}).get("test", 0)
    out["fanout_per_s"] = out["sent"] / out["fanout_s"]
    console.log(f"campaigns: audience of {out['audience']:,} in {out['audience_s']:.1f} s, "
                f"{out['sent']:,} events fanned out at {out['fanout_per_s']:,.0f}/s")
    return out


WARM_UP_S = 3
"""Seconds of events at the first offered rate, not measured, before the latency runs: in
the first seconds on a fresh broker and fresh topics, p99 was up to twice the steady one."""


def _publisher(settings: Settings) -> Producer:
    """The latency runs' publisher. It publishes the warm-up too: a new idempotent client's
    first record waits for its connection, topic metadata and producer id (up to several
    hundred ms on a busy broker), which is the publisher's start-up, not the pipeline's
    latency."""
    return kafka_io.producer(settings, **{"linger.ms": 1})


def _publish_each(prod: Producer, settings: Settings, first: int, count: int, tag: str,
                  rate: float | None = None) -> dict[str, float]:
    """Publish payment-due events `first`.. at `rate`/s (or at once); destination -> the
    event's occurred_at_ms."""
    sent_at: dict[str, float] = {}
    start = time.monotonic()
    for n in range(count):
        delay = start + n / rate - time.monotonic() if rate else 0
        if delay > 0:
            time.sleep(delay)
        i = first + n
        event = _event(i, tag)
        prod.produce(settings.topic(topics.PAYMENT_DUE), key=f"b{i:07d}".encode(),
                     value=avro.encode("payment_due", event))
        prod.poll(0)
        sent_at[f"7926{i:07d}"] = event["occurred_at_ms"]
    prod.flush(30)
    return sent_at


def _latency_run(settings: Settings, prod: Producer, sim_log: SimLog, seen: dict[str, int],
                 first: int, rate: int, seconds: int, tag: str) -> dict[str, Any]:
    """Events offered at `rate`/s for `seconds` by the warmed-up `prod`; per event,
    publish → accepted submit_sm."""
    count = rate * seconds
    start = time.monotonic()
    sent_at = _publish_each(prod, settings, first, count, tag, rate)
    offered_s = time.monotonic() - start
    _wait_submits(sim_log, len(seen) + count, 120, seen)
    return {**_latencies(seen, sent_at), "offered": count, "offered_rate": rate,
            "achieved_rate": count / offered_s}


def _latencies(seen: dict[str, int], sent_at: dict[str, float]) -> dict[str, Any]:
    """Percentiles of publish → accepted submit_sm over the events of `sent_at` seen."""
    lat = [seen[d] - t for d, t in sent_at.items() if d in seen]
    return {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
            "max": max(lat) if lat else None, "mean": statistics.fmean(lat) if lat else None,
            "measured": len(lat)}


def _median_latency(each: list[dict[str, Any]]) -> dict[str, Any]:
    """The latency runs at one rate: the median of each percentile across the runs, each
    run's p99, and the events measured and offered in all of them."""
    out: dict[str, Any] = {q: statistics.median(r[q] for r in each)
                           for q in ("p50", "p95", "p99", "max", "mean")}
    out["p99_runs"] = [r["p99"] for r in each]
    out["measured"] = sum(r["measured"] for r in each)
    out["offered"] = sum(r["offered"] for r in each)
    out["offered_rate"] = each[0]["offered_rate"]
    out["achieved_rate"] = statistics.median(r["achieved_rate"] for r in each)
    return out


def _throughput_run(settings: Settings, sim_log: SimLog, seen: dict[str, int], first: int,
                    events: int, tag: str, meter: CpuMeter) -> dict[str, Any]:
    """`events` published as fast as the broker takes them; events/s from the first publish
    to the last accepted submit_sm, and each process's CPU per event (receipts included:
    the meter stops once they have come back)."""
    payloads = [avro.encode("payment_due", _event(i, tag)) for i in range(first, first + events)]
    before = len(seen)
    meter.start()
    t0 = time.time()
    kafka_io.publish(settings, topics.PAYMENT_DUE,
                     ((f"b{i:07d}", p) for i, p in zip(range(first, first + events), payloads,
                                                       strict=True)))
    publish_s = time.time() - t0
    _wait_submits(sim_log, before + events, 300, seen)
    reached = len(seen) - before
    last = max(seen.values()) / 1000
    time.sleep(1.0)  # the last receipts (100-500 ms) are part of each message's cost
    meter.stop()
    return {"events_per_s": reached / (last - t0), "publish_s": publish_s, "reached": reached,
            "elapsed_s": last - t0, "cpu_s": meter.spent,
            "cpu_us_per_event": meter.per_event_us(max(reached, 1)), "payloads": payloads}


def _namespace(base: Settings, kind: str = "bench") -> tuple[Settings, Path, str]:
    """Fresh topics, consumer groups and a log folder for one bench run: (settings, log
    folder, tag)."""
    tag = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    settings = replace(base, topic_prefix=f"{kind}{tag}.", app_id=f"{kind}{tag}", partitions=4)
    log_dir = ROOT / ".run" / "bench" / (tag if kind == "bench" else f"{kind}{tag}")
    log_dir.mkdir(parents=True, exist_ok=True)
    return settings, log_dir, tag


def _start_sim(log_dir: Path, seed: int) -> tuple[subprocess.Popen[bytes], int, SimLog,
                                                   dict[str, str]]:
    """The bench's SMSC (Go build) with receipts after 100-500 ms: (process, SMPP port, its
    submit log, the environment that points a sender at it without a rate limit)."""
    sim_log = SimLog(log_dir / "submits.jsonl")
    sim, port, _control = start_fast_simulator(log_dir, "--log", str(sim_log.path),
                                               "--receipt-delay-ms", "100-500", "--seed",
                                               str(seed))
    return sim, port, sim_log, {"RASSYLKA_SMPP_PORT": str(port), "RASSYLKA_RATE_PER_BIND": "100000"}


def scale_out_run(base: Settings, console: Console, events: int) -> dict[str, Any]:
    """Two routers and two senders on one set of topics (4 partitions): the partitions each
    holds, and every event's submit_sm at the simulator exactly once."""
    settings, log_dir, tag = _namespace(base, "scale")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        create_topics(settings)
        sim, port, sim_log, env = _start_sim(log_dir, 2)
        procs.append(sim)
        kafka_io.publish(settings, topics.PROFILES,
                         ((f"b{i:07d}", avro.encode("customer_profile", _profile(i)))
                          for i in range(events)))
        for i in range(2):
            procs.append(start_stage(settings, ["router", "--worker-id", str(i)],
                                     log_dir / f"router{i}.log"))
            procs.append(start_stage(settings, ["sender", "--worker-id", str(i)],
                                     log_dir / f"sender{i}.log", env))
        spread: dict[str, list[list[str]]] = {}

        def both_groups_spread() -> bool:
            for stage in ("router", "sender"):
                try:
                    spread[stage] = group_spread(settings, f"{settings.app_id}-{stage}")
                except Exception:  # noqa: BLE001 - the group may not exist yet
                    return False
            return all(len(m) == 2 and all(m) for m in spread.values())

        if not wait_for(both_groups_spread, 120, 1.0):
            raise RuntimeError(f"scale-out: the partitions were not spread over two workers "
                               f"each within 120 s: {spread}")
        if not wait_committed_to_end(settings, "router", topics.PROFILES, 180):
            raise RuntimeError("scale-out: the routers did not read the profiles within 180 s")
        t0 = time.time()
        kafka_io.publish(settings, topics.PAYMENT_DUE,
                         ((f"b{i:07d}", _event(i, tag)) for i in range(events)), "payment_due")
        submits: dict[str, int] = {}
        copies: dict[str, int] = {}

        def all_submitted() -> bool:
            for s in sim_log.read_new():
                if s["status"] == 0:
                    submits.setdefault(s["destination"], s["at_ms"])
                    copies[s["destination"]] = copies.get(s["destination"], 0) + 1
            return len(submits) >= events

        wait_for(all_submitted, 300, 0.2)
        time.sleep(2.0)  # anything sent twice would show up now
        all_submitted()
        last = max(submits.values()) / 1000 if submits else t0
        out = {"routers": 2, "senders": 2, "partitions": settings.partitions,
               "router_partitions": spread["router"], "sender_partitions": spread["sender"],
               "events": events, "submitted": len(submits),
               "lost": events - len(submits), "doubled": sum(1 for c in copies.values() if c > 1),
               "events_per_s": len(submits) / (last - t0) if last > t0 else float("nan")}
        console.log(f"scale-out: {out['submitted']:,} of {events:,} submitted once, "
                    f"{out['doubled']} twice, {out['events_per_s']:,.0f}/s with 2 + 2 workers")
        return out
    finally:
        for proc in reversed(procs):
            stop(proc)
        topics.drop_namespace(settings)


FLOOD_ROUTE_RATE = 500
"""submit_sm/s of the route in the flood run (2 binds x 250): the marketing flood fills it."""
FLOOD_RATE = 100
"""Transactional events/s offered while the flood runs."""


def _daytime_zone() -> str:
    """A fixed-offset zone where it is about 13:00 now: the flood's marketing is inside the
    quiet-hours window whatever the hour the bench runs at."""
    offset = (13 - time.gmtime().tm_hour + 12) % 24 - 12  # -12 .. 11 hours from UTC
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-3 is UTC+3


def _promotion(i: int, tag: str, zone: str, now: int) -> dict[str, Any]:
    """A marketing request to `+7916{i}` as a campaign puts it on the marketing lane."""
    return {"request_id": f"{tag}-m{i}", "event_id": f"{tag}-m{i}", "event_type": "promotion",
            "event_occurred_at_ms": now, "rule_id": "promotion_discount",
            "template_id": "promo_discount_a", "variant": "a", "locale": "ru",
            "customer_id": f"m{i:07d}", "phone": f"+7916{i:07d}", "country": "RU",
            "time_zone": zone, "lane": "marketing", "priority": 0, "sender_id": "SHOPRU",
            "text": f"Скидка 20% по купону {i}: shop.example.ru/sale Отписка: STOP",  # 1 SMS
            "created_at_ms": now, "expires_at_ms": now + 3_600_000, "send_at_ms": None,
            "dedup_window_s": 86_400, "dedup_by_content": False, "allow_transliteration": False,
            "campaign_id": f"flood-{tag}", "links": []}


def _flood_run(settings: Settings, publisher: Producer, sim_log: SimLog, seen: dict[str, int],
               flood_first: int, flood_n: int, first: int, rate: int, seconds: int,
               tag: str, log_dir: Path) -> dict[str, Any]:
    """One run of `flood_latency_run`: the backlog, then the measured transactional events."""
    zone, now = _daytime_zone(), int(time.time() * 1000)
    numbers = range(flood_first, flood_first + flood_n)
    flood = {f"7916{i:07d}" for i in numbers}
    kafka_io.publish(settings, topics.REQUESTS_MARKETING,
                     ((f"m{i:07d}", _promotion(i, tag, zone, now)) for i in numbers),
                     "notification_request")
    stamps: list[int] = []  # every submit_sm: how busy the route was
    began = int(time.time() * 1000)
    sent_at = _publish_each(publisher, settings, first, rate * seconds, tag, rate)
    ended = int(time.time() * 1000)
    wait_for(lambda: sent_at.keys() <= _follow(sim_log, seen, stamps).keys(), 120, 0.05)
    window_s = max((ended - began) / 1000, 1e-3)
    out = {**_latencies(seen, sent_at), "offered": rate * seconds, "offered_rate": rate,
           "achieved_rate": rate * seconds / window_s,
           "marketing_per_s": sum(1 for d in flood if began <= seen.get(d, 0) <= ended) / window_s,
           "marketing_waiting": sum(1 for d in flood if seen.get(d, ended + 1) > ended),
           "route_per_s": sum(1 for at in stamps if began <= at <= ended) / window_s}
    if not wait_for(lambda: flood <= _follow(sim_log, seen).keys(), 120, 0.1):  # for the next
        raise RuntimeError(f"flood: {len(flood - seen.keys())} marketing requests not sent "
                           f"within 120 s; see {log_dir / 'sender0.log'}")
    return out


def flood_latency_run(base: Settings, console: Console, runs: int, seconds: int,
                      rate: int = FLOOD_RATE, route_rate: int = FLOOD_ROUTE_RATE) -> dict[str, Any]:
    """Transactional latency while a marketing flood saturates the route.

    A route limited to `route_rate` submit_sm/s; per run, a backlog of marketing requests
    (opted-in numbers, daytime, under the caps: every one of them is sent) for `seconds` + 4
    s of the route's rate is put on the marketing lane at once, and right after it
    payment-due events are published at `rate`/s for `seconds`, through the router as in the
    other latency runs: the window holds the flood's arrival and the route saturated by it.
    Per event, publish → accepted submit_sm. Each run also says
    how many marketing messages went out per second during the window, how many submit_sm
    the route carried per second (segments of every lane), and how many marketing messages
    were still waiting when it ended (more than none: the route was saturated throughout).
    """
    settings, log_dir, tag = _namespace(base, "flood")
    flood_n = route_rate * (seconds + 4)
    measured_n = rate * seconds
    warm = 100
    procs: list[subprocess.Popen[bytes]] = []
    try:
        create_topics(settings)
        sim, _port, sim_log, env = _start_sim(log_dir, 3)
        procs.append(sim)
        env["RASSYLKA_RATE_PER_BIND"] = str(route_rate / 2)  # the route's two binds
        profiles = warm + runs * measured_n
        kafka_io.publish(settings, topics.PROFILES,
                         ((f"b{i:07d}", avro.encode("customer_profile", _profile(i)))
                          for i in range(profiles)))
        opted_in = int(time.time() * 1000) - 60_000
        kafka_io.publish(settings, topics.CONSENT, (
            (f"+7916{i:07d}|marketing",
             {"phone": f"+7916{i:07d}", "scope": "marketing", "status": "opt_in",
              "source": "web_form", "changed_at_ms": opted_in, "customer_id": None,
              "evidence": "bench"}) for i in range(runs * flood_n)), "consent_change")
        procs.append(start_stage(settings, ["router", "--worker-id", "0"], log_dir / "router0.log"))
        procs.append(start_stage(settings, ["sender", "--worker-id", "0"], log_dir / "sender0.log",
                                 env))
        if not wait_committed_to_end(settings, "router", topics.PROFILES, 180):
            raise RuntimeError("flood: the router did not read the profiles within 180 s")
        seen: dict[str, int] = {}
        publisher = _publisher(settings)
        _publish_each(publisher, settings, 0, warm, tag)
        _wait_submits(sim_log, warm, 120, seen)
        if len(seen) < warm:
            raise RuntimeError(f"flood warm-up: only {len(seen)} of {warm} reached the simulator")
        each = [_flood_run(settings, publisher, sim_log, seen, n * flood_n, flood_n,
                           warm + n * measured_n, rate, seconds, tag, log_dir)
                for n in range(runs)]
        out = _median_latency(each)
        out.update(route_rate=route_rate, flood=flood_n,
                   marketing_per_s=statistics.median(r["marketing_per_s"] for r in each),
                   marketing_waiting=[r["marketing_waiting"] for r in each],
                   route_per_s=statistics.median(r["route_per_s"] for r in each),
                   saturated=all(r["marketing_waiting"] > 0 for r in each))
        console.log(f"flood: transactional p99 {out['p99']:,.0f} ms at {rate}/s while marketing "
                    f"went at {out['marketing_per_s']:,.0f}/s; the route carried "
                    f"{out['route_per_s']:,.0f} of its {route_rate} submit_sm/s")
        return out
    finally:
        for proc in reversed(procs):
            stop(proc)
        topics.drop_namespace(settings)


def kannel_section(log_dir: Path, port: int, sim_pid: int, sim_log: SimLog, messages: int,
                   result: dict[str, Any]) -> dict[str, Any]:
    """Kannel side by side: the same messages (text, encoding, validity) through bearerbox
    and smsbox to the same simulator, receipts asked for as Rassylka asks for them; its
    throughput and CPU per message, and Rassylka's as ratios to them."""
    from pipeline.bench_kannel import kannel_bench

    out = kannel_bench(log_dir / "kannel", port, messages, 32, sim_log.path, sim_pid,
                       first=5_000_000, receipts=True)
    out.pop("destinations", None)
    sim_log.read_new()  # Kannel's submits are not Rassylka's: skip them in the log
    cpu = result["cpu_us_per_event"]
    ours_ms = (cpu.get("router", 0.0) + cpu.get("sender", 0.0)) / 1000
    out["ratio_throughput"] = result["throughput"]["events_per_s"] / out["per_s"]
    out["ratio_cpu"] = ours_ms / out["cpu_ms_per_message"]["total"]
    return out


def _children(stage: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"pipeline.cli {stage}"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def run_bench(base: Settings, console: Console, events: int = 20_000, rate: int = 1_000,
              seconds: int = 10, routers: int = 1, senders: int = 1,
              state_numbers: int = 1_000_000, sink_records: int = 1_000_000,
              restart: bool = True, campaign_profiles: int = 1_000_000,
              campaign_members: int = 100_000, runs: int = 3, api: bool = True,
              scale_out: bool = True, faust: bool = True, kannel: bool = True,
              flood: bool = True, results: Path | None = None) -> int:
    """Run the benchmark; prints a table and writes bench/results/latest.json.

    Latency at `rate` and at half of it; throughput `runs` times (the median is reported,
    with each process's CPU per event); then the restart, the state footprint, the
    ceiling, the bare Faust floor, the HTTP API, campaigns, the scale-out run, transactional
    latency under a marketing flood and the sink.
    """
    settings, log_dir, tag = _namespace(base)
    rates = sorted({rate // 2, rate})
    burst = 200
    warmup = burst + rates[0] * WARM_UP_S
    restart_n = 100
    total = warmup + runs * events + runs * sum(rates) * seconds + restart_n
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "events": events, "routers": routers,
                              "senders": senders, "rates": rates}
    try:
        with progress.status(console, "[bold]setting up ...") as status:
            create_topics(settings)
            sim, port, sim_log, env = _start_sim(log_dir, 1)
            procs.append(sim)
            routers_ = [start_stage(settings, ["router", "--worker-id", str(i)],
                                    log_dir / f"router{i}.log") for i in range(routers)]
            senders_ = [start_stage(settings, ["sender", "--worker-id", str(i)],
                                    log_dir / f"sender{i}.log", env) for i in range(senders)]
            procs += routers_ + senders_
            broker = listener_pid(int(settings.kafka_bootstrap.rsplit(":", 1)[1]))
            status.update(f"[bold]publishing {total} customer profiles ...")
            kafka_io.publish(settings, topics.PROFILES,
                             ((f"b{i:07d}", avro.encode("customer_profile", _profile(i)))
                              for i in range(total)))
            if not wait_committed_to_end(settings, "router", topics.PROFILES, 180):
                raise RuntimeError("the routers did not read the profiles within 180 s")
            status.update("[bold]warming up ...")
            seen: dict[str, int] = {}
            publisher = _publisher(settings)
            # A burst for the connections and metadata, then the first rate for WARM_UP_S:
            # the broker's JIT and the workers' caches warm up there, not in the measurement.
            _publish_each(publisher, settings, 0, burst, tag)
            _wait_submits(sim_log, burst, 120, seen)
            _publish_each(publisher, settings, burst, warmup - burst, tag, rates[0])
            _wait_submits(sim_log, warmup, 120, seen)
            if len(seen) < warmup:
                raise RuntimeError(f"warm-up: only {len(seen)} of {warmup} reached the simulator")

            meter = CpuMeter({"router": [p.pid for p in routers_], "sender": [p.pid for p in senders_],
                              "broker": [pid for pid in [broker] if pid],
                              "simulator": [sim.pid]})
            first = warmup
            latency_runs: dict[str, list[dict[str, Any]]] = {str(r): [] for r in rates}
            # each rate `runs` times, the rates taken in turn: a slow spell of the shared
            # machine then shows in one run of each, not in every run of one rate
            for n in range(runs):
                for offered in rates:
                    status.update(f"[bold]latency {n + 1}/{runs}: {offered} events/s for "
                                  f"{seconds} s ...")
                    latency_runs[str(offered)].append(_latency_run(
                        settings, publisher, sim_log, seen, first, offered, seconds, tag))
                    first += offered * seconds
                    time.sleep(2.0)  # let the receipts of the run drain before the next
            result["latency_ms"] = {rate_: _median_latency(each)
                                    for rate_, each in latency_runs.items()}

            runs_ = []
            for n in range(runs):
                status.update(f"[bold]throughput {n + 1}/{runs}: {events} events as fast as the "
                              f"broker takes them ...")
                runs_.append(_throughput_run(settings, sim_log, seen, first, events, tag, meter))
                first += events
            result["throughput_runs"] = runs_
            rates_ = [r["events_per_s"] for r in runs_]
            median = statistics.median(rates_)
            result["throughput"] = {"events_per_s": median, "runs": rates_,
                                    "reached": sum(r["reached"] for r in runs_)}
            result["cpu_us_per_event"] = {
                name: statistics.median(r["cpu_us_per_event"][name] for r in runs_)
                for name in runs_[0]["cpu_us_per_event"]}
            if kannel:
                status.update(f"[bold]Kannel: {events} messages through bearerbox and smsbox to "
                              f"the same simulator ...")
                result["kannel"] = kannel_section(log_dir, port, sim.pid, sim_log, events,
                                                  result)
            payloads = runs_[-1]["payloads"]
            for r in runs_:
                del r["payloads"]
            restart_first = first

            if senders == 1 and restart:
                status.update("[bold]restart: SIGKILL the sender, time until it sends again ...")
                result["sender_restart_s"] = restart_time(settings, sim_log, env, log_dir, seen,
                                                          restart_first, restart_n)
            if state_numbers:
                status.update(f"[bold]state: consent + dedup for {state_numbers:,} numbers ...")
                result["state"] = state_footprint(settings, state_numbers, console)
            status.update(f"[bold]ceiling: plain consume → produce loop over {events} payloads ...")
            result["ceiling_per_s"] = ceiling(settings, payloads)
            if faust:
                status.update(f"[bold]Faust floor: a bare agent consumes {events} events ...")
                result["faust_floor"] = faust_floor(settings, settings.topic(topics.PAYMENT_DUE),
                                                    total - restart_n, log_dir)
        for proc in reversed(procs):
            stop(proc)
        # The sections below need no pipeline worker: they run with the workers stopped,
        # so their idle polling does not share the cores with what is measured.
        if api:
            with progress.status(console, "[bold]HTTP API: single and batch requests until "
                                          "their 202 ..."):
                result["api"] = api_section(settings, log_dir, console)
        if campaign_profiles:
            with progress.status(console, f"[bold]campaigns: audience of {campaign_profiles:,} "
                                          f"profiles, fan-out of {campaign_members:,} ..."):
                result["campaigns"] = campaign_bench(settings, campaign_profiles, campaign_members,
                                                     console)
        if scale_out:
            with progress.status(console, "[bold]scale-out: 2 routers and 2 senders on one set "
                                          "of topics ..."):
                result["scale_out"] = scale_out_run(base, console, events)
        if flood:
            with progress.status(console, f"[bold]flood: {FLOOD_RATE} transactional events/s "
                                          f"while marketing saturates a {FLOOD_ROUTE_RATE}/s route ..."):
                result["latency_under_flood_ms"] = flood_latency_run(base, console, runs, seconds)
        if sink_records:
            sinks = []
            for n in range(runs):  # single runs vary by half on these shared machines
                with progress.status(console, f"[bold]analytics {n + 1}/{runs}: the sink "
                                              f"stores {sink_records:,} rows ..."):
                    sinks.append(sink_throughput(sink_records))
            result["sink"] = sorted(sinks, key=lambda x: x["steady_rows_per_s"])[len(sinks) // 2]
            result["sink"]["runs"] = [x["steady_rows_per_s"] for x in sinks]
        result["ratio_to_ceiling"] = result["throughput"]["events_per_s"] / result["ceiling_per_s"]
    finally:
        for proc in reversed(procs):
            stop(proc)
        topics.drop_namespace(settings)
    results = results or RESULTS / "latest.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    _print(console, result, results)
    return 0


def _partition_numbers(member: list[str]) -> str:
    """'topic[0]', 'topic[1]', 'other[0]' ... → '0,1': the partition numbers one member holds."""
    numbers = sorted({int(tp[tp.rindex("[") + 1:-1]) for tp in member})
    return ",".join(str(n) for n in numbers)


def _print(console: Console, r: dict[str, Any], results: Path) -> None:
    m = r["machine"]
    table = Table(title=f"Rassylka benchmark — {m['cpus']} CPUs, {m['cpu_model']}, {m['memory_gb']} GB")
    table.add_column("measure")
    table.add_column("value", justify="right")
    t = r["throughput"]
    runs = ", ".join(f"{x:,.0f}" for x in t["runs"])
    table.add_row(f"end-to-end throughput (events → submit_sm), median of {len(t['runs'])}",
                  f"{t['events_per_s']:,.0f} /s ({runs})")
    table.add_row("plain consume→produce ceiling", f"{r['ceiling_per_s']:,.0f} /s")
    table.add_row("ratio to ceiling", f"{r['ratio_to_ceiling']:.1%}")
    for name, us in r["cpu_us_per_event"].items():
        table.add_row(f"CPU per event: {name}", f"{us:,.0f} µs")
    if "kannel" in r:
        k = r["kannel"]
        table.add_row(f"Kannel {k['version']['kannel']} side by side (bearerbox + smsbox, receipts)",
                      f"{k['per_s']:,.0f} /s, {k['cpu_ms_per_message']['total'] * 1000:,.0f} µs "
                      f"CPU per message")
        table.add_row("Rassylka ÷ Kannel: throughput, CPU per message (router + sender)",
                      f"{k['ratio_throughput']:.2f}×, {k['ratio_cpu']:.2f}×")
    if "faust_floor" in r:
        f = r["faust_floor"]
        table.add_row("bare Faust agent (take_events), for comparison",
                      f"{f['events_per_s']:,.0f} /s, {f['cpu_us_per_event']:,.0f} µs CPU per event")
    for offered, lat in r["latency_ms"].items():
        each = lat["p99_runs"]
        table.add_row(f"latency publish → submit_sm at {offered}/s offered, median of {len(each)}",
                      f"p50 {lat['p50']:,.0f} ms, p99 {lat['p99']:,.0f} ms "
                      f"({', '.join(f'{x:,.0f}' for x in each)})")
    if "latency_under_flood_ms" in r:
        fl = r["latency_under_flood_ms"]
        each = fl["p99_runs"]
        table.add_row(f"latency at {fl['offered_rate']}/s while marketing saturates the route "
                      f"({fl['route_rate']}/s), median of {len(each)}",
                      f"p50 {fl['p50']:,.0f} ms, p99 {fl['p99']:,.0f} ms "
                      f"({', '.join(f'{x:,.0f}' for x in each)}); marketing "
                      f"{fl['marketing_per_s']:,.0f}/s, route {fl['route_per_s']:,.0f} "
                      "submit_sm/s meanwhile")
    table.add_row("workers (router / sender)", f"{r['routers']} / {r['senders']}")
    if "scale_out" in r:
        so = r["scale_out"]
        table.add_row("scale-out: 2 routers + 2 senders",
                      f"{so['events_per_s']:,.0f} /s; {so['submitted']:,}/{so['events']:,} once, "
                      f"{so['lost']} lost, {so['doubled']} twice")
        for stage in ("router", "sender"):
            table.add_row(f"  partitions per {stage} (of {so['partitions']})",
                          " | ".join(_partition_numbers(m) for m in so[f"{stage}_partitions"]))
    if "sender_restart_s" in r:
        table.add_row("SIGKILLed sender sending again after", f"{r['sender_restart_s']:.1f} s")
    if "sink" in r:
        runs = r["sink"].get("runs", [])
        table.add_row(f"analytics sink → ClickHouse (chDB), steady, median of {len(runs)}",
                      f"{r['sink']['steady_rows_per_s']:,} rows/s ({', '.join(f'{x:,}' for x in runs)})")
    if "campaigns" in r:
        c = r["campaigns"]
        table.add_row(f"campaign audience from {c['profiles']:,} profiles (chDB)",
                      f"{c['audience']:,} in {c['audience_s']:.1f} s")
        table.add_row(f"campaign fan-out, snapshot → Kafka ({c['sent']:,} members)",
                      f"{c['fanout_per_s']:,.0f} /s (snapshot written in {c['snapshot_s']:.1f} s)")
    if "api" in r:
        _api_rows(table, r["api"])
    if "state" in r:
        st = r["state"]
        table.add_row(f"state for {st['consent']:,} consents + {st['ledger']:,} ledger entries",
                      f"{st['rss_mb']:.0f} MB, restored in {st['restore_s']:.1f} s")
    console.print(table)
    console.print(f"results: {results}")


# ------------------------------------------------------------------ HTTP API
def api_section(settings: Settings, log_dir: Path, console: Console) -> dict[str, Any]:
    """The HTTP API: single-event requests and batches, each timed to its 202."""
    from pipeline.api.bench import api_bench

    out = api_bench(settings, log_dir)
    console.log(f"HTTP API: {out['single']['events_per_s']:,.0f} single requests/s, "
                f"{out['batch']['events_per_s']:,.0f} events/s in batches")
    return out


def _api_rows(table: Table, a: dict[str, Any]) -> None:
    s, b = a["single"], a["batch"]
    table.add_row(f"HTTP API, single events ({a['concurrency']} connections)",
                  f"{s['events_per_s']:,.0f} /s, p99 {s['latency_ms']['p99']:.0f} ms to 202")
    table.add_row(f"HTTP API, batches of {b['batch_size']:,} events",
                  f"{b['events_per_s']:,.0f} events/s, p99 {b['latency_ms']['p99']:.0f} ms to 202")


def run_api_bench(base: Settings, console: Console) -> int:
    """`rassylka bench --api-only`: the HTTP API section alone; writes bench/results/api.json."""
    settings, log_dir, _tag = _namespace(base)
    create_topics(settings)
    try:
        result = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "api": api_section(settings, log_dir, console)}
    finally:
        topics.drop_namespace(settings)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    m = result["machine"]
    table = Table(title=f"Rassylka HTTP API — {m['cpus']} CPUs, {m['cpu_model']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    _api_rows(table, result["api"])
    console.print(table)
    console.print(f"results: {RESULTS / 'api.json'}")
    return 0
