-- Keys imported from the Python platform keep the hash it stored their
-- secret with, so applications keep their credentials across the switch;
-- the scheme says how /auth/token verifies it (platform::crypto::secret_hash).
ALTER TABLE api_keys ADD COLUMN secret_scheme text NOT NULL DEFAULT 'sha256'
    CHECK (secret_scheme IN ('sha256', 'bcrypt', 'passlib_pbkdf2', 'werkzeug_pbkdf2', 'argon2'));
-- Python keys could expire; an expired key no longer gets tokens and its
-- tokens stop working, as a revoked one.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

-- A changed expiry must reach the API instances' key caches like a
-- revocation (an expiry passing by itself is seen within the cache's TTL).
DROP TRIGGER api_keys_changed ON api_keys;
CREATE TRIGGER api_keys_changed
    AFTER UPDATE OF is_active, revoked_at, scopes, rate_limit_per_minute, expires_at OR DELETE
    ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_api_key_change();
