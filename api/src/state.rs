//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::celery::ResultBackend;
use platform::config::ConfigError;
use platform::crypto::Keyring;
use platform::outbox::OutboxWaker;
use platform::Settings;
use sqlx::PgPool;

use crate::auth::{AuthThrottle, KeyCache, TokenIssuer};
use crate::ingest::Ingest;
use crate::ratelimit::RateLimiter;
use crate::readiness::Readiness;

/// Shared by every request; cloned by each extractor and middleware that
/// takes it, so a clone is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The settings, with what the API requires of them made sure of: the
/// keyring, which [`Settings`] holds only for the binaries that load it.
/// Everything else is the shared settings' (through `Deref`).
pub struct ApiSettings {
    settings: Settings,
    /// The keys SMTP passwords are sealed and opened with.
    pub keyring: Keyring,
}

impl ApiSettings {
    pub fn new(settings: Settings) -> Result<Self, ConfigError> {
        let keyring = settings.keyring()?.clone();
        Ok(ApiSettings { settings, keyring })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl std::ops::Deref for ApiSettings {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

pub struct Shared {
    pub settings: Arc<ApiSettings>,
    pub pool: PgPool,
    pub results: ResultBackend,
    pub tokens: Arc<TokenIssuer>,
    pub keys: Arc<KeyCache>,
    pub ingest: Ingest,
    pub outbox: OutboxWaker,
    pub metrics: PrometheusHandle,
    pub rate_limiter: RateLimiter,
    pub auth_throttle: AuthThrottle,
    pub readiness: Readiness,
    /// SNS signing certificates, fetched once each (provider webhooks).
    pub sns: Arc<platform::bounces::providers::sns::Certificates>,
}
