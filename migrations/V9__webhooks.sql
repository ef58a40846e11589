-- Event webhooks (Standard Webhooks): endpoints owned by the API key that
-- created them, events written by triggers in the same transaction as the
-- message state change that causes them (an outbox), and one delivery row
-- per (event, endpoint) that the scheduler's dispatcher works through.

CREATE TABLE webhook_endpoints (
    id                 uuid PRIMARY KEY,
    -- The key that created it; it receives that key's messages' events.
    owner_key_id       uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    url                text NOT NULL,
    event_types        text[] NOT NULL,
    description        text NOT NULL DEFAULT '',
    is_active          boolean NOT NULL DEFAULT true,
    -- Why the dispatcher disabled it (NULL when a caller set is_active).
    disabled_reason    text,
    -- The signing secret (`whsec_...`), AES-256-GCM sealed like SMTP
    -- passwords; never stored in clear.
    secret_ciphertext  bytea NOT NULL,
    secret_nonce       bytea NOT NULL,
    secret_key_id      text NOT NULL,
    -- After a rotation the previous secret also signs until it expires.
    previous_secret_ciphertext bytea,
    previous_secret_nonce      bytea,
    previous_secret_key_id     text,
    previous_secret_expires_at timestamptz,
    -- Since when every attempt has failed (NULL after a success); an
    -- endpoint failing for the whole retry window is disabled.
    failing_since      timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_owner_idx ON webhook_endpoints (owner_key_id, created_at, id);
-- The triggers' first question on every message statement.
CREATE INDEX webhook_endpoints_active_owner_idx ON webhook_endpoints (owner_key_id) WHERE is_active;

-- One event per message state change that some active endpoint wants.
-- No foreign key to message_records: an event outlives retention of its
-- message, and deleting messages must not touch this table.
CREATE TABLE webhook_events (
    id          uuid PRIMARY KEY,
    event_type  text NOT NULL,
    message_id  uuid,
    -- Per message, in order of the changes (best effort under concurrency).
    sequence    integer NOT NULL DEFAULT 1,
    -- The exact body that is signed and sent.
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_events_message_idx ON webhook_events (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX webhook_events_created_idx ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    -- When it is next due. A claim moves it forward by the lease, so a
    -- dispatcher killed mid-flight leaves it to be claimed again.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status      integer,
    last_latency_ms  integer,
    last_response    text,
    last_error       text,
    delivered_at     timestamptz,
    -- Retries stop (status `failed`) once the retry window has passed
    -- since this: the event's creation, or a manual redelivery.
    retry_from       timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_event_endpoint_key UNIQUE (event_id, endpoint_id)
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

-- The event body: the Standard Webhooks shape {type, timestamp, data}.
CREATE FUNCTION webhook_event_payload(event_id uuid, event_type text, m message_records, seq integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'type', event_type,
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', jsonb_build_object(
            'event_id', event_id,
            'message_id', m.id,
            'task_id', m.task_id,
            'status', m.status,
            'sequence', seq,
            'to', to_jsonb(m.to_addrs),
            'cc', to_jsonb(m.cc_addrs),
            'subject', m.subject,
            'account', m.account_email,
            'smtp_message_id', m.smtp_message_id,
            'smtp_response', m.smtp_response,
            'error', m.error,
            'attempts', m.attempts,
            'campaign_id', m.campaign_id))
$$;

-- Records the events of `changes` (message rows with the event type each
-- caused) for the active endpoints of their keys that want them.
CREATE FUNCTION webhook_record_events(changes jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH c AS MATERIALIZED (
        SELECT gen_random_uuid() AS event_id, x.event_type, m AS msg, m.id AS message_id,
               m.api_key_id
          FROM jsonb_to_recordset(changes) AS x(id uuid, event_type text)
          JOIN message_records m ON m.id = x.id
         WHERE EXISTS (SELECT 1 FROM webhook_endpoints e
                        WHERE e.is_active AND e.owner_key_id = m.api_key_id
                          AND x.event_type = ANY (e.event_types))
    ), seq AS MATERIALIZED (
        SELECT c.*, 1 + (SELECT count(*) FROM webhook_events v WHERE v.message_id = c.message_id)::int AS sequence
          FROM c
    ), ev AS (
        INSERT INTO webhook_events (id, event_type, message_id, sequence, payload)
        SELECT event_id, event_type, message_id, sequence,
               webhook_event_payload(event_id, event_type, msg, sequence)
          FROM seq
        RETURNING id
    )
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id)
    SELECT gen_random_uuid(), c.event_id, e.id
      FROM c JOIN webhook_endpoints e
        ON e.is_active AND e.owner_key_id = c.api_key_id AND c.event_type = ANY (e.event_types)
     WHERE c.event_id IN (SELECT id FROM ev);
END
$$;

CREATE FUNCTION webhook_events_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The whole cost on the send path when nobody listens: one probe of a
    -- partial index.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.is_active
                    AND e.owner_key_id IN (SELECT api_key_id FROM new_rows)) THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_record_events(jsonb_agg(jsonb_build_object('id', n.id, 'event_type',
                CASE n.status WHEN 'suppressed' THEN 'email.suppressed'
                              WHEN 'cancelled' THEN 'email.cancelled'
                              ELSE 'email.accepted' END)))
       FROM new_rows n
      WHERE n.status IN ('queued', 'scheduled', 'suppressed', 'cancelled');
    RETURN NULL;
END
$$;

CREATE FUNCTION webhook_events_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.is_active
                    AND e.owner_key_id IN (SELECT api_key_id FROM new_rows)) THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_record_events(jsonb_agg(jsonb_build_object('id', x.id, 'event_type', x.event_type)))
       FROM (SELECT n.id,
                    CASE
                      WHEN n.status = 'sent' THEN 'email.sent'
                      WHEN n.status = 'failed' THEN 'email.failed'
                      WHEN n.status = 'suppressed' THEN 'email.suppressed'
                      WHEN n.status = 'cancelled' THEN 'email.cancelled'
                      WHEN n.status = 'queued' AND o.status = 'sending' AND n.error IS NOT NULL
                        THEN 'email.retrying'
                    END AS event_type
               FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.status IS DISTINCT FROM o.status) x
      WHERE x.event_type IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER message_records_webhook_insert
    AFTER INSERT ON message_records REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_events_on_insert();

CREATE TRIGGER message_records_webhook_update
    AFTER UPDATE ON message_records REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_events_on_update();
