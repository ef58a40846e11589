//! Per-API-key rate limiting, counted in Redis so that the limit holds
//! across every API instance: a fixed window per key (`INCR` + `EXPIRE` in
//! one Lua script). Every authenticated response carries
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//! (seconds until the window turns over); a refused one is a 429 with
//! `Retry-After`. When Redis is unreachable requests pass (and a warning is
//! logged): the limit protects the platform, it must not take it down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use deadpool_redis::{Config, Pool, Runtime};
use platform::Settings;
use uuid::Uuid;

const SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window turns over.
    pub reset: u64,
    pub allowed: bool,
}

#[derive(Clone)]
pub struct RateLimiter {
    pool: Option<Pool>,
    default_limit: u64,
    window: u64,
    prefix: String,
    script: Arc<redis::Script>,
}

impl RateLimiter {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let pool = if settings.rate_limit_enabled {
            Some(
                Config::from_url(&settings.redis_url)
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?,
            )
        } else {
            None
        };
        Ok(RateLimiter {
            pool,
            default_limit: u64::from(settings.rate_limit_per_minute),
            window: settings.rate_limit_window.as_secs().max(1),
            prefix: settings.rate_limit_prefix.clone(),
            script: Arc::new(redis::Script::new(SCRIPT)),
        })
    }

    /// Counts one request of `key_id`. `None` when limiting is disabled or
    /// Redis cannot be reached.
    pub async fn hit(&self, key_id: Uuid, key_limit: Option<i32>) -> Option<Decision> {
        let pool = self.pool.as_ref()?;
        let limit = key_limit
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(self.default_limit);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let index = now / self.window;
        let reset = (index + 1) * self.window - now;
        let key = format!("{}:{key_id}:{index}", self.prefix);
        let count = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            self.script
                .key(&key)
                .arg(self.window + 1)
                .invoke_async::<u64>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        let count = match tokio::time::timeout(REDIS_TIMEOUT, count).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate limiter: Redis unavailable; request let through");
                return None;
            }
            Err(_) => {
                tracing::warn!("rate limiter: Redis did not answer; request let through");
                return None;
            }
        };
        Some(Decision {
            limit,
            remaining: limit.saturating_sub(count),
            reset,
            allowed: count <= limit,
        })
    }
}

/// Where the authenticating extractor leaves its decision for the
/// middleware to turn into headers.
#[derive(Clone, Default)]
pub struct DecisionSlot(Arc<Mutex<Option<Decision>>>);

impl DecisionSlot {
    pub fn set(&self, decision: Decision) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(decision);
    }

    fn take(&self) -> Option<Decision> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Adds the `X-RateLimit-*` headers to every authenticated response.
pub async fn headers(mut request: Request, next: Next) -> Response {
    let slot = DecisionSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(d) = slot.take() {
        let h = response.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(d.reset));
    }
    response
}
