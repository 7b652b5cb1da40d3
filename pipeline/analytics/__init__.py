"""Analytics: outcomes, receipts, clicks, conversions, replies and consent in ClickHouse.

- `privacy`: phone numbers hashed (keyed BLAKE2b) and masked.
- `rows`: decoded records → row tuples for the fact tables (pure).
- `writer`: batching (`SinkBuffer`) and idempotent inserts (`BatchWriter`, `write_with_retry`).
- `report`: the funnel and its renderings (table, CSV, JSON), example analyst queries.

The schema lives in infra/clickhouse/NNN_*.sql, applied by `connectors.clickhouse.migrate`.
The pure modules (`privacy`, `rows`) import no database driver.
"""
