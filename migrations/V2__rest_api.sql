-- The complete REST API: templates, attachments, suppressions, the audit
-- log, campaigns on messages, and indexes for message queries.

ALTER TABLE message_records ADD COLUMN campaign_id uuid;
ALTER TABLE message_records ADD COLUMN cancelled_at timestamptz;

-- Message queries: newest first, keyset-paginated over (created_at, id).
CREATE INDEX message_records_created_id_idx ON message_records (created_at DESC, id DESC);
CREATE INDEX message_records_api_key_idx ON message_records (api_key_id, created_at DESC, id DESC);
CREATE INDEX message_records_campaign_idx ON message_records (campaign_id) WHERE campaign_id IS NOT NULL;

CREATE TABLE templates (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    subject     text NOT NULL,
    html_body   text NOT NULL,
    text_body   text,
    -- The variables a send must supply, no more and no fewer.
    variables   text[] NOT NULL DEFAULT '{}',
    created_by  uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_name_key UNIQUE (name)
);

-- Files attached to a message, in order.
CREATE TABLE message_attachments (
    message_id   uuid NOT NULL REFERENCES message_records (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    filename     text NOT NULL,
    content_type text NOT NULL,
    content      bytea NOT NULL,
    PRIMARY KEY (message_id, position)
);

-- Addresses that must not receive mail (opt-outs, hard bounces). Stored
-- lower-cased; checked when a send is accepted and again by the worker
-- right before SMTP.
CREATE TABLE suppressions (
    address     text PRIMARY KEY CHECK (address = lower(address)),
    reason      text NOT NULL DEFAULT '',
    created_by  uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every administrative change: who (API key), what, to what, from where.
-- `details` never holds passwords or secrets.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    actor_key_id uuid,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}',
    client_addr  text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_key_id, id);
