//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::celery::ResultBackend;
use platform::outbox::OutboxWaker;
use platform::Settings;
use sqlx::PgPool;

use crate::auth::{KeyCache, TokenIssuer};
use crate::ingest::Ingest;
use crate::ratelimit::RateLimiter;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub results: ResultBackend,
    pub tokens: Arc<TokenIssuer>,
    pub keys: Arc<KeyCache>,
    pub ingest: Ingest,
    pub outbox: OutboxWaker,
    pub metrics: PrometheusHandle,
    pub rate_limiter: RateLimiter,
}
