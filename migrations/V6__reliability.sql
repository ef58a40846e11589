-- Worker liveness: each worker process renews its lease while it runs, and
-- a claim records its claimant. A redelivered task whose record is
-- `sending` under a lapsed lease (the worker died mid-send) is sent again
-- at once, instead of after the hard time limit.
CREATE TABLE worker_leases (
    worker_id  text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

ALTER TABLE message_records ADD COLUMN claimed_by text;

-- When a `queued` record's broker message is next expected back (a retry's
-- or a wait's due time; NULL: at once). The reconciler re-publishes records
-- left well past it, whose broker message must be gone (a purged queue, a
-- lost node).
ALTER TABLE message_records ADD COLUMN due_at timestamptz;
ALTER TABLE message_records ADD COLUMN republished integer NOT NULL DEFAULT 0;
