-- Fewer index entries written per email on the two busiest tables.

-- A timeline is read by message (its page, the cascade at retention), so
-- the primary key takes that order and one index serves instead of two:
-- each of an email's events (accepted, claimed, sent) writes one index
-- entry, not two.
ALTER TABLE message_events DROP CONSTRAINT message_events_pkey;
ALTER TABLE message_events ADD PRIMARY KEY (message_id, id);
DROP INDEX message_events_message_idx;

-- A sent message leaves the status index: sent is most of the table, and
-- a listing of sent messages walks the time indexes instead. What the
-- reconciler, the scheduler and the listings of other statuses look for
-- stays indexed.
DROP INDEX message_records_status_idx;
CREATE INDEX message_records_status_idx ON message_records (status, created_at)
    WHERE status <> 'sent';
