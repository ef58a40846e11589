//! Rate limits per task type (`celery control rate_limit <task> 10/m`),
//! binding every worker of the platform together: Celery keeps a token
//! bucket in each worker's memory, so N workers send N times the rate; here
//! the limits and the buckets live in Redis.
//!
//! A bucket holds one token, as Celery's (`TokenBucket(rate, capacity=1)`):
//! sends of a limited task are spaced `1/rate` apart. Each admission
//! reserves the next free instant for its task id (generic cell rate
//! algorithm, timed by the Redis server's clock so that workers' clocks do
//! not matter); the task then waits for that instant, briefly in place or
//! else in the delay ladder, and on its return runs on the instant it
//! reserved without reserving another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_redis::Pool;

use crate::redis_error::RedisError;
use crate::worker_state::lock;

/// How long the limits read from Redis are used before being read again:
/// a change binds every worker within this time.
const REFRESH: Duration = Duration::from_secs(1);

/// KEYS: the task type's next free instant, this task id's reserved one.
/// ARGV: the interval in ms. Returns ms to wait (0: go now).
const ADMIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local held = redis.call('GET', KEYS[2])
if held then
  held = tonumber(held)
  if held <= now then
    redis.call('DEL', KEYS[2])
    return 0
  end
  return held - now
end
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
redis.call('SET', KEYS[1], slot + interval, 'PX', slot + interval - now + 1000)
if slot <= now then
  return 0
end
redis.call('SET', KEYS[2], slot, 'PX', slot - now + 3600000)
return slot - now
";

/// A rate as Celery writes it (`celery.utils.time.rate`): `N`, `N/s`,
/// `N/m` or `N/h`, in tasks per second; `None` (no limit) for zero or an
/// empty string.
pub fn parse_rate(raw: &str) -> Result<Option<f64>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let (count, unit) = raw.split_once('/').unwrap_or((raw, "s"));
    let count: f64 = count
        .trim()
        .parse()
        .map_err(|_| format!("ValueError(\"could not convert string to float: '{count}'\")"))?;
    let per_second = match unit.trim() {
        "" | "s" => count,
        "m" => count / 60.0,
        "h" => count / 3600.0,
        other => return Err(format!("KeyError('{other}')")),
    };
    if !per_second.is_finite() || per_second < 0.0 {
        return Err(format!("ValueError('{raw}')"));
    }
    Ok((per_second > 0.0).then_some(per_second))
}

/// The limits by task name, and when they were read.
type Cached = Option<(Instant, HashMap<String, String>)>;

#[derive(Clone)]
pub struct RateLimits {
    redis: Pool,
    prefix: String,
    cache: std::sync::Arc<Mutex<Cached>>,
}

impl RateLimits {
    /// `platform`: what the platform's workers share (its task queue's name).
    pub fn new(redis: Pool, platform: &str) -> Self {
        RateLimits {
            redis,
            prefix: format!("notify:{platform}"),
            cache: Default::default(),
        }
    }

    fn limits_key(&self) -> String {
        format!("{}:rate_limits", self.prefix)
    }

    /// Sets (or, for no rate, removes) `task`'s limit for every worker.
    pub async fn set(&self, task: &str, rate: &str) -> Result<(), RedisError> {
        let mut conn = self.redis.get().await?;
        let limited = matches!(parse_rate(rate), Ok(Some(_)));
        if limited {
            redis::cmd("HSET")
                .arg(self.limits_key())
                .arg(task)
                .arg(rate.trim())
                .query_async::<()>(&mut *conn)
                .await?;
        } else {
            redis::cmd("HDEL")
                .arg(self.limits_key())
                .arg(task)
                .query_async::<()>(&mut *conn)
                .await?;
        }
        *lock(&self.cache) = None;
        Ok(())
    }

    /// The limits in force, by task name (as they were written).
    pub async fn all(&self) -> Result<HashMap<String, String>, RedisError> {
        if let Some((read, limits)) = lock(&self.cache).as_ref() {
            if read.elapsed() < REFRESH {
                return Ok(limits.clone());
            }
        }
        let mut conn = self.redis.get().await?;
        let limits: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.limits_key())
            .query_async(&mut *conn)
            .await?;
        *lock(&self.cache) = Some((Instant::now(), limits.clone()));
        Ok(limits)
    }

    /// How long each task (name, id) must wait before it may run: zero for
    /// a task type without a limit (no Redis round trip beyond the cached
    /// limits), else the wait for the instant it reserved.
    pub async fn admit(&self, tasks: &[(&str, &str)]) -> Result<Vec<Duration>, RedisError> {
        let limits = self.all().await?;
        let mut waits = vec![Duration::ZERO; tasks.len()];
        let limited: Vec<(usize, f64)> = tasks
            .iter()
            .enumerate()
            .filter_map(|(i, (name, _))| {
                let rate = parse_rate(limits.get(*name)?).ok()??;
                Some((i, rate))
            })
            .collect();
        if limited.is_empty() {
            return Ok(waits);
        }
        let mut conn = self.redis.get().await?;
        let script = redis::Script::new(ADMIT_SCRIPT);
        for (i, rate) in limited {
            let (name, id) = tasks[i];
            let interval_ms = (1000.0 / rate).ceil().max(1.0) as u64;
            let wait: u64 = script
                .key(format!("{}:rate:{name}", self.prefix))
                .key(format!("{}:rate_slot:{id}", self.prefix))
                .arg(interval_ms)
                .invoke_async(&mut *conn)
                .await?;
            waits[i] = Duration::from_millis(wait);
        }
        Ok(waits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_celery_reads_them() {
        assert_eq!(parse_rate("10/m"), Ok(Some(10.0 / 60.0)));
        assert_eq!(parse_rate("5"), Ok(Some(5.0)));
        assert_eq!(parse_rate("2/s"), Ok(Some(2.0)));
        assert_eq!(parse_rate("36/h"), Ok(Some(0.01)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate(""), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10/d").is_err());
        assert!(parse_rate("-1/s").is_err());
    }
}
