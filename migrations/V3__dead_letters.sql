-- Messages the worker could not process: unknown tasks, undecodable
-- messages, and tasks that exhausted their retries. Each is also published
-- to the <queue>.dead_letter queue; this table lets operators list them and
-- requeue one through the API.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    task_id      text,
    task_name    text,
    message_id   uuid,
    reason       text NOT NULL,
    content_type text,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    requeued_at  timestamptz
);

CREATE INDEX dead_letters_created_at_idx ON dead_letters (created_at);
