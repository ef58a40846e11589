-- Message timelines, the sender's metadata on messages, the webhook
-- events that are not about one message (campaign runs, accounts,
-- endpoints) for endpoints of admin keys, and the dispatcher's per-endpoint
-- claim index.

-- The sender's own small string map (`metadata` on a send), echoed in the
-- message and in its webhook events. NULL when the send carried none.
ALTER TABLE message_records ADD COLUMN metadata jsonb;

-- Every change of a message, written by triggers in the statement that
-- makes it, so no path (API, worker, scheduler, reconciler) can forget
-- one. It goes with its message at retention.
CREATE TABLE message_events (
    id          bigserial PRIMARY KEY,
    message_id  uuid NOT NULL REFERENCES message_records (id) ON DELETE CASCADE,
    -- accepted, released, claimed, waiting, republished, retry_scheduled,
    -- requeued, sent, failed, suppressed, cancelled
    event       text NOT NULL,
    -- The message's status after the change.
    status      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX message_events_message_idx ON message_events (message_id, id);

CREATE FUNCTION message_events_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_events (message_id, event, status, detail, created_at)
    SELECT n.id, 'accepted', n.status,
           jsonb_strip_nulls(jsonb_build_object(
               'send_at', n.send_at,
               'campaign_run_id', n.campaign_run_id,
               'account', n.account_email,
               'smtp_response', n.smtp_response,
               'error', n.error)),
           -- A record imported from the Python platform keeps its own time.
           LEAST(n.created_at, now())
      FROM new_rows n;
    RETURN NULL;
END
$$;

CREATE FUNCTION message_events_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_events (message_id, event, status, detail)
    SELECT x.id, x.event, x.status, jsonb_strip_nulls(
               CASE x.event
                 WHEN 'claimed' THEN jsonb_build_object(
                     'worker', x.claimed_by, 'account', x.account_email,
                     'attempt', x.attempts, 'reclaimed', x.old_status = 'sending')
                 WHEN 'republished' THEN jsonb_build_object('times', x.republished)
                 WHEN 'released' THEN jsonb_build_object('send_at', x.send_at)
                 WHEN 'requeued' THEN '{}'::jsonb
                 WHEN 'sent' THEN jsonb_build_object(
                     'account', x.account_email, 'smtp_message_id', x.smtp_message_id,
                     'smtp_response', x.smtp_response, 'attempt', x.attempts)
                 -- waiting, retry_scheduled: why, and when it is due back.
                 WHEN 'waiting' THEN jsonb_build_object('reason', x.error, 'due_at', x.due_at)
                 WHEN 'retry_scheduled' THEN jsonb_build_object(
                     'account', x.account_email, 'smtp_response', x.smtp_response,
                     'error', x.error, 'attempt', x.attempts, 'due_at', x.due_at)
                 ELSE jsonb_build_object(
                     'account', x.account_email, 'smtp_response', x.smtp_response,
                     'error', x.error, 'attempt', NULLIF(x.attempts, 0))
               END)
      FROM (SELECT n.*, o.status AS old_status,
                   CASE
                     WHEN n.status = 'sending' AND n.attempts > o.attempts THEN 'claimed'
                     WHEN n.status = o.status AND n.republished > o.republished THEN 'republished'
                     WHEN n.status = o.status AND n.status = 'queued'
                          AND (n.due_at IS DISTINCT FROM o.due_at
                               OR n.error IS DISTINCT FROM o.error) THEN 'waiting'
                     WHEN n.status = o.status THEN NULL
                     WHEN n.status = 'queued' AND o.status = 'scheduled' THEN 'released'
                     WHEN n.status = 'queued' AND o.status = 'sending' THEN 'retry_scheduled'
                     WHEN n.status = 'queued' THEN 'requeued'
                     ELSE n.status
                   END AS event
              FROM new_rows n JOIN old_rows o ON o.id = n.id) x
     WHERE x.event IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER message_records_timeline_insert
    AFTER INSERT ON message_records REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION message_events_on_insert();

CREATE TRIGGER message_records_timeline_update
    AFTER UPDATE ON message_records REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION message_events_on_update();

-- Each change's message row by primary key in a scalar subquery, not a
-- join: message_records grows faster than its statistics, and a join
-- planned for a small table is a full scan per statement once it is large.
CREATE OR REPLACE FUNCTION webhook_record_events(changes jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH x AS MATERIALIZED (
        SELECT x.event_type, (SELECT m FROM message_records m WHERE m.id = x.id) AS msg
          FROM jsonb_to_recordset(changes) AS x(id uuid, event_type text)
    ), c AS MATERIALIZED (
        SELECT gen_random_uuid() AS event_id, x.event_type, x.msg, (x.msg).id AS message_id,
               (x.msg).api_key_id AS api_key_id
          FROM x
         WHERE (x.msg).id IS NOT NULL
           AND EXISTS (SELECT 1 FROM webhook_endpoints e
                        WHERE e.is_active AND e.owner_key_id = (x.msg).api_key_id
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

-- Message events now carry the sender's metadata.
CREATE OR REPLACE FUNCTION webhook_event_payload(event_id uuid, event_type text, m message_records, seq integer)
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
            'campaign_id', m.campaign_id,
            'metadata', COALESCE(m.metadata, '{}'::jsonb)))
$$;

-- The dispatcher claims each endpoint's oldest due deliveries through
-- this, so a claim costs the same whatever the backlog.
CREATE INDEX webhook_deliveries_endpoint_due_idx ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

-- What an event that is not about a message is about (a campaign run,
-- an account, an endpoint); its events are numbered like a message's.
ALTER TABLE webhook_events ADD COLUMN subject_id uuid;
CREATE INDEX webhook_events_subject_idx ON webhook_events (subject_id) WHERE subject_id IS NOT NULL;

-- Records one event that is not about a message for the active endpoints
-- of admin keys that want it.
CREATE FUNCTION webhook_record_admin_event(event_type text, subject uuid, data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    event_id uuid := gen_random_uuid();
    seq integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e JOIN api_keys k ON k.id = e.owner_key_id
                    WHERE e.is_active AND k.is_active AND 'admin' = ANY (k.scopes)
                      AND event_type = ANY (e.event_types)) THEN
        RETURN;
    END IF;
    seq := 1 + (SELECT count(*) FROM webhook_events v WHERE v.subject_id = subject);
    INSERT INTO webhook_events (id, event_type, subject_id, sequence, payload)
    VALUES (event_id, event_type, subject, seq, jsonb_build_object(
        'type', event_type,
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', jsonb_build_object('event_id', event_id, 'sequence', seq) || data));
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id)
    SELECT gen_random_uuid(), event_id, e.id
      FROM webhook_endpoints e JOIN api_keys k ON k.id = e.owner_key_id
     WHERE e.is_active AND k.is_active AND 'admin' = ANY (k.scopes)
       AND event_type = ANY (e.event_types);
END
$$;

CREATE FUNCTION webhook_campaign_run_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_record_admin_event(
        CASE WHEN TG_OP = 'INSERT' THEN 'campaign.run.started' ELSE 'campaign.run.completed' END,
        NEW.id,
        jsonb_build_object(
            'campaign_id', NEW.campaign_id,
            'campaign_name', (SELECT c.name FROM campaigns c WHERE c.id = NEW.campaign_id),
            'run_id', NEW.id,
            'trigger', NEW.trigger,
            'scheduled_for', NEW.scheduled_for,
            'status', NEW.status,
            'recipients', NEW.recipients,
            'suppressed', NEW.suppressed,
            'skipped', NEW.skipped,
            'error', NEW.error,
            'finished_at', NEW.finished_at));
    RETURN NULL;
END
$$;

CREATE TRIGGER campaign_runs_webhook_started
    AFTER INSERT ON campaign_runs
    FOR EACH ROW EXECUTE FUNCTION webhook_campaign_run_event();

CREATE TRIGGER campaign_runs_webhook_completed
    AFTER UPDATE ON campaign_runs
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION webhook_campaign_run_event();

-- An account taken out of rotation: by an operator (`account.paused`) or
-- by its circuit breaker opening (`account.circuit_open`). The WHEN
-- clauses keep the per-send counter updates free of any function call.
CREATE FUNCTION webhook_account_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_record_admin_event(
        TG_ARGV[0], NEW.id,
        jsonb_build_object(
            'account_id', NEW.id,
            'account', NEW.email,
            'is_active', NEW.is_active,
            'circuit_open_until', NEW.circuit_open_until,
            'consecutive_failures', NEW.consecutive_failures,
            'last_error', NEW.last_error));
    RETURN NULL;
END
$$;

CREATE TRIGGER email_accounts_webhook_paused
    AFTER UPDATE ON email_accounts
    FOR EACH ROW WHEN (OLD.is_active AND NOT NEW.is_active)
    EXECUTE FUNCTION webhook_account_event('account.paused');

CREATE TRIGGER email_accounts_webhook_circuit_open
    AFTER UPDATE ON email_accounts
    FOR EACH ROW WHEN (NEW.circuit_open_until > now()
                       AND (OLD.circuit_open_until IS NULL OR OLD.circuit_open_until <= now()))
    EXECUTE FUNCTION webhook_account_event('account.circuit_open');

-- The dispatcher gave up on an endpoint: tell the admins (never the
-- endpoint itself, which is now inactive).
CREATE FUNCTION webhook_endpoint_disabled_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_record_admin_event(
        'endpoint.disabled', NEW.id,
        jsonb_build_object(
            'endpoint_id', NEW.id,
            -- Without the query or credentials, which may carry a token.
            'url', regexp_replace(regexp_replace(NEW.url, '[?#].*$', ''), '//[^/@]*@', '//'),
            'owner_key_id', NEW.owner_key_id,
            'reason', NEW.disabled_reason,
            'failing_since', NEW.failing_since));
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_endpoints_disabled
    AFTER UPDATE ON webhook_endpoints
    FOR EACH ROW WHEN (OLD.disabled_reason IS NULL AND NEW.disabled_reason IS NOT NULL)
    EXECUTE FUNCTION webhook_endpoint_disabled_event();
