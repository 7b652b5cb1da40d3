"""`rassylka report` says how to read the demo's data when its own store is empty."""

from __future__ import annotations

from pipeline.analytics.report import empty_store_hint

DEFAULT = "chdb:///repo/.run/clickhouse"
DEMO = "chdb:///repo/.run/demo/clickhouse"
ZEROS = [{"sent": 0, "delivered": 0}]


def test_empty_default_store_points_at_the_demo_data() -> None:
    hint = empty_store_hint(DEFAULT, ZEROS, DEMO)
    assert hint is not None
    assert DEFAULT in hint and f"CLICKHOUSE_URL={DEMO} rassylka report" in hint
    assert empty_store_hint(DEFAULT, [], DEMO) is not None


def test_no_hint_when_there_is_data_no_demo_or_the_demo_is_read() -> None:
    assert empty_store_hint(DEFAULT, [{"sent": 3}], DEMO) is None
    assert empty_store_hint(DEFAULT, ZEROS, None) is None
    assert empty_store_hint(DEMO, ZEROS, DEMO) is None
