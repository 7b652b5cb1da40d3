-- Campaign audiences and automatic decisions (pipeline/campaigns/), for analysts and for
-- the campaign funnel by phase and variant (pipeline/campaigns/funnel.py). Same
-- conventions as 001_facts.sql: ReplacingMergeTree on the natural id, exact reads FINAL.

-- The audience snapshot of every started campaign (campaigns.audience): one row per
-- member, frozen when the campaign started, with the member's phase (test, holdout,
-- rollout) and, in the test phase, its variant. Rollout members get the winner, which is
-- known later: their variant here is '' and their messages carry it. Join with messages
-- ON (campaign_id, customer_id); the holdout has no messages, which is what measures lift.
CREATE TABLE IF NOT EXISTS {db}.campaign_members
(
    campaign_id String,
    customer_id String,
    snapshot    String,                  -- the start's snapshot id
    phase       LowCardinality(String),  -- test, holdout, rollout
    variant     LowCardinality(String),  -- test phase: the variant tested; else ''
    time_zone   LowCardinality(String),
    frozen_at   DateTime64(3, 'UTC')     -- Kafka timestamp of the snapshot record
)
ENGINE = ReplacingMergeTree(frozen_at)
ORDER BY (campaign_id, customer_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Every automatic decision (campaigns.decisions): a campaign's test verdict (rollout,
-- no_winner, stop_guardrail) with the winner and P(best) per variant, and each weight
-- update of a `strategy: bandit` rule. `inputs` is the JSON of the numbers behind it
-- (per variant: targeted, delivered, successes, opt-outs, failures; the thresholds).
CREATE TABLE IF NOT EXISTS {db}.decisions
(
    decision_id      String,                  -- '<kind>:<subject>:<decided_at ms>'
    kind             LowCardinality(String),  -- campaign, bandit
    subject          String,                  -- campaign id or rule id
    action           LowCardinality(String),  -- rollout, no_winner, stop_guardrail; bandit: weights
    winner           String,                  -- '' when none
    reason           String,
    metric           LowCardinality(String),  -- click, conversion
    probabilities    Map(String, Float64),    -- P(best) per variant
    weights          Map(String, Float64),    -- bandit: the new weights
    previous_weights Map(String, Float64),    -- bandit: the weights replaced
    inputs           String,                  -- JSON
    decided_at       DateTime64(3, 'UTC'),
    day              Date DEFAULT toDate(decided_at)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY decision_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Whether each profile's number can take an SMS, as the sender's first check sees it:
-- number_status '' (fit), 'invalid_number' or 'not_mobile'; number_region the number's
-- own region (ISO 3166), which the sender checks against limits.yaml allowed_regions.
-- `rassylka campaign plan` counts the members the sender would reject.
ALTER TABLE {db}.profiles ADD COLUMN IF NOT EXISTS number_status LowCardinality(String) DEFAULT '' AFTER operator;
ALTER TABLE {db}.profiles ADD COLUMN IF NOT EXISTS number_region LowCardinality(String) DEFAULT '' AFTER number_status;
