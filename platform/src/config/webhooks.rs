//! Event webhooks: what the API allows when an endpoint is registered
//! (`WEBHOOK_ALLOW_PRIVATE`, `WEBHOOK_MAX_ENDPOINTS_PER_KEY`,
//! `WEBHOOK_ROTATION_GRACE_SECONDS`) and how the scheduler's dispatcher
//! delivers (`WEBHOOK_POLL_MS`, `WEBHOOK_BATCH`, `WEBHOOK_ENDPOINT_CONCURRENCY`,
//! `WEBHOOK_CONNECT_TIMEOUT_SECONDS`, `WEBHOOK_TIMEOUT_SECONDS`,
//! `WEBHOOK_BACKOFF_BASE_MS`, `WEBHOOK_BACKOFF_MAX_SECONDS`,
//! `WEBHOOK_RETRY_WINDOW_SECONDS`).

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Endpoints may be on loopback, private and link-local addresses
    /// (`WEBHOOK_ALLOW_PRIVATE`, default false): only for tests and
    /// single-host setups, as it lets a customer reach the internal network.
    pub allow_private: bool,
    /// Endpoints one API key may register (`WEBHOOK_MAX_ENDPOINTS_PER_KEY`).
    pub max_endpoints_per_key: i64,
    /// How long the previous secret still signs after a rotation
    /// (`WEBHOOK_ROTATION_GRACE_SECONDS`, default 24 h).
    pub rotation_grace: Duration,
    /// How often the dispatcher looks for due deliveries (`WEBHOOK_POLL_MS`).
    pub poll: Duration,
    /// Deliveries claimed per round (`WEBHOOK_BATCH`).
    pub batch: i64,
    /// Requests in flight per endpoint and dispatcher
    /// (`WEBHOOK_ENDPOINT_CONCURRENCY`): a slow endpoint holds no more.
    pub endpoint_concurrency: i64,
    /// `WEBHOOK_CONNECT_TIMEOUT_SECONDS` and `WEBHOOK_TIMEOUT_SECONDS` (whole request).
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Delay after the first failed attempt, doubled after each next one up
    /// to the maximum, with jitter (`WEBHOOK_BACKOFF_BASE_MS`,
    /// `WEBHOOK_BACKOFF_MAX_SECONDS`).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A delivery is retried for this long after its event, and an endpoint
    /// failing for this long is disabled (`WEBHOOK_RETRY_WINDOW_SECONDS`,
    /// default 24 h; at least 24 h outside tests).
    pub retry_window: Duration,
}

pub(super) fn settings(vars: &Vars<'_>) -> Result<WebhookSettings, ConfigError> {
    Ok(WebhookSettings {
        allow_private: vars.parse_bool_or("WEBHOOK_ALLOW_PRIVATE", false)?,
        max_endpoints_per_key: vars.parse_positive_or("WEBHOOK_MAX_ENDPOINTS_PER_KEY", 20)?,
        rotation_grace: vars.seconds_or("WEBHOOK_ROTATION_GRACE_SECONDS", 86_400)?,
        poll: Duration::from_millis(vars.parse_positive_or("WEBHOOK_POLL_MS", 500)?),
        batch: vars.parse_positive_or("WEBHOOK_BATCH", 200)?,
        endpoint_concurrency: vars.parse_positive_or("WEBHOOK_ENDPOINT_CONCURRENCY", 16)?,
        connect_timeout: vars.seconds_or("WEBHOOK_CONNECT_TIMEOUT_SECONDS", 5)?,
        timeout: vars.seconds_or("WEBHOOK_TIMEOUT_SECONDS", 15)?,
        backoff_base: Duration::from_millis(
            vars.parse_positive_or("WEBHOOK_BACKOFF_BASE_MS", 5000)?,
        ),
        backoff_max: vars.seconds_or("WEBHOOK_BACKOFF_MAX_SECONDS", 3600)?,
        retry_window: vars.seconds_or("WEBHOOK_RETRY_WINDOW_SECONDS", 86_400)?,
    })
}
