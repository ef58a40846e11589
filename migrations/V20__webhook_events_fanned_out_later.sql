-- Webhook events leave the sending transaction as one small row each.
--
-- The transaction that changes a message (the API's accept, the worker's
-- outcome) used to build each event's body and write its event and
-- delivery rows: two rows, seven index entries, and a key-share lock on the
-- endpoint's row that every concurrent sender took (a new multixact per
-- transaction). It now writes one row here, holding the message's changing
-- fields as they were at the change. The scheduler's fan-out
-- (`webhook_fan_out`) turns these rows into events and deliveries in bulk
-- and deletes them in the same transaction, so each becomes exactly one
-- event, and none is lost: the row commits or rolls back with the change.
CREATE TABLE webhook_pending_events (
    id               bigserial PRIMARY KEY,
    message_id       uuid NOT NULL,
    event_type       text NOT NULL,
    -- The message's fields that change, as they were after the change.
    status           text NOT NULL,
    account_email    text,
    smtp_message_id  text,
    smtp_response    text,
    error            text,
    attempts         integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Records the events of `changes` (message ids with the event type each
-- caused) for the messages whose key has an active endpoint wanting it;
-- for events no trigger writes (`email.unsubscribed`).
CREATE OR REPLACE FUNCTION webhook_record_events(changes jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO webhook_pending_events
           (message_id, event_type, status, account_email, smtp_message_id, smtp_response, error, attempts)
    SELECT m.id, x.event_type, m.status, m.account_email, m.smtp_message_id, m.smtp_response,
           m.error, m.attempts
      FROM jsonb_to_recordset(changes) AS x(id uuid, event_type text)
     CROSS JOIN LATERAL (SELECT * FROM message_records m WHERE m.id = x.id LIMIT 1) m
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints e
                    WHERE e.is_active AND e.owner_key_id = m.api_key_id
                      AND x.event_type = ANY (e.event_types));
$$;

CREATE OR REPLACE FUNCTION webhook_events_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The whole cost on the send path when nobody listens: one probe of a
    -- partial index.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.is_active
                    AND e.owner_key_id IN (SELECT api_key_id FROM new_rows)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_pending_events
           (message_id, event_type, status, account_email, smtp_message_id, smtp_response, error, attempts)
    SELECT x.id, x.event_type, x.status, x.account_email, x.smtp_message_id, x.smtp_response,
           x.error, x.attempts
      FROM (SELECT n.*,
                   CASE n.status WHEN 'suppressed' THEN 'email.suppressed'
                                 WHEN 'cancelled' THEN 'email.cancelled'
                                 ELSE 'email.accepted' END AS event_type
              FROM new_rows n
             WHERE n.status IN ('queued', 'scheduled', 'suppressed', 'cancelled')) x
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints e
                    WHERE e.is_active AND e.owner_key_id = x.api_key_id
                      AND x.event_type = ANY (e.event_types));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION webhook_events_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.is_active
                    AND e.owner_key_id IN (SELECT api_key_id FROM new_rows)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_pending_events
           (message_id, event_type, status, account_email, smtp_message_id, smtp_response, error, attempts)
    SELECT x.id, x.event_type, x.status, x.account_email, x.smtp_message_id, x.smtp_response,
           x.error, x.attempts
      FROM (SELECT n.*,
                   CASE
                     WHEN n.status = 'sent' THEN 'email.sent'
                     WHEN n.status = 'failed' THEN 'email.failed'
                     WHEN n.status = 'suppressed' THEN 'email.suppressed'
                     WHEN n.status = 'cancelled' THEN 'email.cancelled'
                     WHEN n.status = 'bounced' THEN 'email.bounced'
                     WHEN n.status = 'complained' THEN 'email.complained'
                     WHEN n.status = 'queued' AND o.status = 'sending' AND n.error IS NOT NULL
                       THEN 'email.retrying'
                   END AS event_type
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status) x
     WHERE x.event_type IS NOT NULL
       AND EXISTS (SELECT 1 FROM webhook_endpoints e
                    WHERE e.is_active AND e.owner_key_id = x.api_key_id
                      AND x.event_type = ANY (e.event_types));
    RETURN NULL;
END
$$;

-- Turns up to `max_events` pending events, oldest first, into events (each
-- numbered after its message's earlier ones) and one delivery per active
-- endpoint that wants it; returns how many pending events it took. One
-- fan-out runs at a time (others return 0 at once), so a message's events
-- are numbered in the order of its changes.
CREATE FUNCTION webhook_fan_out(max_events integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    taken integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('webhook_fan_out', 0)) THEN
        RETURN 0;
    END IF;
    WITH p AS MATERIALIZED (
        DELETE FROM webhook_pending_events
         WHERE id IN (SELECT id FROM webhook_pending_events ORDER BY id LIMIT max_events)
        RETURNING *
    ), x AS MATERIALIZED (
        -- The message by primary key (see V10 on joins and statistics).
        SELECT p.*, (SELECT m FROM message_records m WHERE m.id = p.message_id) AS msg
          FROM p
    ), c AS MATERIALIZED (
        SELECT gen_random_uuid() AS event_id, x.*,
               (SELECT count(*) FROM webhook_events v WHERE v.message_id = x.message_id)::int
                 + (row_number() OVER (PARTITION BY x.message_id ORDER BY x.id))::int AS sequence
          FROM x
         -- A message deleted since (retention) or an endpoint gone: no event.
         WHERE (x.msg).id IS NOT NULL
           AND EXISTS (SELECT 1 FROM webhook_endpoints e
                        WHERE e.is_active AND e.owner_key_id = (x.msg).api_key_id
                          AND x.event_type = ANY (e.event_types)
                          AND e.created_at <= x.created_at)
    ), ev AS (
        INSERT INTO webhook_events (id, event_type, message_id, sequence, payload, created_at)
        SELECT c.event_id, c.event_type, c.message_id, c.sequence,
               jsonb_build_object(
                   'type', c.event_type,
                   'timestamp', to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'data', jsonb_build_object(
                       'event_id', c.event_id,
                       'message_id', c.message_id,
                       'task_id', (c.msg).task_id,
                       'status', c.status,
                       'sequence', c.sequence,
                       'to', to_jsonb((c.msg).to_addrs),
                       'cc', to_jsonb((c.msg).cc_addrs),
                       'subject', (c.msg).subject,
                       'account', c.account_email,
                       'smtp_message_id', c.smtp_message_id,
                       'smtp_response', c.smtp_response,
                       'error', c.error,
                       'attempts', c.attempts,
                       'campaign_id', (c.msg).campaign_id,
                       'metadata', COALESCE((c.msg).metadata, '{}'::jsonb))),
               c.created_at
          FROM c
        RETURNING id
    ), d AS (
        -- Each delivery's event is inserted by `ev` in this same statement
        -- (the foreign key is checked at its end). Not `WHERE event_id IN
        -- (SELECT id FROM ev)`: on the CTE's row estimate of 1 that is a
        -- nested loop, quadratic in the batch (0.6 s for 2,000 events).
        INSERT INTO webhook_deliveries (id, event_id, endpoint_id)
        SELECT gen_random_uuid(), c.event_id, e.id
          FROM c JOIN webhook_endpoints e
            ON e.is_active AND e.owner_key_id = (c.msg).api_key_id AND c.event_type = ANY (e.event_types)
               -- Not an endpoint registered after the change.
               AND e.created_at <= c.created_at
    )
    SELECT count(*) INTO taken FROM p;
    RETURN taken;
END
$$;

-- Built by the fan-out now.
DROP FUNCTION webhook_event_payload(uuid, text, message_records, integer);

-- A queue: every row is deleted soon after it is written, so vacuum it
-- often rather than after a fifth of a table that is nearly always empty.
ALTER TABLE webhook_pending_events SET (autovacuum_vacuum_scale_factor = 0,
                                        autovacuum_vacuum_threshold = 5000);
