-- The scheduler (beat): delayed sends are released by a query on due
-- `scheduled` messages, ordered by send_at.
CREATE INDEX message_records_scheduled_idx ON message_records (send_at)
    WHERE status = 'scheduled';
