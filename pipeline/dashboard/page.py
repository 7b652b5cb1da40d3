"""The dashboard page: HTML, its stylesheet and its script, served by `app.py`.

Kept as Python strings so they ship inside the package with no package-data rules. The
script fetches `/api/<chart>` for the window in the page's own query string, draws each
chart with Plotly (served locally at /static/plotly.min.js), and records what it drew for
tests and monitors: `data-points` on every `.chart` (the values plotted, 0 when empty),
`data-error` when its endpoint failed, `data-rows` on the decisions table, and
`data-ready="1"` on <body> once every chart is done.
"""

from __future__ import annotations

import html

# (endpoint, title, what it shows), in the page's order; endpoints are queries.CHARTS.
CARDS = (
    ("funnel", "Funnel over time",
     "Messages sent, delivered, clicked and converted, by the time they were decided (UTC)."),
    ("delivery_by_operator", "Delivery by operator",
     "Submitted and delivered messages per mobile operator; the rate with its 95% interval."),
    ("delivery_by_region", "Delivery by region",
     "Submitted and delivered messages per region; the rate with its 95% interval."),
    ("variants", "A/B variants",
     "Click and conversion rates of delivered messages per rule and variant, 95% Wilson "
     "intervals. Rules with one variant are left out."),
    ("cost", "Cost",
     "SMS cost (route currency) per campaign, else per rule; cost per converted message."),
    ("campaigns", "Campaigns by phase and variant",
     "Audience members targeted and what became of them, per campaign, phase and variant; "
     "the automatic decisions below."),
    ("not_sent", "Why messages were not sent",
     "Outcomes other than submitted, by status and reason, per lane."),
    ("opt_outs", "Opt-outs by source",
     "Numbers that opted out, per source (SMS reply, web form, CRM, ...) and scope."),
)

# Everything the page loads comes from the dashboard itself (no CDN): the browser is told so.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def render(title: str, store: str) -> str:
    """The page's HTML; `store` says which ClickHouse it reads (password redacted)."""
    cards = "\n".join(
        f'<section class="card{" wide" if name in ("funnel", "campaigns") else ""}">'
        f"<h2>{html.escape(heading)}</h2><p class=\"note\">{html.escape(note)}</p>"
        f'<div class="chart" id="chart-{name}" data-chart="{name}"></div>'
        + ('<table id="decisions" class="decisions"><thead><tr><th>decided (UTC)</th>'
           "<th>kind</th><th>subject</th><th>action</th><th>winner</th><th>P(best)</th>"
           "<th>reason</th></tr></thead><tbody></tbody></table>" if name == "campaigns" else "")
        + "</section>"
        for name, heading, note in CARDS
    )
    return _PAGE.format(title=html.escape(title), store=html.escape(store), cards=cards)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/plotly.min.js" defer></script>
<script src="/static/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>{title}</h1>
  <form id="window" method="get">
    <label>since <input type="date" name="since"></label>
    <label>until <input type="date" name="until"></label>
    <button type="submit">show</button>
    <span id="shown" class="note"></span>
  </form>
  <p class="note">Reading {store}. Days are UTC; the default is the last 30 days.</p>
</header>
<main>
{cards}
</main>
</body>
</html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
header { padding: 12px 24px; background: #fff; border-bottom: 1px solid #dde1e7; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 15px; margin: 0; }
form label { margin-right: 12px; }
.note { color: #5c6370; margin: 2px 0 6px; font-size: 12px; }
main { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px; padding: 14px 24px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 10px 12px; }
.card.wide { grid-column: 1 / -1; }
.chart { height: 300px; }
.empty, .failed { height: 300px; display: flex; align-items: center; justify-content: center; color: #8a909c; }
.failed { color: #b3261e; }
table.decisions { border-collapse: collapse; width: 100%; font-size: 12px; margin-top: 6px; }
table.decisions th, table.decisions td { border-bottom: 1px solid #eceef2; padding: 3px 6px; text-align: left; }
"""

SCRIPT = r"""
"use strict";
const COLORS = ["#3b6fd4", "#2e9d6b", "#e0912f", "#c2476b", "#7d5bc9", "#4aa3b8", "#8a909c"];
const CONFIG = {displaylogo: false, responsive: true,
  modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]};
const sum = (a) => a.reduce((s, v) => s + v, 0);
const pct = {tickformat: ".0%", rangemode: "tozero"};

function base(extra) {
  return Object.assign({margin: {l: 56, r: 56, t: 30, b: 60}, barmode: "group",
    legend: {orientation: "h", y: -0.2}, font: {size: 11}, height: 300}, extra || {});
}

function bars(name, x, y, color, extra) {
  return Object.assign({type: "bar", name: name, x: x, y: y, marker: {color: color}}, extra || {});
}

function interval(rows, key) {  // Plotly error bars from <key>_low / <key>_high
  return {type: "data", symmetric: false, thickness: 1.2, width: 4,
    array: rows.map((r) => r[key + "_high"] - r[key + "_rate"]),
    arrayminus: rows.map((r) => r[key + "_rate"] - r[key + "_low"])};
}

function delivery(d) {
  const x = d.rows.map((r) => r.name);
  return {traces: [
    bars("sent", x, d.rows.map((r) => r.sent), COLORS[0]),
    bars("delivered", x, d.rows.map((r) => r.delivered), COLORS[1]),
    {type: "scatter", mode: "markers", name: "delivery rate (95% CI)", x: x, yaxis: "y2",
     y: d.rows.map((r) => r.delivery_rate), error_y: interval(d.rows, "delivery"),
     marker: {color: COLORS[3], size: 8}},
  ], layout: base({yaxis: {title: "messages"},
    yaxis2: Object.assign({overlaying: "y", side: "right", range: [0, 1.05]}, pct)})};
}

const CHARTS = {
  funnel(d) {
    const x = d.rows.map((r) => r.time.replace("T", " ").replace("Z", ""));
    const traces = ["sent", "delivered", "clicked", "converted"].map((key, i) => ({
      type: "scatter", mode: "lines+markers", name: key, x: x,
      y: d.rows.map((r) => r[key]), line: {color: COLORS[i]}}));
    const step = d.step_seconds >= 86400 ? "day" : d.step_seconds >= 3600
      ? (d.step_seconds / 3600) + " h" : d.step_seconds >= 60 ? (d.step_seconds / 60) + " min"
      : d.step_seconds + " s";
    return {traces: traces, layout: base({xaxis: {title: "decided at, UTC (per " + step + ")"},
      yaxis: {title: "messages", rangemode: "tozero"}})};
  },
  delivery_by_operator: delivery,
  delivery_by_region: delivery,
  variants(d) {
    const x = d.rows.map((r) => r.rule_id + " · " + r.variant);
    return {traces: [
      bars("click rate", x, d.rows.map((r) => r.click_rate), COLORS[0],
           {error_y: interval(d.rows, "click"),
            customdata: d.rows.map((r) => [r.clicked, r.delivered]),
            hovertemplate: "%{y:.1%} (%{customdata[0]} of %{customdata[1]} delivered)"}),
      bars("conversion rate", x, d.rows.map((r) => r.conversion_rate), COLORS[2],
           {error_y: interval(d.rows, "conversion"),
            customdata: d.rows.map((r) => [r.converted, r.delivered]),
            hovertemplate: "%{y:.1%} (%{customdata[0]} of %{customdata[1]} delivered)"}),
    ], layout: base({yaxis: Object.assign({title: "of delivered"}, pct)})};
  },
  campaigns(d) {
    const x = d.rows.map((r) => r.campaign_id + " · " + r.phase + (r.variant ? " " + r.variant : ""));
    const keys = ["targeted", "submitted", "delivered", "clicked", "converted", "opt_outs"];
    fillDecisions(d.decisions);
    return {traces: keys.map((key, i) => bars(key, x, d.rows.map((r) => r[key]), COLORS[i])),
      layout: base({yaxis: {title: "members"}})};
  },
  opt_outs(d) {
    const scopes = [...new Set(d.rows.map((r) => r.scope))];
    return {traces: scopes.map((scope, i) => {
      const rows = d.rows.filter((r) => r.scope === scope);
      return bars(scope, rows.map((r) => r.source), rows.map((r) => r.numbers), COLORS[i + 3]);
    }), layout: base({barmode: "stack", yaxis: {title: "numbers opted out"}})};
  },
  not_sent(d) {
    const lanes = [...new Set(d.rows.map((r) => r.lane))];
    return {traces: lanes.map((lane, i) => {
      const rows = d.rows.filter((r) => r.lane === lane);
      return bars(lane, rows.map((r) => r.messages), rows.map((r) => r.status + ": " + (r.reason || "—")),
                  COLORS[i + 2], {orientation: "h"});
    }), layout: base({barmode: "stack", margin: {l: 200, r: 20, t: 30, b: 60},
                      yaxis: {autorange: "reversed"}, xaxis: {title: "messages"}})};
  },
  cost(d) {
    const label = (r) => r.cost.toLocaleString("en", {maximumFractionDigits: 2}) +
      (r.cost_per_conversion === null ? "" : " · " + r.cost_per_conversion + " per conversion");
    return {traces: [
      bars("cost", d.rows.map((r) => r.cost), d.rows.map((r) => r.name), COLORS[2],
           {orientation: "h", text: d.rows.map(label), textposition: "auto",
            customdata: d.rows.map((r) => [r.sent, r.revenue]),
            hovertemplate: "%{x:,.2f} for %{customdata[0]} sent; revenue %{customdata[1]:,.2f}" +
              "<extra></extra>"}),
    ], layout: base({showlegend: false, margin: {l: 200, r: 20, t: 30, b: 50},
                     yaxis: {autorange: "reversed"}, xaxis: {title: "cost (route currency)"}})};
  },
};

function fillDecisions(decisions) {
  const table = document.getElementById("decisions");
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const d of decisions) {
    const best = Object.entries(d.probabilities || {}).map(([k, v]) => k + " " + (100 * v).toFixed(1) + "%");
    const row = body.insertRow();
    for (const text of [d.decided_at.replace("T", " ").slice(0, 19), d.kind, d.subject, d.action,
                        d.winner || "—", best.join(", "), d.reason]) {
      row.insertCell().textContent = text;
    }
  }
  table.dataset.rows = decisions.length;
}

function askedWindow() {
  const shown = new URLSearchParams();
  const asked = new URLSearchParams(location.search);
  for (const key of ["since", "until"]) {
    if (asked.get(key)) {
      shown.set(key, asked.get(key));
      document.querySelector("input[name=" + key + "]").value = asked.get(key);
    }
  }
  return shown;
}

async function draw(element, query) {
  const name = element.dataset.chart;
  try {
    const response = await fetch("/api/" + name + "?" + query);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    if (data.window) document.getElementById("shown").textContent =
      "showing " + data.window.since + " … " + data.window.until;
    const chart = CHARTS[name](data);
    const points = sum(chart.traces.map((t) => (t.y || []).filter((v) => v !== null).length));
    element.dataset.points = points;
    if (points === 0) {
      element.className = "chart empty";
      element.textContent = "no data in this window";
    } else {
      await Plotly.newPlot(element, chart.traces, chart.layout, CONFIG);
    }
  } catch (error) {
    element.dataset.points = 0;
    element.dataset.error = String(error.message || error);
    element.className = "chart failed";
    element.textContent = "could not load: " + element.dataset.error;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const query = askedWindow().toString();
  await Promise.all([...document.querySelectorAll(".chart")].map((el) => draw(el, query)));
  document.body.dataset.ready = "1";
});
"""
