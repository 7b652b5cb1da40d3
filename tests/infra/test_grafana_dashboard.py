"""infra/grafana/rassylka.json: a Grafana dashboard over the metrics of pipeline/metrics.py."""

from __future__ import annotations

import json
import re

from prometheus_client.metrics import MetricWrapperBase

from pipeline import metrics
from pipeline.settings import ROOT

DASHBOARD = ROOT / "infra" / "grafana" / "rassylka.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _panels() -> list[dict]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [p for p in board["panels"] if p["type"] != "row"]


def _exported() -> set[str]:
    """The sample names the workers export: `rassylka_outcomes_total`, `..._bucket`, ..."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_every_panel_queries_rassylka_metrics_through_the_datasource_variable() -> None:
    panels = _panels()
    assert panels and len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert re.search(r"\brassylka_\w+", target["expr"]), (panel["title"], target["expr"])


def test_every_metric_named_is_one_the_workers_export() -> None:
    exported = _exported()
    named = {name for panel in _panels() for target in panel["targets"]
             for name in re.findall(r"\brassylka_\w+", target["expr"])}
    assert named - exported == set(), f"not in pipeline/metrics.py: {sorted(named - exported)}"
