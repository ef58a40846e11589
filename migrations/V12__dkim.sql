-- DKIM keys of sending domains: mail whose From is on `domain` is signed
-- with each active key of it (at most one per algorithm, so an RSA and an
-- Ed25519 signature side by side). Private keys are sealed with the
-- AES-256-GCM keyring like SMTP passwords and never returned.
CREATE TABLE dkim_keys (
    id                     uuid PRIMARY KEY,
    domain                 text NOT NULL,
    selector               text NOT NULL,
    algorithm              text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    private_key_ciphertext bytea NOT NULL,
    private_key_nonce      bytea NOT NULL,
    private_key_key_id     text NOT NULL,
    -- Base64, as published in the DNS record's `p=`.
    public_key             text NOT NULL,
    is_active              boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dkim_keys_domain_selector_key UNIQUE (domain, selector)
);

CREATE UNIQUE INDEX dkim_keys_active_algorithm_key ON dkim_keys (domain, algorithm) WHERE is_active;
