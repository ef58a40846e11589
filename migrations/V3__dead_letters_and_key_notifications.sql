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

-- API instances cache which keys are usable; any change that can make a key
-- unusable (revocation, deletion) is announced so every instance forgets
-- it at once.
CREATE FUNCTION notify_api_key_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('api_key_changed', OLD.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_changed
    AFTER UPDATE OF is_active, revoked_at, scopes, rate_limit_per_minute OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_api_key_change();
