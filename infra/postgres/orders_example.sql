-- Example: an ERP `orders` table whose status changes reach Rassylka through the outbox.
-- The trigger writes the outbox row inside the transaction that changes the order, so the
-- event exists exactly when the change committed. Idempotent: safe to run again.

CREATE TABLE IF NOT EXISTS orders (
    order_id      text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    status        text        NOT NULL,   -- created, paid, shipped, ready_for_pickup, delivered, cancelled
    amount_minor  bigint      NOT NULL DEFAULT 0,
    currency      text        NOT NULL DEFAULT 'RUB',
    tracking_url  text,
    pickup_point  text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION orders_status_to_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO outbox (aggregate_type, aggregate_id, type, payload)
        VALUES ('order', NEW.order_id, 'order_status_changed', jsonb_build_object(
            'customer_id',     NEW.customer_id,
            'order_id',        NEW.order_id,
            'status',          NEW.status,
            'previous_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
            'amount_minor',    NEW.amount_minor,
            'currency',        NEW.currency,
            'tracking_url',    NEW.tracking_url,
            'pickup_point',    NEW.pickup_point,
            'source',          'erp'));
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS orders_status_outbox ON orders;
CREATE TRIGGER orders_status_outbox
    AFTER INSERT OR UPDATE OF status ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_status_to_outbox();

-- Without a trigger, the application inserts the row itself, in the same transaction:
--   BEGIN;
--   UPDATE orders SET status = 'shipped' WHERE order_id = 'A-1001';
--   INSERT INTO outbox (aggregate_type, aggregate_id, type, payload)
--   VALUES ('order', 'A-1001', 'order_status_changed',
--           '{"customer_id": "cust-42", "order_id": "A-1001", "status": "shipped"}');
--   COMMIT;
