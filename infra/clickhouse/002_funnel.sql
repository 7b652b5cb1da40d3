-- The daily funnel: one row per (day, lane, rule, campaign, variant, operator, region).
--
-- Why a plain VIEW and not materialised rollups: receipts, clicks and conversions carry
-- only a message_id, not the message's rule / variant / operator / region, so a
-- materialised view on them cannot place a row in its funnel cell without a join at
-- insert time (which breaks when a receipt arrives before its outcome row). And a
-- SummingMergeTree fed by MVs counts every duplicate that escaped token dedup, forever;
-- a per-message AggregatingMergeTree fixes that only at the cost of a second GROUP BY on
-- every read. This view instead reads the deduplicated facts (FINAL / GROUP BY
-- message_id) and joins them to the message they belong to, so its numbers are exact
-- under replays and independent of arrival order. It is a cohort funnel: a receipt,
-- click or conversion counts on the day and in the cell of the message it answers.
-- Counts are per message and every message lies in exactly one cell, so summing cells
-- over any coarser grouping stays exact (pipeline.analytics.report does that).
--
--   sent       messages submitted to a gateway
--   delivered  messages with at least one DELIVRD receipt
--   clicked    messages with at least one click (unique messages, not clicks)
--   converted  messages credited with at least one conversion
--   revenue_minor  revenue of those conversions, minor units, each conversion once
--   cost       cost of all outcomes (suppressed ones cost 0)

CREATE VIEW IF NOT EXISTS {db}.funnel_daily AS
SELECT
    m.day AS day,
    m.lane AS lane,
    m.rule_id AS rule_id,
    m.campaign_id AS campaign_id,
    m.variant AS variant,
    m.operator AS operator,
    m.region AS region,
    count() AS outcomes,
    countIf(m.status = 'submitted') AS sent,
    countIf(d.delivered = 1) AS delivered,
    countIf(k.clicked = 1) AS clicked,
    countIf(v.conversions > 0) AS converted,
    sum(v.conversions) AS conversions,
    sum(v.revenue_minor) AS revenue_minor,
    sum(m.cost) AS cost
FROM {db}.messages AS m FINAL
LEFT JOIN
(
    SELECT message_id, toUInt8(1) AS delivered
    FROM {db}.receipts
    WHERE state = 'DELIVRD'
    GROUP BY message_id
) AS d ON d.message_id = m.message_id
LEFT JOIN
(
    SELECT message_id, toUInt8(1) AS clicked
    FROM {db}.clicks
    GROUP BY message_id
) AS k ON k.message_id = m.message_id
LEFT JOIN
(
    SELECT message_id, count() AS conversions, sum(revenue_minor) AS revenue_minor
    FROM {db}.conversions FINAL
    GROUP BY message_id
) AS v ON v.message_id = m.message_id
GROUP BY day, lane, rule_id, campaign_id, variant, operator, region;
