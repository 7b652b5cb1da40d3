"""Funnel reports for analysts: sent → delivered → clicked → converted, with money.

`funnel` is called by the report CLI (and the strategy stage) with a grouping, filters and
a period; it reads the `funnel_daily` view, which is exact under replays (see
infra/clickhouse/002_funnel.sql). The renderers turn its rows into a terminal table,
CSV or JSON.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.table import Table

from connectors.clickhouse import DEFAULT_DATABASE, Client

DIMENSIONS = ("day", "lane", "rule_id", "campaign_id", "variant", "operator", "region")
FILTERABLE = ("lane", "rule_id", "campaign_id", "variant", "operator", "region")
_ALIASES = {"rule": "rule_id", "campaign": "campaign_id"}
METRICS = (
    "sent",
    "delivered",
    "clicked",
    "converted",
    "delivery_rate",
    "click_rate",
    "conversion_rate",
    "revenue",
    "cost",
)
_RATES = {"delivery_rate", "click_rate", "conversion_rate"}

DateLike = dt.date | str


def funnel(
    client: Client,
    group_by: Sequence[str] = (),
    filters: Mapping[str, str | Iterable[str]] | None = None,
    since: DateLike | None = None,
    until: DateLike | None = None,
    *,
    database: str = DEFAULT_DATABASE,
) -> list[dict[str, Any]]:
    """Funnel rows, one per combination of `group_by` (one total row when empty).

    `group_by` ⊆ {day, lane, rule_id, campaign_id, variant, operator, region};
    `filters` maps a dimension (or `rule` / `campaign`) to a value or a list of values;
    `since` / `until` are days, both inclusive, None for open. Rates: delivery_rate =
    delivered / sent, click_rate = clicked / delivered, conversion_rate = converted /
    delivered (0.0 when the denominator is 0). Revenue is in major units (minor / 100),
    cost in the route currency. Unknown dimensions raise ValueError.
    """
    dims = [_dimension(name, DIMENSIONS) for name in group_by]
    if len(set(dims)) != len(dims):
        raise ValueError(f"repeated dimension in group_by: {list(group_by)}")
    where: list[str] = []
    params: dict[str, Any] = {}
    if since is not None:
        where.append("day >= {since:Date}")
        params["since"] = _day(since)
    if until is not None:
        where.append("day <= {until:Date}")
        params["until"] = _day(until)
    for name, value in (filters or {}).items():
        column = _dimension(name, FILTERABLE)
        values = [value] if isinstance(value, str) else [str(v) for v in value]
        where.append(f"{column} IN {{f_{column}:Array(String)}}")
        params[f"f_{column}"] = values
    select = ", ".join(
        [*dims]
        + [
            "sum(sent) AS sent",
            "sum(delivered) AS delivered",
            "sum(clicked) AS clicked",
            "sum(converted) AS converted",
            "sum(revenue_minor) AS revenue_minor",
            "sum(cost) AS total_cost",
        ]
    )
    sql = f"SELECT {select} FROM {database}.funnel_daily"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if dims:
        sql += f" GROUP BY {', '.join(dims)} ORDER BY {', '.join(dims)}"
    return [_finish(row, dims) for row in client.query(sql, parameters=params)]


def empty_store_hint(
    url: str, rows: Sequence[Mapping[str, Any]], demo_url: str | None = None
) -> str | None:
    """How to read the demo's data, when the report read `url` and found no message sent
    while `demo_url` (the demo's own chDB folder, when it exists) is another store."""
    if not demo_url or demo_url == url or any(int(row.get("sent") or 0) for row in rows):
        return None
    return (f"no messages in {url}; `make demo` keeps its data apart, read it with: "
            f"CLICKHOUSE_URL={demo_url} rassylka report")


def render_table(rows: Sequence[Mapping[str, Any]], title: str | None = "Funnel") -> Table:
    """A rich table of report rows: dimensions left, numbers right, rates as percents."""
    table = Table(title=title)
    if not rows:
        table.add_column("no data")
        return table
    columns = list(rows[0])
    for name in columns:
        numeric = name in METRICS
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(name, row[name]) for name in columns))
    return table


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Report rows as CSV with a header line ('' when there are no rows)."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    return out.getvalue()


def to_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Report rows as a JSON array of objects (days as ISO dates)."""
    return json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows], ensure_ascii=False)


def _finish(raw: Mapping[str, Any], dims: Sequence[str]) -> dict[str, Any]:
    sent, delivered = int(raw["sent"]), int(raw["delivered"])
    clicked, converted = int(raw["clicked"]), int(raw["converted"])
    row: dict[str, Any] = {name: raw[name] for name in dims}
    row.update(
        sent=sent,
        delivered=delivered,
        clicked=clicked,
        converted=converted,
        delivery_rate=_rate(delivered, sent),
        click_rate=_rate(clicked, delivered),
        conversion_rate=_rate(converted, delivered),
        revenue=round(int(raw["revenue_minor"]) / 100, 2),
        cost=round(float(raw["total_cost"]), 4),
    )
    return row


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _dimension(name: str, allowed: Sequence[str]) -> str:
    column = _ALIASES.get(name, name)
    if column not in allowed:
        raise ValueError(f"unknown dimension {name!r}; choose from {', '.join(allowed)}")
    return column


def _day(value: DateLike) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


def _cell(name: str, value: Any) -> str:
    if name in _RATES:
        return f"{value * 100:.1f}%"
    if name in ("revenue", "cost"):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    text = _plain(value)
    return str(text) if text != "" else "—"


EXAMPLE_QUERIES: list[tuple[str, str]] = [
    (
        "Delivery by operator, last 7 days",
        """SELECT operator,
       sum(sent) AS sent_messages,
       sum(delivered) AS delivered_messages,
       round(delivered_messages / nullIf(sent_messages, 0), 4) AS delivery_rate
FROM rassylka.funnel_daily
WHERE day >= today() - 7
GROUP BY operator
ORDER BY sent_messages DESC""",
    ),
    (
        "Funnel by template variant per rule, last 30 days",
        """SELECT rule_id, variant,
       sum(sent) AS sent_messages, sum(delivered) AS delivered_messages,
       sum(clicked) AS clicked_messages, sum(converted) AS converted_messages,
       round(clicked_messages / nullIf(delivered_messages, 0), 4) AS click_rate,
       round(converted_messages / nullIf(delivered_messages, 0), 4) AS conversion_rate
FROM rassylka.funnel_daily
WHERE day >= today() - 30
GROUP BY rule_id, variant
ORDER BY rule_id, variant""",
    ),
    (
        "Cost per conversion by campaign",
        """SELECT campaign_id,
       sum(cost) AS total_cost,
       sum(converted) AS converted_messages,
       sum(revenue_minor) / 100 AS revenue,
       round(total_cost / nullIf(converted_messages, 0), 2) AS cost_per_conversion
FROM rassylka.funnel_daily
WHERE campaign_id != ''
GROUP BY campaign_id
ORDER BY total_cost DESC""",
    ),
    (
        "Opt-outs by day and source, last 30 days",
        """SELECT day, source, scope, uniqExact(phone_hash) AS numbers
FROM rassylka.consent_changes FINAL
WHERE status = 'opt_out' AND day >= today() - 30
GROUP BY day, source, scope
ORDER BY day, numbers DESC""",
    ),
    (
        "Why messages were not sent, last 7 days",
        """SELECT status, reason, lane, count() AS messages
FROM rassylka.messages FINAL
WHERE status != 'submitted' AND day >= today() - 7
GROUP BY status, reason, lane
ORDER BY messages DESC""",
    ),
]
