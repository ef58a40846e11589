-- A dispatcher's claim used to move a delivery's due time forward by its
-- lease. `next_attempt_at` is indexed, so every claim wrote a new row
-- version into every index of the table, twice per email with webhooks
-- on. The lease now has its own column, in no index, and a claim is a
-- HOT update (no index writes) when the page has room: hence the
-- fillfactor, since a delivery is claimed moments after it is inserted
-- at the end of the table.
ALTER TABLE webhook_deliveries ADD COLUMN leased_until timestamptz;
ALTER TABLE webhook_deliveries SET (fillfactor = 70);

-- The dispatcher's claim and the backlog gauge both go through the
-- per-endpoint index (V10); this one only cost a write per delivery.
DROP INDEX webhook_deliveries_due_idx;
