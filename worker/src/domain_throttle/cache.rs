//! The domain throttles as last read from PostgreSQL, read again once
//! they are older than `DOMAIN_THROTTLE_CACHE_SECONDS`: sends consult them
//! without a query each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::db::domain_throttles;
use sqlx::PgPool;

/// One domain's limits, as the gate applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainLimit {
    pub rate_per_minute: Option<u32>,
    pub max_connections: Option<u32>,
}

/// Limits by domain (lower case).
pub type Limits = HashMap<String, DomainLimit>;

pub struct LimitCache {
    pool: PgPool,
    ttl: Duration,
    current: Mutex<Option<(Instant, Arc<Limits>)>>,
    /// One reader at a time; the others use what is there meanwhile.
    reading: tokio::sync::Mutex<()>,
}

impl LimitCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        LimitCache {
            pool,
            ttl,
            current: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<(Instant, Arc<Limits>)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The limits, read again when stale. When PostgreSQL cannot be asked,
    /// the last ones read go on being used; with none yet, the error.
    pub async fn limits(&self) -> Result<Arc<Limits>, sqlx::Error> {
        if let Some((read_at, limits)) = self.cached() {
            if read_at.elapsed() < self.ttl {
                return Ok(limits);
            }
        }
        let _reading = self.reading.lock().await;
        // Another task may have read them while this one waited.
        let stale = match self.cached() {
            Some((read_at, limits)) if read_at.elapsed() < self.ttl => return Ok(limits),
            other => other.map(|(_, limits)| limits),
        };
        match domain_throttles::list(&self.pool).await {
            Ok(rows) => {
                let limits: Limits = rows
                    .into_iter()
                    .map(|t| {
                        let limit = DomainLimit {
                            rate_per_minute: t.rate_limit_per_minute.map(|r| r.max(1) as u32),
                            max_connections: t.max_connections.map(|c| c.max(1) as u32),
                        };
                        (t.domain, limit)
                    })
                    .collect();
                let limits = Arc::new(limits);
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), limits.clone()));
                Ok(limits)
            }
            Err(e) => match stale {
                Some(limits) => {
                    tracing::warn!(error = %e, "cannot read the domain throttles; using the last ones read");
                    Ok(limits)
                }
                None => Err(e),
            },
        }
    }
}
