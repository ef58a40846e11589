-- The operator console's sign-ins (api/src/console). The browser holds the
-- access token in an HttpOnly cookie; this row makes the sign-in revocable
-- (sign-out) before the token expires, and holds its CSRF token.
CREATE TABLE console_sessions (
    -- The `jti` of the access token in the cookie.
    token_id    uuid PRIMARY KEY,
    api_key_id  uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
