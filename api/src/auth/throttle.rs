//! The throttle of failed authentications at `/auth/token`: guessing
//! secrets is limited per client address and per API key, counted in Redis
//! (fixed windows, as the rate limiter) so the limit holds across API
//! instances. Once a counter is spent, every attempt in that window is
//! refused with 429, right secret or not, so a guesser learns nothing.
//!
//! When Redis cannot be reached attempts pass with a warning, as for the
//! rate limiter: the throttle protects keys, it must not take sign-in down.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::{Config, Pool, Runtime};
use platform::config::AuthThrottle as Limits;
use platform::Settings;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Counts one failure on each key; returns the new counts.
const COUNT: &str = r"
local counts = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[1]) end
  counts[i] = n
end
return counts
";

/// Whom a spent counter belongs to, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Address,
    Key,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Address => "client_address",
            Subject::Key => "api_key",
        }
    }
}

#[derive(Clone)]
pub struct AuthThrottle {
    pool: Pool,
    limits: Limits,
    prefix: String,
    script: Arc<redis::Script>,
}

/// One attempt's counters: the client address's and the key's.
struct Counters {
    keys: [String; 2],
    retry_after: u64,
}

impl AuthThrottle {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let pool = Config::from_url(&settings.redis_url)
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        Ok(AuthThrottle {
            pool,
            limits: settings.auth_throttle,
            prefix: format!("{}:auth", settings.rate_limit_prefix),
            script: Arc::new(redis::Script::new(COUNT)),
        })
    }

    fn counters(&self, addr: Option<IpAddr>, api_key: &str) -> Counters {
        let window = self.limits.window.as_secs().max(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let index = now / window;
        // The key as given (it may not exist), hashed: Redis holds no
        // credentials, and the name's length is bounded.
        let key_hash = hex::encode(&Sha256::digest(api_key.as_bytes())[..16]);
        let addr = addr.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        Counters {
            keys: [
                format!("{}:addr:{addr}:{index}", self.prefix),
                format!("{}:key:{key_hash}:{index}", self.prefix),
            ],
            retry_after: ((index + 1) * window - now).max(1),
        }
    }

    fn spent(&self, counts: &[u64]) -> Option<Subject> {
        let address = counts.first().copied().unwrap_or(0);
        let key = counts.get(1).copied().unwrap_or(0);
        if address >= u64::from(self.limits.per_address) {
            Some(Subject::Address)
        } else if key >= u64::from(self.limits.per_key) {
            Some(Subject::Key)
        } else {
            None
        }
    }

    /// Refuses the attempt (429 with `Retry-After`) when the address or the
    /// key has spent its failures for this window.
    pub async fn check(&self, addr: Option<IpAddr>, api_key: &str) -> Result<(), ApiError> {
        let counters = self.counters(addr, api_key);
        let read = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("MGET")
                .arg(&counters.keys[..])
                .query_async::<Vec<Option<u64>>>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        let counts = match tokio::time::timeout(REDIS_TIMEOUT, read).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => {
                unavailable(&e);
                return Ok(());
            }
            Err(_) => {
                unavailable("no answer");
                return Ok(());
            }
        };
        let counts: Vec<u64> = counts.into_iter().map(Option::unwrap_or_default).collect();
        if self.spent(&counts).is_some() {
            metrics::counter!("auth_throttled_total").increment(1);
            return Err(ApiError::TooManyAttempts {
                retry_after: counters.retry_after,
            });
        }
        Ok(())
    }

    /// Counts a failed attempt. Returns the counter this failure spent, if
    /// it was the one that reached a limit (once per window and subject),
    /// so the caller can audit the start of a throttle.
    pub async fn failed(&self, addr: Option<IpAddr>, api_key: &str) -> Option<Subject> {
        let counters = self.counters(addr, api_key);
        let window = self.limits.window.as_secs().max(1);
        let count = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            self.script
                .key(&counters.keys[0])
                .key(&counters.keys[1])
                .arg(window + 1)
                .invoke_async::<Vec<u64>>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        metrics::counter!("auth_failures_total").increment(1);
        match tokio::time::timeout(REDIS_TIMEOUT, count).await {
            Ok(Ok(counts)) => {
                let address = counts.first().copied().unwrap_or(0);
                let key = counts.get(1).copied().unwrap_or(0);
                if address == u64::from(self.limits.per_address) {
                    Some(Subject::Address)
                } else if key == u64::from(self.limits.per_key) {
                    Some(Subject::Key)
                } else {
                    None
                }
            }
            Ok(Err(e)) => {
                unavailable(&e);
                None
            }
            Err(_) => {
                unavailable("no answer");
                None
            }
        }
    }
}

fn unavailable(reason: &str) {
    tracing::warn!(error = %reason, "auth throttle: Redis unavailable; attempt let through");
}
