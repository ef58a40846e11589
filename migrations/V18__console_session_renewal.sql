-- A console sign-in outlives its first access token: a request close to the
-- token's expiry swaps it for a new one (a new row of the same session),
-- until the session's absolute end. Sign-out and a revoked key end every
-- token of the session at once.
ALTER TABLE console_sessions
    ADD COLUMN session_id  uuid,
    ADD COLUMN ends_at     timestamptz,
    -- Set when this token was swapped for the next one (only one request
    -- of several racing near the expiry renews).
    ADD COLUMN replaced_at timestamptz;

UPDATE console_sessions SET session_id = token_id, ends_at = expires_at;

ALTER TABLE console_sessions
    ALTER COLUMN session_id SET NOT NULL,
    ALTER COLUMN ends_at SET NOT NULL;

CREATE INDEX console_sessions_session_idx ON console_sessions (session_id);
