"""The SQL behind each chart of the dashboard, one function per chart.

Every function takes the ClickHouse client (`connectors.clickhouse.Client`) and a
`Window` of days and returns a JSON-ready dict whose `rows` the page plots. Values reach
ClickHouse only as bound query parameters (`{since:Date}`); identifiers come from fixed
lists here. Every query is bounded: facts are read for the window's days only (answers to
a message — receipts, clicks, conversions — cannot be older than the window's first day),
and result rows are capped.

The funnel definitions are those of `rassylka.funnel_daily` (infra/clickhouse/002_funnel.sql)
and `rassylka report`: sent = submitted to a gateway, delivered = at least one DELIVRD
receipt, clicked = at least one click, converted = credited with at least one conversion,
each counted in the cell of the message it answers.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.clickhouse import DEFAULT_DATABASE
from pipeline.campaigns.funnel import campaign_funnel
from pipeline.dashboard.stats import wilson

DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_ROWS = 100
MAX_CAMPAIGNS = 10
# Seconds per point of the funnel over time: the smallest that keeps it under MAX_POINTS,
# so a demo of three minutes and a quarter of traffic both draw a readable curve.
STEPS = (10, 30, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_POINTS = 120


@dataclass(frozen=True)
class Window:
    """The days a chart covers, both inclusive (UTC dates, as the tables' `day`)."""

    since: dt.date
    until: dt.date

    @classmethod
    def parse(cls, since: str | None, until: str | None, today: dt.date) -> Window:
        """The window from `?since=&until=` (YYYY-MM-DD); default the last 30 days to `today`.

        Raises ValueError with a sentence for people on a malformed day, a reversed
        window or one longer than MAX_DAYS.
        """
        last = _day(until, "until") if until else today
        first = _day(since, "since") if since else last - dt.timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise ValueError(f"since ({first}) is after until ({last})")
        if (last - first).days + 1 > MAX_DAYS:
            raise ValueError(f"at most {MAX_DAYS} days at a time, asked for {first}..{last}")
        return cls(first, last)

    def params(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}


def _day(text: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a YYYY-MM-DD day") from None


# One row per message decided in the window, with what answered it (002_funnel.sql's joins).
_PER_MESSAGE = """
SELECT m.message_id AS message_id, m.decided_at AS decided_at, m.status AS status,
       m.lane AS lane, m.rule_id AS rule_id, m.campaign_id AS campaign_id,
       m.variant AS variant, m.operator AS operator, m.region AS region, m.cost AS cost,
       d.delivered AS delivered, k.clicked AS clicked,
       v.conversions AS conversions, v.revenue_minor AS revenue_minor
FROM
(
    SELECT message_id, decided_at, status, lane, rule_id, campaign_id, variant, operator,
           region, cost
    FROM {db}.messages FINAL
    WHERE day BETWEEN {since:Date} AND {until:Date}
) AS m
LEFT JOIN
(
    SELECT message_id, toUInt8(1) AS delivered FROM {db}.receipts
    WHERE state = 'DELIVRD' AND day >= {since:Date}
    GROUP BY message_id
) AS d ON d.message_id = m.message_id
LEFT JOIN
(
    SELECT message_id, toUInt8(1) AS clicked FROM {db}.clicks
    WHERE day >= {since:Date}
    GROUP BY message_id
) AS k ON k.message_id = m.message_id
LEFT JOIN
(
    SELECT message_id, count() AS conversions, sum(revenue_minor) AS revenue_minor
    FROM {db}.conversions FINAL
    WHERE day >= {since:Date}
    GROUP BY message_id
) AS v ON v.message_id = m.message_id
"""

_COUNTS = """
    countIf(status = 'submitted') AS sent,
    countIf(delivered = 1) AS delivered,
    countIf(clicked = 1) AS clicked,
    countIf(conversions > 0) AS converted,
    sum(revenue_minor) AS revenue_minor,
    sum(cost) AS cost
"""


def funnel(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    """Sent → delivered → clicked → converted per time step (10 s to a day, by the span)."""
    span = client.query(
        f"SELECT count() AS n, min(decided_at) AS first, max(decided_at) AS last "
        f"FROM {database}.messages WHERE day BETWEEN {{since:Date}} AND {{until:Date}}",
        window.params(),
    )[0]
    step = pick_step((span["last"] - span["first"]).total_seconds() if span["n"] else 0)
    rows = client.query(
        f"SELECT toStartOfInterval(decided_at, toIntervalSecond({{step:UInt32}})) AS time, "
        f"{_COUNTS} FROM ({_sql(_PER_MESSAGE, database)}) GROUP BY time ORDER BY time "
        f"LIMIT {MAX_POINTS * 2}",
        {**window.params(), "step": step},
    )
    return {"step_seconds": step, "rows": _plain(rows)}


def pick_step(span_seconds: float) -> int:
    """The smallest of STEPS that draws `span_seconds` in at most MAX_POINTS points."""
    for step in STEPS:
        if span_seconds / step <= MAX_POINTS:
            return step
    return STEPS[-1]


def delivery_by(dimension: str) -> Callable[..., dict[str, Any]]:
    """The chart of delivery per `dimension` (operator or region) of submitted messages."""
    if dimension not in ("operator", "region"):
        raise ValueError(f"no delivery chart by {dimension!r}")

    def chart(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
        rows = client.query(
            f"SELECT {dimension} AS name, {_COUNTS} FROM ({_sql(_PER_MESSAGE, database)}) "
            f"WHERE status = 'submitted' GROUP BY name ORDER BY sent DESC, name "
            f"LIMIT {MAX_ROWS}",
            window.params(),
        )
        for row in rows:
            row["name"] = row["name"] or "(unknown)"
            _rate(row, "delivery", row["delivered"], row["sent"])
        return {"rows": _plain(rows)}

    chart.__doc__ = f"Sent and delivered messages by {dimension}, with the delivery rate."
    return chart


def variants(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    """A/B variants of every rule sending more than one: click and conversion rates of
    delivered messages, each with its 95% Wilson interval."""
    rows = client.query(
        f"SELECT rule_id, variant, {_COUNTS} FROM ({_sql(_PER_MESSAGE, database)}) "
        f"WHERE variant != '' GROUP BY rule_id, variant ORDER BY rule_id, variant "
        f"LIMIT {MAX_ROWS}",
        window.params(),
    )
    per_rule: dict[str, int] = {}
    for row in rows:
        per_rule[row["rule_id"]] = per_rule.get(row["rule_id"], 0) + 1
    tested = [row for row in rows if per_rule[row["rule_id"]] > 1]
    for row in tested:
        _rate(row, "click", row["clicked"], row["delivered"])
        _rate(row, "conversion", row["converted"], row["delivered"])
    return {"confidence": 0.95, "rows": _plain(tested)}


def campaigns(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    """Campaigns started in the window (the latest MAX_CAMPAIGNS): their funnel by phase
    and variant (`pipeline.campaigns.funnel`), and the automatic decisions of the window
    (campaign verdicts and bandit weight updates)."""
    started = client.query(
        f"SELECT campaign_id, min(frozen_at) AS started, count() AS members "
        f"FROM {database}.campaign_members FINAL "
        f"WHERE toDate(frozen_at) BETWEEN {{since:Date}} AND {{until:Date}} "
        f"GROUP BY campaign_id ORDER BY started DESC LIMIT {MAX_CAMPAIGNS}",
        window.params(),
    )
    rows = []
    for campaign in started:
        for row in campaign_funnel(client, campaign["campaign_id"], database):
            rows.append({"campaign_id": campaign["campaign_id"], **row})
    decisions = client.query(
        f"SELECT decided_at, kind, subject, action, winner, reason, metric, probabilities, "
        f"weights FROM {database}.decisions FINAL "
        f"WHERE day BETWEEN {{since:Date}} AND {{until:Date}} "
        f"ORDER BY decided_at DESC LIMIT {MAX_ROWS}",
        window.params(),
    )
    return {"campaigns": _plain(started), "rows": _plain(rows), "decisions": _plain(decisions)}


def opt_outs(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    """Numbers that opted out in the window, by source (reply, web form, ...) and scope."""
    rows = client.query(
        f"SELECT source, scope, uniqExact(phone_hash) AS numbers, count() AS changes "
        f"FROM {database}.consent_changes FINAL "
        f"WHERE status = 'opt_out' AND day BETWEEN {{since:Date}} AND {{until:Date}} "
        f"GROUP BY source, scope ORDER BY numbers DESC, source, scope LIMIT {MAX_ROWS}",
        window.params(),
    )
    return {"rows": _plain(rows)}


def not_sent(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    """Messages that did not go out (suppressed, rejected, expired, failed): status, reason
    and lane, most frequent first."""
    rows = client.query(
        f"SELECT status, reason, lane, count() AS messages FROM {database}.messages FINAL "
        f"WHERE status != 'submitted' AND day BETWEEN {{since:Date}} AND {{until:Date}} "
        f"GROUP BY status, reason, lane ORDER BY messages DESC, status, reason, lane "
        f"LIMIT {MAX_ROWS}",
        window.params(),
    )
    return {"rows": _plain(rows)}


def cost(client: Any, window: Window, database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    """Cost (route currency) and revenue (major units) per campaign, else per rule, with
    the cost per converted message; the costliest first."""
    rows = client.query(
        f"SELECT if(campaign_id != '', concat('campaign ', campaign_id), "
        f"concat('rule ', rule_id)) AS name, {_COUNTS} "
        f"FROM ({_sql(_PER_MESSAGE, database)}) GROUP BY name "
        f"ORDER BY cost DESC, name LIMIT {MAX_ROWS}",
        window.params(),
    )
    for row in rows:
        row["revenue"] = row.pop("revenue_minor") / 100
        row["cost_per_conversion"] = (
            round(row["cost"] / row["converted"], 2) if row["converted"] else None
        )
    return {"rows": _plain(rows)}


# The charts of the page, by endpoint name (/api/<name>), in the page's order.
CHARTS: dict[str, Callable[..., dict[str, Any]]] = {
    "funnel": funnel,
    "delivery_by_operator": delivery_by("operator"),
    "delivery_by_region": delivery_by("region"),
    "variants": variants,
    "campaigns": campaigns,
    "opt_outs": opt_outs,
    "not_sent": not_sent,
    "cost": cost,
}


def _sql(template: str, database: str) -> str:
    return template.replace("{db}", database)


def _rate(row: dict[str, Any], name: str, successes: int, trials: int) -> None:
    rate, low, high = wilson(int(successes), int(trials))
    row[f"{name}_rate"], row[f"{name}_low"], row[f"{name}_high"] = rate, low, high


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with JSON values: times as ISO strings (UTC), decimals as floats."""
    return [{key: _value(value) for key, value in row.items()} for row in rows]


def _value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    return value
