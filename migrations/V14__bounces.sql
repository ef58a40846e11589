-- Bounces and complaints: what the receiving side reported about mail we
-- sent, from delivery status notifications and abuse reports in the
-- accounts' own mailboxes (IMAP) or from a provider's webhook. A hard
-- bounce or a complaint suppresses the address; soft bounces do once
-- enough of them come within a window.

ALTER TABLE message_records DROP CONSTRAINT message_records_status_check;
ALTER TABLE message_records ADD CONSTRAINT message_records_status_check CHECK (status IN
    ('scheduled', 'queued', 'sending', 'sent', 'failed', 'suppressed', 'cancelled',
     'bounced', 'complained')) NOT VALID;
ALTER TABLE message_records VALIDATE CONSTRAINT message_records_status_check;

-- The IMAP side of an account: where its bounces arrive, and how far the
-- processor has read. Absent: the account's mailbox is not read. Host,
-- port, user and TLS default to the SMTP side's (smtp.x → imap.x, 993).
CREATE TABLE account_mailboxes (
    account_id    uuid PRIMARY KEY REFERENCES email_accounts (id) ON DELETE CASCADE,
    enabled       boolean NOT NULL DEFAULT true,
    host          text,
    port          integer CHECK (port BETWEEN 1 AND 65535),
    username      text,
    tls_mode      text CHECK (tls_mode IN ('implicit', 'starttls', 'none')),
    mailbox       text NOT NULL DEFAULT 'INBOX',
    -- The cursor: messages with a UID above last_uid in this UIDVALIDITY
    -- are new. A new UIDVALIDITY (the mailbox was recreated) starts over;
    -- processed reports carry a keyword, so none is handled twice.
    uid_validity  bigint,
    last_uid      bigint NOT NULL DEFAULT 0,
    -- One processor at a time per mailbox (several scheduler instances).
    lease_owner   text,
    lease_until   timestamptz,
    polled_at     timestamptz,
    last_error    text,
    last_error_at timestamptz,
    -- What the mailbox held, counted as read: reports applied, reports
    -- that matched no message of ours, reports that could not be read,
    -- and mail that was no report at all (replies, auto-replies).
    reports       bigint NOT NULL DEFAULT 0,
    unmatched     bigint NOT NULL DEFAULT 0,
    malformed     bigint NOT NULL DEFAULT 0,
    ignored       bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bounces (
    id            bigserial PRIMARY KEY,
    -- hard (5.x.x), soft (4.x.x) or complaint.
    kind          text NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint')),
    -- NULL when neither the report nor the message names one.
    recipient     text CHECK (recipient = lower(recipient)),
    message_id    uuid,
    account_id    uuid REFERENCES email_accounts (id) ON DELETE SET NULL,
    -- imap, ses, sendgrid, postmark, mailgun.
    source        text NOT NULL,
    -- What makes a report unique at its source (mailbox, UIDVALIDITY and
    -- UID; a provider's event id): the same report read twice, by two
    -- processors or after a crash, is applied once.
    source_ref    text NOT NULL,
    status_code   text,
    diagnostic    text,
    -- What the message then was: bounced, complained, soft (counted),
    -- or NULL when it was not ours or already settled otherwise.
    outcome       text,
    suppressed    boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bounces_source_ref_key UNIQUE (source, source_ref)
);

CREATE INDEX bounces_created_idx ON bounces (created_at);
CREATE INDEX bounces_recipient_idx ON bounces (recipient, created_at);
CREATE INDEX bounces_account_idx ON bounces (account_id, created_at);

-- The sends of an account's past days, for its bounce and complaint
-- rates. The daily counter restarts from zero on a new day; this keeps
-- the day it leaves. A WHEN clause: the per-send counter update calls
-- nothing.
CREATE TABLE account_send_days (
    account_id uuid NOT NULL REFERENCES email_accounts (id) ON DELETE CASCADE,
    day        date NOT NULL,
    sent       integer NOT NULL,
    PRIMARY KEY (account_id, day)
);

CREATE FUNCTION account_send_day_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_send_days (account_id, day, sent)
    VALUES (OLD.id, OLD.quota_day, OLD.daily_sent_count)
    ON CONFLICT (account_id, day) DO UPDATE SET sent = EXCLUDED.sent;
    RETURN NULL;
END
$$;

CREATE TRIGGER email_accounts_send_day_closed
    AFTER UPDATE ON email_accounts
    FOR EACH ROW WHEN (OLD.quota_day <> NEW.quota_day AND OLD.daily_sent_count > 0)
    EXECUTE FUNCTION account_send_day_closed();

-- Why an account was taken out of rotation by the platform itself (its
-- bounce or complaint rate); cleared when an operator resumes it.
ALTER TABLE email_accounts ADD COLUMN paused_reason text;

-- Bounced and complained messages get their webhook events.
CREATE OR REPLACE FUNCTION webhook_events_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
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
                      WHEN n.status = 'bounced' THEN 'email.bounced'
                      WHEN n.status = 'complained' THEN 'email.complained'
                      WHEN n.status = 'queued' AND o.status = 'sending' AND n.error IS NOT NULL
                        THEN 'email.retrying'
                    END AS event_type
               FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.status IS DISTINCT FROM o.status) x
      WHERE x.event_type IS NOT NULL;
    RETURN NULL;
END
$$;

-- `account.paused` says why when the platform paused the account.
CREATE OR REPLACE FUNCTION webhook_account_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_record_admin_event(
        TG_ARGV[0], NEW.id,
        jsonb_build_object(
            'account_id', NEW.id,
            'account', NEW.email,
            'is_active', NEW.is_active,
            'paused_reason', NEW.paused_reason,
            'circuit_open_until', NEW.circuit_open_until,
            'consecutive_failures', NEW.consecutive_failures,
            'last_error', NEW.last_error));
    RETURN NULL;
END
$$;
