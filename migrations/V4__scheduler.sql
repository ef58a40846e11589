-- The scheduler (beat): delayed sends are released by a query on due
-- `scheduled` messages, ordered by send_at.
CREATE INDEX message_records_scheduled_idx ON message_records (send_at)
    WHERE status = 'scheduled';

-- Mailing lists and their members (an address once per list).
CREATE TABLE mailing_lists (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE list_members (
    id         bigserial PRIMARY KEY,
    list_id    uuid NOT NULL REFERENCES mailing_lists (id) ON DELETE CASCADE,
    address    text NOT NULL,
    variables  jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (list_id, address)
);

CREATE INDEX list_members_address_idx ON list_members (address, id);

-- Campaigns: a template mailed to the members of some lists on a cron
-- schedule. next_run_at is the next time to fire (NULL: none).
CREATE TABLE campaigns (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    template_id       uuid NOT NULL,  -- a deleted template fails the run, it does not block the delete
    list_ids          uuid[] NOT NULL,
    variables         jsonb NOT NULL DEFAULT '{}',
    cron              text NOT NULL,
    time_zone         text NOT NULL,
    starts_at         timestamptz,
    ends_at           timestamptz,
    is_active         boolean NOT NULL DEFAULT true,
    missed_run_policy text NOT NULL DEFAULT 'skip' CHECK (missed_run_policy IN ('skip', 'run_once')),
    next_run_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX campaigns_due_idx ON campaigns (next_run_at) WHERE is_active;

-- One row per firing, written in the same transaction as the decision to
-- fire; the unique key means two schedulers cannot both fire a time. The
-- fan-out's progress (the last member id enqueued) is kept here, so a run
-- resumes where it stopped after a restart.
CREATE TABLE campaign_runs (
    id             uuid PRIMARY KEY,
    campaign_id    uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    scheduled_for  timestamptz NOT NULL,
    trigger        text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    status         text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    last_member_id bigint NOT NULL DEFAULT 0,
    recipients     integer NOT NULL DEFAULT 0,
    suppressed     integer NOT NULL DEFAULT 0,
    skipped        integer NOT NULL DEFAULT 0,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    UNIQUE (campaign_id, scheduled_for)
);

CREATE INDEX campaign_runs_running_idx ON campaign_runs (created_at) WHERE status = 'running';

ALTER TABLE message_records ADD COLUMN campaign_run_id uuid;
CREATE INDEX message_records_campaign_run_idx ON message_records (campaign_run_id, status)
    WHERE campaign_run_id IS NOT NULL;

-- Periodic Celery tasks (any task name, args/kwargs) on a cron schedule or
-- an interval, published through the outbox by the scheduler's leader.
CREATE TABLE periodic_tasks (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    task             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '[]',
    kwargs           jsonb NOT NULL DEFAULT '{}',
    queue            text NOT NULL,
    cron             text,
    time_zone        text NOT NULL DEFAULT 'UTC',
    interval_seconds integer CHECK (interval_seconds > 0),
    is_active        boolean NOT NULL DEFAULT true,
    next_run_at      timestamptz,
    last_run_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);

CREATE INDEX periodic_tasks_due_idx ON periodic_tasks (next_run_at) WHERE is_active;

-- One row per publication; the unique key makes each due time publish once.
CREATE TABLE periodic_task_runs (
    id               bigserial PRIMARY KEY,
    periodic_task_id uuid NOT NULL REFERENCES periodic_tasks (id) ON DELETE CASCADE,
    scheduled_for    timestamptz NOT NULL,
    task_id          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (periodic_task_id, scheduled_for)
);
