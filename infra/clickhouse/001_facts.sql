-- Fact tables of the analytics sink: one table per Kafka topic, one row per record.
-- `{db}` is replaced by the target database (`rassylka`) when `migrate` applies this file.
-- A statement ends with `;` at the end of a line.
--
-- Deduplication, two layers:
-- 1. Every batch is inserted with `insert_deduplication_token` derived from the Kafka
--    offsets it covers (topic, partition, first, last). A sink that crashes after the
--    insert but before committing offsets re-reads the same records, builds the same
--    batch, and ClickHouse drops the repeated block at insert time, so plain count()
--    stays exact in this common case. Non-replicated MergeTree only remembers block
--    ids when `non_replicated_deduplication_window` > 0 (the last N blocks per table).
-- 2. Batches that do not line up after a restart (another flush size or age, a
--    rebalance), or a producer that published a record twice, still leave duplicates.
--    Each table is therefore a ReplacingMergeTree whose sorting key is the record's
--    natural id; background merges collapse duplicates eventually, and queries that
--    must be exact read with FINAL (or count uniqExact of the id).
-- Dimension strings absent in a record are stored as '' (not Nullable: cheaper, simpler
-- GROUP BY). Times are UTC DateTime64(3); `day` is the UTC date of the record's time.
-- Phone numbers are never stored in clear: `phone_hash` is keyed BLAKE2b-128 hex,
-- `phone_masked` keeps the prefix and last two digits (+7916*****67).

CREATE DATABASE IF NOT EXISTS {db};

-- One row per terminal outcome of a notification request (sms.outcomes).
-- The version column keeps the latest decision if a request was ever decided twice.
CREATE TABLE IF NOT EXISTS {db}.messages
(
    request_id   String,
    message_id   String,
    status       LowCardinality(String),  -- submitted, suppressed, rejected, expired, failed
    reason       LowCardinality(String),  -- '' when submitted
    lane         LowCardinality(String),
    rule_id      LowCardinality(String),
    template_id  LowCardinality(String),
    variant      LowCardinality(String),
    campaign_id  LowCardinality(String),
    customer_id  String,
    phone_hash   String,
    phone_masked String,
    region       LowCardinality(String),
    operator     LowCardinality(String),
    gateway      LowCardinality(String),
    segments     UInt16,
    encoding     LowCardinality(String),
    cost         Float64,
    attempts     UInt16,
    event_time   DateTime64(3, 'UTC'),
    decided_at   DateTime64(3, 'UTC'),
    day          Date DEFAULT toDate(decided_at)
)
ENGINE = ReplacingMergeTree(decided_at)
PARTITION BY toYYYYMM(day)
ORDER BY message_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Delivery receipts (sms.receipts): one per segment and state reported by the SMSC.
CREATE TABLE IF NOT EXISTS {db}.receipts
(
    message_id         String,
    gateway_message_id String,
    state              LowCardinality(String),  -- DELIVRD, UNDELIV, EXPIRED, REJECTD, ...
    error_code         LowCardinality(String),
    segment            UInt16,
    segments           UInt16,
    gateway            LowCardinality(String),
    received_at        DateTime64(3, 'UTC'),
    day                Date DEFAULT toDate(received_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (message_id, gateway_message_id, state)
SETTINGS non_replicated_deduplication_window = 10000;

-- Tracked link opens (sms.clicks).
CREATE TABLE IF NOT EXISTS {db}.clicks
(
    click_id   String,
    code       String,
    message_id String,
    url        String,
    user_agent String,
    clicked_at DateTime64(3, 'UTC'),
    day        Date DEFAULT toDate(clicked_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (message_id, click_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Orders paid after an SMS, attributed last-touch (sms.conversions).
CREATE TABLE IF NOT EXISTS {db}.conversions
(
    conversion_id String,
    order_id      String,
    customer_id   String,
    message_id    String,
    touch         LowCardinality(String),  -- click or delivered
    touch_at      DateTime64(3, 'UTC'),
    revenue_minor Int64,
    currency      LowCardinality(String),
    rule_id       LowCardinality(String),
    campaign_id   LowCardinality(String),
    variant       LowCardinality(String),
    converted_at  DateTime64(3, 'UTC'),
    day           Date DEFAULT toDate(converted_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY conversion_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Replies from customers (sms.inbound): the text is kept (numbers in it are masked),
-- the sender only hashed and masked.
CREATE TABLE IF NOT EXISTS {db}.inbound
(
    inbound_id    String,
    sender_hash   String,
    sender_masked String,
    to_number     LowCardinality(String),  -- our number or sender id, not a customer's
    text          String,
    gateway       LowCardinality(String),
    received_at   DateTime64(3, 'UTC'),
    day           Date DEFAULT toDate(received_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY inbound_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Opt-ins and opt-outs (consent changes topic). A change is identified by the number,
-- scope, time and new status; the compacted topic may replay it after compaction.
CREATE TABLE IF NOT EXISTS {db}.consent_changes
(
    phone_hash   String,
    phone_masked String,
    scope        LowCardinality(String),  -- marketing or transactional
    status       LowCardinality(String),  -- opt_in or opt_out
    source       LowCardinality(String),  -- sms_reply, web_form, crm, support, import
    customer_id  String,
    evidence     String,
    changed_at   DateTime64(3, 'UTC'),
    day          Date DEFAULT toDate(changed_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (phone_hash, scope, changed_at, status)
SETTINGS non_replicated_deduplication_window = 10000;
