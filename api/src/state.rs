//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::celery::ResultBackend;
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

pub struct Shared {
    pub settings: Arc<Settings>,
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
}
