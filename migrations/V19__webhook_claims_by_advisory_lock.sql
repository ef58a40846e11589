-- Deliveries in flight are now held by their dispatcher's session advisory
-- locks, not by moving their due time forward: a claim writes nothing, and
-- the due time changes only when an attempt fails. The dispatcher's claim
-- and the backlog gauge both go through the per-endpoint index (V10); this
-- one only cost an index write per delivery.
DROP INDEX webhook_deliveries_due_idx;
