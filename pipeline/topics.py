"""The topic catalog: every topic, its contract, key, partitions and cleanup policy."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    TopicMetadata,
)

from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the catalog; `schema` names the Avro contract of its values."""

    name: str
    schema: str
    key: str
    compacted: bool = False
    partitions: int | None = None  # None: the deployment's default partition count
    doc: str = ""
    retention_ms: int | None = None  # kept this long (compacted ones: compact,delete)


ORDER_STATUS = "events.order_status"
PAYMENT_DUE = "events.payment_due"
PROMOTION = "events.promotion"
SERVICE_NOTICE = "events.service_notice"
PROFILES = "customers.profiles"
CONSENT = "customers.consent"
REQUESTS_TRANSACTIONAL = "sms.requests.transactional"
REQUESTS_MARKETING = "sms.requests.marketing"
OUTCOMES = "sms.outcomes"
REDELIVERIES = "sms.redeliveries"
RECEIPTS = "sms.receipts"
RECEIPTS_FORWARDED = "sms.receipts.forwarded"
INBOUND = "sms.inbound"
CLICKS = "sms.clicks"
CONVERSIONS = "sms.conversions"
DEAD_LETTERS = "deadletter"
DEAD_LETTERS_REPLAYED = "deadletter.replayed"
CONFIG = "config.rules"
CAMPAIGN_CONTROL = "campaigns.control"
CAMPAIGN_AUDIENCE = "campaigns.audience"
CAMPAIGN_PROGRESS = "campaigns.progress"
CAMPAIGN_DECISIONS = "campaigns.decisions"
VARIANT_WEIGHTS = "rules.variant_weights"
FOLLOW_UPS = "followups.pending"
OUTBOX_CHANGES = "outbox.changes"

AUDIENCE_RETENTION_MS = 90 * 24 * 3600 * 1000
"""How long an audience snapshot is kept: the broker's own retention (a day on the local
broker, a week by Kafka's default) took a campaign's audience from under a worker that
restarted later, and it declared the campaign done with most members never sent to."""

CATALOG: tuple[TopicSpec, ...] = (
    TopicSpec(ORDER_STATUS, "order_status_changed", "customer_id", doc="Order status changes"),
    TopicSpec(PAYMENT_DUE, "payment_due", "customer_id", doc="Payments due"),
    TopicSpec(PROMOTION, "promotion", "customer_id", doc="Promotions, one per recipient"),
    TopicSpec(SERVICE_NOTICE, "service_notice", "customer_id", doc="Maintenance and notices"),
    TopicSpec(PROFILES, "customer_profile", "customer_id", compacted=True, doc="Profile upserts"),
    TopicSpec(CONSENT, "consent_change", "<e164>|<scope>", compacted=True, doc="Consent"),
    TopicSpec(REQUESTS_TRANSACTIONAL, "notification_request", "customer_id", doc="Lane 1"),
    TopicSpec(REQUESTS_MARKETING, "notification_request", "customer_id", doc="Lane 2"),
    TopicSpec(OUTCOMES, "send_outcome", "request_id", doc="One terminal outcome per request"),
    TopicSpec(REDELIVERIES, "send_outcome", "request_id",
              doc="Requests delivered again (replays): counted, never a second outcome"),
    TopicSpec(RECEIPTS, "delivery_receipt", "message_id", doc="Correlated receipts"),
    TopicSpec(RECEIPTS_FORWARDED, "bytes: a receipt (pipeline/sender/forwarding.py)",
              "<SMSC id>\\x00<state>", compacted=True, retention_ms=24 * 3600 * 1000,
              doc="Receipts that reached a sender not knowing their SMSC id, for the one that does"
                  " (read back minutes at most: a day's retention clears keys a crash left)"),
    TopicSpec(INBOUND, "inbound_message", "from_number", doc="Replies (MO)"),
    TopicSpec(CLICKS, "click", "message_id", doc="Tracked link clicks"),
    TopicSpec(CONVERSIONS, "conversion", "customer_id", doc="Attributed conversions"),
    TopicSpec(DEAD_LETTERS, "dead_letter", "original key", doc="Bad input with its reason"),
    TopicSpec(DEAD_LETTERS_REPLAYED, "json: replay marker", "<topic>|<partition>|<offset>",
              compacted=True, partitions=1,
              doc="Dead letters replayed by `rassylka deadletters replay` (each once)"),
    TopicSpec(CONFIG, "json: config release", "release:<number>", compacted=True, partitions=1,
              doc="Config releases: every published config/ with its audit record"),
    TopicSpec(CAMPAIGN_CONTROL, "json: campaign command", "campaign id", compacted=True,
              partitions=1, doc="start / pause / resume / cancel, newest wins"),
    TopicSpec(CAMPAIGN_AUDIENCE, "json: audience member", "<campaign>|<customer>", partitions=1,
              retention_ms=AUDIENCE_RETENTION_MS,
              doc="Audience snapshots frozen at start, with each member's phase and variant"
                  " (kept 90 days: a restarted campaign worker reads its campaigns' back)"),
    TopicSpec(CAMPAIGN_PROGRESS, "json: campaign state", "campaign id", compacted=True,
              partitions=1, doc="Fan-out cursors and status, in the fan-out's transactions"),
    TopicSpec(CAMPAIGN_DECISIONS, "json: decision with its inputs", "campaign id or rule id",
              doc="Every automatic decision: campaign winners, bandit weight updates"),
    TopicSpec(VARIANT_WEIGHTS, "json: learned weights", "rule id", compacted=True, partitions=1,
              doc="Current variant weights of strategy: bandit rules"),
    TopicSpec(FOLLOW_UPS, "json: pending follow-up", "follow-up id", compacted=True,
              partitions=1, doc="Follow-ups scheduled and not yet sent or cancelled"),
    TopicSpec(OUTBOX_CHANGES, "json: Debezium change record", "json: outbox row id",
              doc="Rows of the ERP's outbox table, streamed by Debezium (pipeline/outbox.py)"),
)

EVENT_TOPICS: dict[str, str] = {
    ORDER_STATUS: "order_status_changed",
    PAYMENT_DUE: "payment_due",
    PROMOTION: "promotion",
    SERVICE_NOTICE: "service_notice",
}

BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in CATALOG}


def new_topics(settings: Settings) -> list[NewTopic]:
    """The catalog as admin-client topic definitions for `settings`."""
    topics = []
    for spec in CATALOG:
        config = {"cleanup.policy": "delete", **owned_configs(spec)}
        if spec.compacted:
            config["min.cleanable.dirty.ratio"] = "0.1"
        topics.append(
            NewTopic(
                settings.topic(spec.name),
                num_partitions=spec.partitions or settings.partitions,
                replication_factor=1,
                config=config,
            )
        )
    return topics


def owned_configs(spec: TopicSpec) -> dict[str, str]:
    """The configs of an existing topic that the catalog keeps as it says: a compacted
    topic's cleanup policy, and the retention of a topic whose spec sets one. A table
    topic that Kafka created itself on a first write (auto.create.topics.enable) has
    `delete` and would lose its keys, opt-outs among them, after the broker's retention; an
    older catalog's forwarded receipts had no retention, its audience snapshots the
    broker's. Everything else (other plain topics' retention, ...) stays the operator's."""
    configs: dict[str, str] = {}
    if spec.compacted:
        configs["cleanup.policy"] = "compact" if spec.retention_ms is None else "compact,delete"
    if spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    return configs


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create every catalog topic that does not exist yet and set the `owned_configs` of
    those that do; returns name -> 'created', 'exists' or 'updated: <what changed>', once
    every topic it created has a leader for each partition (usable at once).

    Idempotent: running it twice changes nothing. Raises RuntimeError on any other failure.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [t for t in new_topics(settings) if t.topic not in existing]
    result = {t.topic: "exists" for t in new_topics(settings) if t.topic in existing}
    if wanted:
        futures = admin.create_topics(wanted, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                result[name] = "created"
            except Exception as exc:  # KafkaException wraps TOPIC_ALREADY_EXISTS races
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"could not create topic {name}: {exc}") from exc
                # made meanwhile (by the broker on a first write, or a topic just created
                # that the listing did not show yet): its configs are aligned below
                result[name] = "exists"
                existing.add(name)
        wait_until_ready(settings, [t.topic for t in wanted], timeout)
    result.update(_align_configs(admin, settings, existing, timeout))
    return result


def _align_configs(admin: AdminClient, settings: Settings, existing: set[str],
                   timeout: float) -> dict[str, str]:
    """Set the `owned_configs` that differ on existing catalog topics; name -> what changed.
    Returns once the broker describes the new values (it answers the change before it
    applies it, and a second run would otherwise set it again)."""
    owned = {settings.topic(spec.name): owned_configs(spec) for spec in CATALOG}
    changes = _config_diff(admin, {name: configs for name, configs in owned.items()
                                   if configs and name in existing}, timeout)
    if not changes:
        return {}
    alter = [ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        for key, (_was, value) in diff.items()]) for name, diff in changes.items()]
    for resource, future in admin.incremental_alter_configs(alter, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:
            raise RuntimeError(f"could not set {', '.join(changes[resource.name])} of topic "
                               f"{resource.name}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while pending := _config_diff(admin, {name: owned[name] for name in changes}, timeout):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker still describes the old configs of "
                               f"{', '.join(pending)} {timeout:.0f} s after setting them")
        time.sleep(0.2)
    return {name: "updated: " + "; ".join(f"{key} {value} (was {was})"
                                          for key, (was, value) in diff.items())
            for name, diff in changes.items()}


def _config_diff(admin: AdminClient, wanted: dict[str, dict[str, str]],
                 timeout: float) -> dict[str, dict[str, tuple[str | None, str]]]:
    """Topic -> key -> (value now, value wanted), for the keys of `wanted` that differ."""
    if not wanted:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted]
    changes: dict[str, dict[str, tuple[str | None, str]]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            current = future.result(timeout=timeout)
        except Exception as exc:
            raise RuntimeError(f"could not read the configs of topic {resource.name}: {exc}") from exc
        diff = {key: (current[key].value if key in current else None, value)
                for key, value in wanted[resource.name].items()
                if key not in current or not _same(current[key].value, value)}
        if diff:
            changes[resource.name] = diff
    return changes


def _same(described: str | None, wanted: str) -> bool:
    """A described config is the wanted one; a list ("compact,delete") in any order."""
    if described is None:
        return False
    return sorted(v.strip() for v in described.split(",")) == sorted(wanted.split(","))


def ensure_topics(settings: Settings, names: list[str], partitions: int | None = None) -> None:
    """Create plain (delete-policy) topics by full name unless they exist (idempotent).

    Stages call it for their internal topics before they subscribe: a consumer that
    subscribes to a missing topic may ignore it until its next metadata refresh.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=30).topics)
    wanted = [NewTopic(n, num_partitions=partitions or settings.partitions, replication_factor=1)
              for n in names if n not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=30).items():
        try:
            future.result(timeout=30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
    wait_until_ready(settings, [t.topic for t in wanted])


def wait_until_ready(settings: Settings, names: list[str], timeout: float = 60.0) -> None:
    """Block until every topic in `names` (full names) is in the cluster metadata with a
    leader for each partition.

    Faust subscribes once and ignores topics missing at that moment ("Ignoring missing
    topic"), so a stage started right after the broker or the topics would otherwise sit
    idle. Raises RuntimeError naming the topics still missing after `timeout` seconds.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(timeout=10)
        missing = [n for n in names if not _led(meta.topics.get(n))]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics not ready after {timeout:.0f} s: {missing}; "
                               f"run `rassylka topics create` against {settings.kafka_bootstrap}")
        time.sleep(0.2)


def ready_partitions(client: Consumer | AdminClient, name: str,
                     timeout: float = 60.0) -> list[int]:
    """The partitions of topic `name`, once the metadata shows a leader for each of them.

    A broker answers a topic it has just created before every part of it knows the topic:
    asked at once, it can still say "unknown topic" or have no leader, and a reader that
    took the empty partition list would follow nothing. Raises RuntimeError after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        topic = client.list_topics(name, timeout=10).topics.get(name)
        if _led(topic):
            return sorted(topic.partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {name} has no partitions with a leader after "
                               f"{timeout:.0f} s; run `rassylka topics create`")
        time.sleep(0.2)


def _led(topic: TopicMetadata | None) -> bool:
    """The topic is known, without error, and every partition of it has a leader."""
    return (topic is not None and topic.error is None and bool(topic.partitions)
            and all(p.leader >= 0 for p in topic.partitions.values()))


def drop_namespace(settings: Settings) -> int:
    """Delete the topics of a finished throwaway run (a bench run or a test: its catalog
    topics, changelogs and Faust's own, by `topic_prefix` and `app_id`). Left behind, a
    day of runs grows the broker by thousands of partitions. Returns how many were
    deleted; a broker that does not answer keeps them (logged)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 4})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics
                 if t.startswith((settings.topic_prefix, settings.app_id))]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                future.result(60)
    except KafkaException as exc:
        log.warning("could not delete the run's topics (%s)", exc.args[0])
        return 0
    return len(names)
