//! Per-account throttles held in Redis, so they bind across every worker
//! process: a sliding one-minute send rate, and a cap on the SMTP
//! connections open at once. A connection holds a lease for as long as it
//! is open (busy or idle in the pool), so the cap counts what the
//! provider counts; a lease expires by itself should its worker die.

use std::time::Duration;

use deadpool_redis::Pool;
use uuid::Uuid;

use crate::redis_error::RedisError;

/// Sends in the last 60 s; admits up to ARGV[4] more while under the
/// limit. Returns {admitted, milliseconds until the oldest send leaves the
/// window (0 when all were admitted)}.
const RATE_SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local room = limit - redis.call('ZCARD', key)
local admitted = math.max(0, math.min(room, wanted))
for i = 1, admitted do
  redis.call('ZADD', key, now, ARGV[5] .. ':' .. i)
end
if admitted > 0 then redis.call('PEXPIRE', key, window) end
if admitted == wanted then return {admitted, 0} end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local wait = 1000
if oldest[2] then wait = math.max(1, tonumber(oldest[2]) + window - now) end
return {admitted, wait}
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

/// One of an account's connection places, held while its connection is
/// open; give it back with [`Throttle::release`].
#[derive(Debug)]
pub struct ConnectionLease {
    key: String,
    member: String,
}

impl ConnectionLease {
    pub fn member(&self) -> &str {
        &self.member
    }
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

    /// Admits up to `wanted` sends under the account's per-minute rate:
    /// how many, and when fewer, how long until the window has room again.
    pub async fn admit(
        &self,
        account: Uuid,
        per_minute: u32,
        wanted: u32,
    ) -> Result<(u32, Option<Duration>), RedisError> {
        let mut conn = self.redis.get().await?;
        let (admitted, wait_ms): (u32, i64) = redis::Script::new(RATE_SCRIPT)
            .key(format!("{}:rate:{account}", self.prefix))
            .arg(Self::now_ms())
            .arg(WINDOW.as_millis() as i64)
            .arg(per_minute)
            .arg(wanted)
            .arg(Uuid::new_v4().to_string())
            .invoke_async(&mut *conn)
            .await?;
        Ok((
            admitted,
            (wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)),
        ))
    }

    /// Takes one of the account's `max` connection places for `ttl`
    /// (refresh it to keep it longer); `None` when all are taken.
    pub async fn lease(
        &self,
        account: Uuid,
        max: u32,
        ttl: Duration,
    ) -> Result<Option<ConnectionLease>, RedisError> {
        let key = format!("{}:connections:{account}", self.prefix);
        let member = Uuid::new_v4().to_string();
        let mut conn = self.redis.get().await?;
        let granted: i64 = redis::Script::new(LEASE_SCRIPT)
            .key(&key)
            .arg(Self::now_ms())
            .arg(max)
            .arg(ttl.as_millis() as i64)
            .arg(&member)
            .invoke_async(&mut *conn)
            .await?;
        Ok((granted == 1).then_some(ConnectionLease { key, member }))
    }

    /// Keeps the account's leases this worker holds for `ttl` more (one
    /// round trip for all of them). A lease Redis had forgotten (a flush)
    /// is taken again: its connection is open.
    pub async fn keep(
        &self,
        account: Uuid,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), RedisError> {
        if members.is_empty() {
            return Ok(());
        }
        let key = format!("{}:connections:{account}", self.prefix);
        let expires = Self::now_ms() + ttl.as_millis() as i64;
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&key);
        for member in members {
            zadd.arg(expires).arg(member);
        }
        let mut conn = self.redis.get().await?;
        redis::pipe()
            .add_command(zadd)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    pub async fn release(&self, lease: ConnectionLease) -> Result<(), RedisError> {
        let mut conn = self.redis.get().await?;
        redis::cmd("ZREM")
            .arg(&lease.key)
            .arg(&lease.member)
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }
}
