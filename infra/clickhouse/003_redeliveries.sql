-- Requests delivered to the sender again (sms.redeliveries: a republished event, a
-- replayed consumer group, a router restart). They never get a second outcome in
-- `messages`; each delivery is one row here, so analysts can count replays. `detail`
-- names the delivery (topic, partition, offset), so two in the same millisecond differ.
CREATE TABLE IF NOT EXISTS {db}.redeliveries
(
    request_id  String,
    lane        LowCardinality(String),
    rule_id     LowCardinality(String),
    campaign_id LowCardinality(String),
    detail      String,
    seen_at     DateTime64(3, 'UTC'),
    day         Date DEFAULT toDate(seen_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (request_id, seen_at, detail)
SETTINGS non_replicated_deduplication_window = 10000;
