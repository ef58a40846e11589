-- Per-recipient-domain throttles, and account warm-up schedules.

-- Limits on mail to one recipient domain, set by operators. The workers
-- read these rows (cached for a few seconds) and hold the limits across
-- all of them in Redis. A domain is matched exactly, in lower case:
-- `gmail.com` covers neither `googlemail.com` nor `mail.gmail.com`.
CREATE TABLE domain_throttles (
    domain                text PRIMARY KEY
                          CHECK (domain = lower(domain) AND length(domain) BETWEEN 1 AND 253),
    -- Sends per minute to the domain, spread evenly; NULL: no rate limit.
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    -- SMTP transactions carrying mail for the domain at once; NULL: no cap.
    max_connections       integer CHECK (max_connections > 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Warm-up: on day d of the schedule (d = today in TZ - warmup_started_on,
-- at least 0) an account may send
-- least(daily_limit, floor(warmup_start_limit * warmup_growth_factor ^ d)).
-- The three columns are set together or not at all.
ALTER TABLE email_accounts
    ADD COLUMN warmup_started_on    date,
    ADD COLUMN warmup_start_limit   integer CHECK (warmup_start_limit > 0),
    ADD COLUMN warmup_growth_factor double precision
        CHECK (warmup_growth_factor >= 1.1 AND warmup_growth_factor <= 10),
    ADD CONSTRAINT email_accounts_warmup_complete CHECK (
        (warmup_started_on IS NULL) = (warmup_start_limit IS NULL)
        AND (warmup_start_limit IS NULL) = (warmup_growth_factor IS NULL));
