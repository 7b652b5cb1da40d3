-- Profiles and order history, for audience segments (pipeline/campaigns/segments.py).
-- Same conventions as 001_facts.sql: batches carry an insert_deduplication_token, tables
-- are ReplacingMergeTree on the natural id (exact reads use FINAL), absent strings are '',
-- times are UTC DateTime64(3), phone numbers only hashed (keyed BLAKE2b-128) and masked.

-- Customer profiles (customers.profiles, compacted, keyed by customer_id): one row per
-- upsert or tombstone; FINAL keeps the latest per customer. A tombstone (profile
-- deleted) is a row with deleted = 1 and empty fields, so segments skip the customer
-- and analysts still see that the profile existed.
-- The version is `published_at`, the record's Kafka timestamp: a tombstone carries no
-- time of its own, so upserts and deletes are ordered on the one clock they share. At
-- equal versions the row inserted last wins (the later offset: the sink inserts in
-- consumption order).
-- Not partitioned: ReplacingMergeTree only replaces rows within one partition, and a
-- customer's next version must replace the previous one whenever it comes.
-- `phone_hash` is the hash of the number in E.164 (read in the profile's country), the
-- same hash as messages, inbound and consent_changes carry, so segments can join them.
-- `region` and `city` come from the profile's attributes (the schema has no such
-- fields); `operator` is the range holder of the number by prefix (phonenumbers), as in
-- messages.
CREATE TABLE IF NOT EXISTS {db}.profiles
(
    customer_id  String,
    phone_hash   String,
    phone_masked String,
    country      LowCardinality(String),
    region       LowCardinality(String),
    city         LowCardinality(String),
    locale       LowCardinality(String),
    time_zone    LowCardinality(String),
    operator     LowCardinality(String),
    segments     Array(LowCardinality(String)),
    attributes   Map(String, String),
    deleted      UInt8,
    updated_at   DateTime64(3, 'UTC'),  -- the profile's updated_at_ms, else published_at
    published_at DateTime64(3, 'UTC')   -- Kafka timestamp of the record: the version
)
ENGINE = ReplacingMergeTree(published_at)
ORDER BY customer_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Order status changes (events.order_status): one row per event, so an order's history
-- (created, paid, shipped, ...) is kept; count orders with uniqExact(order_id).
CREATE TABLE IF NOT EXISTS {db}.orders
(
    event_id        String,
    order_id        String,
    customer_id     String,
    status          LowCardinality(String),  -- created, paid, shipped, ready_for_pickup, delivered, cancelled
    previous_status LowCardinality(String),  -- '' when unknown
    amount_minor    Int64,
    currency        LowCardinality(String),
    source          LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    day             Date DEFAULT toDate(occurred_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 10000;
