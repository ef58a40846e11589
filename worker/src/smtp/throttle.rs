//! Per-account throttles held in Redis, so they bind across every worker
//! process: a sliding one-minute send rate and a cap on concurrent SMTP
//! connections (leases that expire, so a crashed worker's slots return).

use std::time::Duration;

use deadpool_redis::Pool;
use uuid::Uuid;

use crate::redis_error::RedisError;

/// Sends in the last 60 s; admits one more if under the limit, else says
/// how long until the oldest send leaves the window.
const RATE_SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, window)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
";

/// Connection leases: members scored by their expiry.
const LEASE_SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) < tonumber(ARGV[2]) then
  redis.call('ZADD', key, now + tonumber(ARGV[3]), ARGV[4])
  redis.call('PEXPIRE', key, tonumber(ARGV[3]))
  return 1
end
return 0
";

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Throttle {
    redis: Pool,
    prefix: String,
}

/// A held connection slot; give it back with [`Throttle::release`].
pub struct ConnectionSlot {
    key: String,
    member: String,
}

impl Throttle {
    pub fn new(redis: Pool, prefix: &str) -> Self {
        Throttle {
            redis,
            prefix: prefix.to_string(),
        }
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// `Ok(None)`: one send admitted. `Ok(Some(wait))`: the account is at
    /// its rate; try again after `wait`.
    pub async fn admit(
        &self,
        account: Uuid,
        per_minute: u32,
    ) -> Result<Option<Duration>, RedisError> {
        let mut conn = self.redis.get().await?;
        let wait_ms: i64 = redis::Script::new(RATE_SCRIPT)
            .key(format!("{}:rate:{account}", self.prefix))
            .arg(Self::now_ms())
            .arg(WINDOW.as_millis() as i64)
            .arg(per_minute)
            .arg(Uuid::new_v4().to_string())
            .invoke_async(&mut *conn)
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }

    /// Takes one of the account's connection slots for at most `hold`
    /// (it is freed by itself after that, should the worker die).
    pub async fn take_slot(
        &self,
        account: Uuid,
        max: u32,
        hold: Duration,
    ) -> Result<Option<ConnectionSlot>, RedisError> {
        let key = format!("{}:connections:{account}", self.prefix);
        let member = Uuid::new_v4().to_string();
        let mut conn = self.redis.get().await?;
        let granted: i64 = redis::Script::new(LEASE_SCRIPT)
            .key(&key)
            .arg(Self::now_ms())
            .arg(max)
            .arg(hold.as_millis() as i64)
            .arg(&member)
            .invoke_async(&mut *conn)
            .await?;
        Ok((granted == 1).then_some(ConnectionSlot { key, member }))
    }

    pub async fn release(&self, slot: ConnectionSlot) -> Result<(), RedisError> {
        let mut conn = self.redis.get().await?;
        redis::cmd("ZREM")
            .arg(&slot.key)
            .arg(&slot.member)
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }
}
