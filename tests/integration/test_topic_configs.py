"""`create_topics` (`rassylka topics create`) on topics that exist already.

A table topic created by the broker itself, on a first write before `topics create` ran
(the broker's auto.create.topics.enable), has the delete policy: its keys, opt-outs among
them, would go after the broker's retention. An older catalog made the forwarded receipts
plain compacted, so a key a crashed forwarder left stayed forever. `topics create` sets
what the catalog owns on such topics (`owned_configs`) and leaves the rest alone.
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from pipeline import topics
from pipeline.settings import Settings
from pipeline.topics import create_topics


def _configs(admin: AdminClient, name: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    return {key: entry.value for key, entry in described.items()}


def test_existing_topics_get_the_catalogs_cleanup_policy_and_keep_the_rest(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    consent = settings.topic(topics.CONSENT)
    forwarded = settings.topic(topics.RECEIPTS_FORWARDED)
    outcomes = settings.topic(topics.OUTCOMES)
    # as the broker would make them on a first write, or an older catalog did
    made = admin.create_topics([
        NewTopic(consent, 2, 1, config={"cleanup.policy": "delete", "retention.ms": "3600000"}),
        NewTopic(forwarded, 2, 1, config={"cleanup.policy": "compact",
                                          "retention.ms": "604800000"}),
        NewTopic(outcomes, 2, 1, config={"retention.ms": "7200000"}),
    ])
    for future in made.values():
        future.result(timeout=30)

    result = create_topics(settings)

    assert result[consent] == "updated: cleanup.policy compact (was delete)"
    assert result[forwarded] == ("updated: cleanup.policy compact,delete (was compact); "
                                 "retention.ms 86400000 (was 604800000)")
    assert result[outcomes] == "exists"  # a plain topic's retention is the operator's
    assert result[settings.topic(topics.PROFILES)] == "created"
    assert _configs(admin, consent)["cleanup.policy"] == "compact"
    forwarded_now = _configs(admin, forwarded)
    assert forwarded_now["cleanup.policy"] == "compact,delete"
    assert forwarded_now["retention.ms"] == "86400000"
    assert _configs(admin, outcomes)["retention.ms"] == "7200000"

    again = create_topics(settings)  # idempotent: nothing left to change
    assert {again[consent], again[forwarded], again[outcomes]} == {"exists"}


def test_created_topics_are_usable_when_create_topics_returns(settings: Settings) -> None:
    """Regression: a broker answers CreateTopics before its metadata knows the topic; under
    load a test that described a topic right after `create_topics` got "unknown topic"
    (2 tests of 1,415 in a CI run). `create_topics` now returns once every topic it
    created has a leader for each partition."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    result = create_topics(settings)

    created = [name for name, what in result.items() if what == "created"]
    assert len(created) == len(topics.CATALOG)
    meta = admin.list_topics(timeout=10).topics
    for name in created:
        assert meta[name].error is None and meta[name].partitions, name
        assert all(p.leader >= 0 for p in meta[name].partitions.values()), name
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in created]
    for future in admin.describe_configs(resources).values():
        assert "cleanup.policy" in future.result(timeout=30)
