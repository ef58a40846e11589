//! Revoked task ids (`app.control.revoke`, `AsyncResult.revoke()`,
//! `celery control revoke`, Flower's button). Celery keeps them in each
//! worker's memory and syncs a new worker from its peers; here they live in
//! one Redis sorted set per platform (scored by expiry), so a revoke
//! outlives worker restarts and binds workers started afterwards. Ids
//! expire and are capped as Celery's (`CELERY_WORKER_REVOKE_EXPIRES`,
//! `CELERY_WORKER_REVOKES_MAX`).

use deadpool_redis::Pool;
use platform::config::Revokes;

use crate::redis_error::RedisError;

/// Adds ids scored by their expiry, drops expired ones and the oldest
/// beyond the cap, and keeps the set itself only as long as its newest id.
const REVOKE_SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local expires = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
for i = 4, #ARGV do
  redis.call('ZADD', key, now + expires, ARGV[i])
end
local extra = redis.call('ZCARD', key) - max
if extra > 0 then
  redis.call('ZREMRANGEBYRANK', key, 0, extra - 1)
end
redis.call('PEXPIRE', key, expires)
return redis.call('ZCARD', key)
";

#[derive(Clone)]
pub struct Revocations {
    redis: Pool,
    key: String,
    limits: Revokes,
}

impl Revocations {
    /// `platform`: what the platform's workers share (its task queue's
    /// name), so that revokes reach every worker of the platform and no
    /// other.
    pub fn new(redis: Pool, platform: &str, limits: Revokes) -> Self {
        Revocations {
            redis,
            key: format!("notify:{platform}:revoked"),
            limits,
        }
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    pub async fn revoke(&self, ids: &[String]) -> Result<(), RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.get().await?;
        let script = redis::Script::new(REVOKE_SCRIPT);
        let mut invocation = script.key(&self.key);
        invocation
            .arg(Self::now_ms())
            .arg(self.limits.expires.as_millis() as i64)
            .arg(self.limits.max);
        for id in ids {
            invocation.arg(id);
        }
        invocation.invoke_async::<i64>(&mut *conn).await?;
        Ok(())
    }

    /// Which of `ids` are revoked (in order).
    pub async fn which(&self, ids: &[&str]) -> Result<Vec<bool>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.get().await?;
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(&self.key)
            .arg(ids)
            .query_async(&mut *conn)
            .await?;
        let now = Self::now_ms() as f64;
        Ok(scores
            .into_iter()
            .map(|s| s.is_some_and(|expires| expires > now))
            .collect())
    }

    /// The ids revoked and not yet expired (`inspect revoked`).
    pub async fn list(&self) -> Result<Vec<String>, RedisError> {
        let mut conn = self.redis.get().await?;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.key)
            .arg(Self::now_ms())
            .arg("+inf")
            .query_async(&mut *conn)
            .await?;
        Ok(ids)
    }
}
