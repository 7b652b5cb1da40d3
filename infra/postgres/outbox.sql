-- The outbox table an ERP writes to in the same transaction as its business change, and the
-- publication Debezium streams it through. Idempotent: safe to run again.
-- Rassylka's outbox stage (pipeline/outbox.py) turns each inserted row into one Avro event:
--   type       the event contract, a name of schemas/*.avsc that has an event topic:
--              order_status_changed, payment_due, promotion or service_notice
--   payload    the contract's fields as a JSON object (customer_id is required); event_id is
--              the row's id, occurred_at_ms defaults to created_at, source to 'outbox'
-- PostgreSQL 13+ (gen_random_uuid is built in); the server needs wal_level = logical.

CREATE TABLE IF NOT EXISTS outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,            -- e.g. 'order'
    aggregate_id   text        NOT NULL,            -- e.g. the order number
    type           text        NOT NULL,            -- e.g. 'order_status_changed'
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS outbox_created_at ON outbox (created_at);

-- Debezium reads this publication (connector setting publication.name); its user then needs
-- only the REPLICATION attribute and SELECT on outbox, not ownership of the table.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'rassylka_outbox') THEN
        CREATE PUBLICATION rassylka_outbox FOR TABLE outbox WITH (publish = 'insert');
    END IF;
END $$;

-- Housekeeping, e.g. hourly from the ERP's scheduler: rows are published once they are
-- committed, and the stage remembers row ids for 7 days (rassylka outbox --dedup-days), so
-- delete rows well within that window — a snapshot after a connector reset then cannot
-- bring back rows the stage no longer remembers:
--   DELETE FROM outbox WHERE created_at < now() - interval '1 day';
