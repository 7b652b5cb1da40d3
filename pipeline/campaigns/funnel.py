"""A campaign's funnel by phase and variant, from ClickHouse.

The audience snapshot (`campaign_members`, one row per member with its phase) is joined
with the campaign's messages and what answered them (receipts, clicks, conversions, and
opt-outs of the same number after the message). Every member is counted once in its
phase; rollout members take the variant their message carried (the winner), the
holdout keeps variant '' and has no messages, which is what a lift is measured against.
Same definitions as `funnel_daily` (infra/clickhouse/002_funnel.sql).
"""

from __future__ import annotations

from typing import Any

from connectors.clickhouse import DEFAULT_DATABASE

COLUMNS = ("phase", "variant", "targeted", "submitted", "delivered", "clicked", "converted",
           "revenue_minor", "opt_outs", "cost")

_SQL = """
SELECT
    mb.phase AS phase,
    if(mb.variant != '', mb.variant, m.variant) AS variant,
    count() AS targeted,
    countIf(m.status = 'submitted') AS submitted,
    countIf(d.delivered = 1) AS delivered,
    countIf(k.clicked = 1) AS clicked,
    countIf(v.conversions > 0) AS converted,
    sum(v.revenue_minor) AS revenue_minor,
    countIf(m.status = 'submitted' AND o.last_opt_out >= m.decided_at) AS opt_outs,
    sum(m.cost) AS cost
FROM
(
    SELECT customer_id, phase, variant
    FROM {db}.campaign_members FINAL
    WHERE campaign_id = {campaign:String}
) AS mb
LEFT JOIN
(
    SELECT customer_id, message_id, status, variant, cost, phone_hash, decided_at
    FROM {db}.messages FINAL
    WHERE campaign_id = {campaign:String}
) AS m ON m.customer_id = mb.customer_id
LEFT JOIN
(
    SELECT message_id, toUInt8(1) AS delivered
    FROM {db}.receipts
    WHERE state = 'DELIVRD'
    GROUP BY message_id
) AS d ON d.message_id = m.message_id AND m.message_id != ''
LEFT JOIN
(
    SELECT message_id, toUInt8(1) AS clicked FROM {db}.clicks GROUP BY message_id
) AS k ON k.message_id = m.message_id AND m.message_id != ''
LEFT JOIN
(
    SELECT message_id, count() AS conversions, sum(revenue_minor) AS revenue_minor
    FROM {db}.conversions FINAL
    GROUP BY message_id
) AS v ON v.message_id = m.message_id AND m.message_id != ''
LEFT JOIN
(
    SELECT phone_hash, max(changed_at) AS last_opt_out
    FROM {db}.consent_changes FINAL
    WHERE status = 'opt_out'
    GROUP BY phone_hash
) AS o ON o.phone_hash = m.phone_hash AND m.phone_hash != ''
GROUP BY phase, variant
ORDER BY phase = 'rollout', phase, variant
"""


def campaign_funnel(client: Any, campaign_id: str,
                    database: str = DEFAULT_DATABASE) -> list[dict[str, Any]]:
    """One dict per (phase, variant) with the `COLUMNS`: test first, rollout last."""
    rows = client.query(_SQL.replace("{db}", database), {"campaign": campaign_id})
    return [{name: row[name] for name in COLUMNS} for row in rows]
