-- Refresh tokens are one-time: each refresh marks its token used and issues
-- the next one in the same family. A used token presented again means it
-- was copied, so the whole family is revoked. A family's expiry is fixed at
-- sign-in: refreshing never extends a session.
CREATE TABLE refresh_tokens (
    jti         uuid PRIMARY KEY,
    family_id   uuid NOT NULL,
    api_key_id  uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);

-- Templates and suppressions are listed per owner (the key that created them).
CREATE INDEX templates_created_by_idx ON templates (created_by, name);
CREATE INDEX suppressions_created_by_idx ON suppressions (created_by, address);
