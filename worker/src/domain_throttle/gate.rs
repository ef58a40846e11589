//! The per-domain limits in Redis, binding every worker: one script call
//! decides a whole group of sends.
//!
//! - **Rate**: a generic cell rate algorithm. Each domain keeps its
//!   theoretical arrival time; a send is one `60 000 / rate` ms cell, and
//!   up to a second's worth (`ceil(rate / 60)`) may go at once after a
//!   pause. So 30 per minute is one send every 2 s, and 6000 per minute
//!   100 at once, then 100 a second.
//! - **Connections**: leases scored by their expiry, as the accounts'
//!   (`smtp/throttle.rs`); a crashed worker's lease lapses after `hold`.
//! - **Queue**: a message the rate holds back is told to come back at the
//!   next free cell after those already told, so a backlog returns one
//!   cell at a time instead of all at once every time a cell frees.
//!
//! A send to several throttled domains is admitted by all of them or by
//! none. All keys share one hash tag, so the script runs on a cluster too.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::Pool;
use uuid::Uuid;

use super::cache::DomainLimit;
use crate::redis_error::RedisError;

/// KEYS: per domain `j` (1-based) its rate (3j-2), connection (3j-1) and
/// queue (3j) keys. ARGV: now (ms), domain count, lease hold (ms), lease
/// member prefix; per domain: cell (ms, 0 without a rate), burst, max
/// connections (0 without a cap); the request count; per request: its
/// domain count and domain indexes. Returns per request three integers:
/// the wait in ms (0: admitted), the domain that holds it back, and why
/// (1 rate, 2 connections).
const ADMIT_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local nd = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local member = ARGV[4]
local p = 5
local d = {}
for j = 1, nd do
  local x = {cell = tonumber(ARGV[p]), burst = tonumber(ARGV[p + 1]), max = tonumber(ARGV[p + 2]),
             rk = KEYS[3 * j - 2], ck = KEYS[3 * j - 1], qk = KEYS[3 * j], refused = 0}
  p = p + 3
  if x.cell > 0 then
    x.tat = math.max(tonumber(redis.call('GET', x.rk) or 0), now)
    x.queue = math.max(tonumber(redis.call('GET', x.qk) or 0), now)
    x.tolerance = (x.burst - 1) * x.cell
  end
  if x.max > 0 then
    redis.call('ZREMRANGEBYSCORE', x.ck, '-inf', now)
    x.used = redis.call('ZCARD', x.ck)
  end
  d[j] = x
end
local nr = tonumber(ARGV[p])
p = p + 1
local out = {}
for i = 1, nr do
  local k = tonumber(ARGV[p])
  local ids = {}
  for m = 1, k do ids[m] = tonumber(ARGV[p + m]) end
  p = p + k + 1
  local wait, which, why = 0, 0, 0
  for _, j in ipairs(ids) do
    local x = d[j]
    if x.cell > 0 and x.tat - x.tolerance > now then
      local slot = math.max(x.queue, x.tat - x.tolerance)
      x.queue = slot + x.cell
      if slot - now > wait then wait, which, why = slot - now, j, 1 end
    end
    if x.max > 0 and x.used >= x.max then
      x.refused = x.refused + 1
      local later = 1000 * math.ceil(x.refused / x.max)
      if later > wait then wait, which, why = later, j, 2 end
    end
  end
  if wait == 0 then
    for _, j in ipairs(ids) do
      local x = d[j]
      if x.cell > 0 then x.tat = x.tat + x.cell end
      if x.max > 0 then
        x.used = x.used + 1
        redis.call('ZADD', x.ck, now + hold, member .. ':' .. i)
      end
    end
  end
  out[3 * i - 2] = math.ceil(wait)
  out[3 * i - 1] = which
  out[3 * i] = why
end
for j = 1, nd do
  local x = d[j]
  if x.cell > 0 then
    redis.call('SET', x.rk, x.tat, 'PX', math.ceil(x.tat - now) + 1000)
    if x.queue > now then
      redis.call('SET', x.qk, x.queue, 'PX', math.ceil(x.queue - now) + 1000)
    end
  end
  if x.max > 0 and x.used > 0 then
    redis.call('PEXPIRE', x.ck, hold)
  end
end
return out
";

/// Gives back what admitted sends that were not made took. KEYS: rate
/// keys, then connection keys; ARGV: now (ms), the rate key count, per
/// rate key the ms to take back; then per connection key its member.
const GIVE_BACK_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local nr = tonumber(ARGV[2])
for j = 1, nr do
  local tat = tonumber(redis.call('GET', KEYS[j]) or 0) - tonumber(ARGV[2 + j])
  if tat > now then
    redis.call('SET', KEYS[j], tat, 'PX', math.ceil(tat - now) + 1000)
  else
    redis.call('DEL', KEYS[j])
  end
end
for j = nr + 1, #KEYS do
  redis.call('ZREM', KEYS[j], ARGV[2 + j])
end
return 0
";

/// The scripts, hashed once.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADMIT_SCRIPT));
static GIVE_BACK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GIVE_BACK_SCRIPT));

/// Which limit held a send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rate,
    Connections,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Rate => "rate",
            Limit::Connections => "connections",
        }
    }
}

/// What one send took from its domains: a cell of each rate, a lease of
/// each connection cap.
#[derive(Debug, Default)]
pub struct Pass {
    /// Rate keys and the cell taken from each (ms).
    cells: Vec<(String, f64)>,
    /// Connection keys and the lease member.
    leases: Vec<(String, String)>,
}

impl Pass {
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.leases.is_empty()
    }
}

/// The gate's answer for one send.
#[derive(Debug)]
pub enum Verdict {
    Admitted(Pass),
    /// Held back by `domain` (an index into the domains asked about).
    Wait {
        delay: Duration,
        domain: usize,
        limit: Limit,
    },
}

#[derive(Clone)]
pub struct Gate {
    redis: Pool,
    /// `{notify:<queue>:domains}`: the braces make it the hash tag.
    prefix: String,
}

/// A domain's keys and what its limits mean for the script.
struct DomainKeys {
    rate: String,
    connections: String,
    queue: String,
    /// One cell (ms), 0 without a rate.
    cell: f64,
    burst: u32,
    max_connections: u32,
}

impl Gate {
    pub fn new(redis: Pool, queue: &str) -> Self {
        Gate {
            redis,
            prefix: format!("{{notify:{queue}:domains}}"),
        }
    }

    fn keys(&self, domain: &str, limit: DomainLimit) -> DomainKeys {
        let (cell, burst) = match limit.rate_per_minute {
            Some(rate) => (60_000.0 / f64::from(rate.max(1)), rate.div_ceil(60).max(1)),
            None => (0.0, 1),
        };
        DomainKeys {
            rate: format!("{}:rate:{domain}", self.prefix),
            connections: format!("{}:connections:{domain}", self.prefix),
            queue: format!("{}:queue:{domain}", self.prefix),
            cell,
            burst,
            max_connections: limit.max_connections.unwrap_or(0),
        }
    }

    /// Decides `requests` (each the indexes into `domains` of one send's
    /// throttled domains), in order, one verdict each. A connection lease
    /// lapses by itself after `hold`.
    pub async fn admit(
        &self,
        domains: &[(&str, DomainLimit)],
        requests: &[Vec<usize>],
        hold: Duration,
    ) -> Result<Vec<Verdict>, RedisError> {
        let keys: Vec<DomainKeys> = domains.iter().map(|(d, l)| self.keys(d, *l)).collect();
        let member = Uuid::new_v4().simple().to_string();
        let mut script = ADMIT.prepare_invoke();
        for k in &keys {
            script.key(&k.rate).key(&k.connections).key(&k.queue);
        }
        script
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(keys.len())
            .arg(hold.as_millis() as u64)
            .arg(&member);
        for k in &keys {
            script.arg(k.cell).arg(k.burst).arg(k.max_connections);
        }
        script.arg(requests.len());
        for request in requests {
            script.arg(request.len());
            for &j in request {
                script.arg(j + 1);
            }
        }
        let mut conn = self.redis.get().await?;
        let out: Vec<i64> = script.invoke_async(&mut *conn).await?;
        Ok(requests
            .iter()
            .enumerate()
            .map(|(i, request)| {
                let (wait, which, why) = (out[3 * i], out[3 * i + 1], out[3 * i + 2]);
                if wait <= 0 {
                    let mut pass = Pass::default();
                    for &j in request {
                        let k = &keys[j];
                        if k.cell > 0.0 {
                            pass.cells.push((k.rate.clone(), k.cell));
                        }
                        if k.max_connections > 0 {
                            pass.leases
                                .push((k.connections.clone(), format!("{member}:{}", i + 1)));
                        }
                    }
                    Verdict::Admitted(pass)
                } else {
                    Verdict::Wait {
                        delay: Duration::from_millis(wait as u64),
                        domain: (which.max(1) - 1) as usize,
                        limit: if why == 2 {
                            Limit::Connections
                        } else {
                            Limit::Rate
                        },
                    }
                }
            })
            .collect())
    }

    /// Frees the connection leases of sends that are over.
    pub async fn release(&self, passes: Vec<Pass>) -> Result<(), RedisError> {
        let leases: Vec<(String, String)> = passes.into_iter().flat_map(|p| p.leases).collect();
        if leases.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, member) in &leases {
            pipe.cmd("ZREM").arg(key).arg(member).ignore();
        }
        let mut conn = self.redis.get().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// Gives back everything sends that were admitted but not made took:
    /// their cells (so the domain's next sends are not held back for
    /// them) and their leases.
    pub async fn give_back(&self, passes: Vec<Pass>) -> Result<(), RedisError> {
        let mut cells: Vec<(String, f64)> = Vec::new();
        let mut leases: Vec<(String, String)> = Vec::new();
        for pass in passes {
            for (key, cell) in pass.cells {
                match cells.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, total)) => *total += cell,
                    None => cells.push((key, cell)),
                }
            }
            leases.extend(pass.leases);
        }
        if cells.is_empty() && leases.is_empty() {
            return Ok(());
        }
        let mut script = GIVE_BACK.prepare_invoke();
        for (key, _) in &cells {
            script.key(key);
        }
        for (key, _) in &leases {
            script.key(key);
        }
        script
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(cells.len());
        for (_, ms) in &cells {
            script.arg(*ms);
        }
        for (_, member) in &leases {
            script.arg(member);
        }
        let mut conn = self.redis.get().await?;
        script.invoke_async::<i64>(&mut *conn).await?;
        Ok(())
    }
}
