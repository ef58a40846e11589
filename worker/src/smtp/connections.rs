//! Warm SMTP connections, pooled per account.
//!
//! Consecutive messages reuse an authenticated connection instead of a new
//! TCP + TLS + AUTH handshake. On an account with a connection cap
//! (`max_connections`) every open connection, busy or idle, holds one of
//! the account's places ([`ConnectionLease`], in Redis, shared by every
//! worker), as the provider counts it. A send that finds no idle
//! connection and no free place waits here for one of this worker's
//! connections to come back (handed over without asking Redis), looking
//! at Redis now and then for a place another worker gave back. So a busy
//! account's connections go from one message to the next, and only a
//! send that waits longer than its soft time limit is put off.
//!
//! A pool is rebuilt when its account row changes (password, host, TLS
//! mode). Leases are renewed together by [`TransportCache::renew`] and
//! expire by themselves should the worker die.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::response::Response;
use platform::crypto::Keyring;
use platform::db::email_accounts::EmailAccount;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

use super::throttle::{ConnectionLease, Throttle};
use super::transport::{SendError, Transport, TransportError, OPENING_AT_ONCE};

/// Idle connections older than this are closed rather than reused: servers
/// drop idle clients, and a dead connection would cost a failed attempt.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// An idle connection that holds one of its account's places is closed
/// sooner, so that another worker can have the place.
const LEASED_IDLE_LIMIT: Duration = Duration::from_secs(5);
/// How long a place is kept without renewal: how long a dead worker's
/// places stay taken. [`TransportCache::renew`] runs well within it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a send waiting for a place asks Redis again (a place another
/// worker gives back wakes nobody here).
const POLL: Duration = Duration::from_millis(200);

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
    lease: Option<ConnectionLease>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        let limit = if self.lease.is_some() {
            LEASED_IDLE_LIMIT
        } else {
            IDLE_LIMIT
        };
        now.duration_since(self.since) >= limit || self.conn.has_broken()
    }
}

struct AccountPool {
    version: DateTime<Utc>,
    transport: Transport,
    idle: Vec<Idle>,
    /// The places this worker holds (busy and idle connections).
    leases: HashSet<String>,
    /// Woken when a connection goes idle or a place is given back.
    freed: Arc<Notify>,
}

pub struct TransportCache {
    keyring: Keyring,
    timeout: Duration,
    max_idle: usize,
    throttle: Throttle,
    pools: Mutex<HashMap<Uuid, AccountPool>>,
    /// Per server (host, port): the handshakes under way.
    opening: Mutex<HashMap<(String, u16), Arc<Semaphore>>>,
    /// Places of sends dropped mid-way (a hard time limit), given back by
    /// the next [`TransportCache::sweep`].
    orphans: Mutex<Vec<ConnectionLease>>,
}

/// A connection, or a place to open one, taken for one send. Dropped
/// without being checked in, its place is given back by the next sweep.
struct Checkout<'a> {
    cache: &'a TransportCache,
    account: Uuid,
    conn: Option<AsyncSmtpConnection>,
    lease: Option<ConnectionLease>,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.cache.forget(self.account, &lease);
            lock(&self.cache.orphans).push(lease);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TransportCache {
    pub fn new(keyring: Keyring, timeout: Duration, max_idle: u32, throttle: Throttle) -> Self {
        TransportCache {
            keyring,
            timeout,
            max_idle: max_idle as usize,
            throttle,
            pools: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
        }
    }

    /// The account's connection settings (decrypting its password once per
    /// version of the account row).
    pub async fn get(&self, account: &EmailAccount) -> Result<Transport, TransportError> {
        let outdated = {
            let mut pools = lock(&self.pools);
            match pools.get_mut(&account.id) {
                Some(pool) if pool.version == account.updated_at => {
                    return Ok(pool.transport.clone())
                }
                Some(pool) => {
                    pool.transport = Transport::for_account(
                        account,
                        &self.keyring,
                        self.timeout,
                        self.opening(account),
                    )?;
                    pool.version = account.updated_at;
                    let transport = pool.transport.clone();
                    (transport, std::mem::take(&mut pool.idle))
                }
                None => {
                    let transport = Transport::for_account(
                        account,
                        &self.keyring,
                        self.timeout,
                        self.opening(account),
                    )?;
                    pools.insert(
                        account.id,
                        AccountPool {
                            version: account.updated_at,
                            transport: transport.clone(),
                            idle: Vec::new(),
                            leases: HashSet::new(),
                            freed: Arc::new(Notify::new()),
                        },
                    );
                    return Ok(transport);
                }
            }
        };
        let (transport, idle) = outdated;
        for old in idle {
            self.give_back(account.id, old.lease).await;
        }
        Ok(transport)
    }

    /// The handshakes under way to the account's server.
    fn opening(&self, account: &EmailAccount) -> Arc<Semaphore> {
        lock(&self.opening)
            .entry(Transport::server(account))
            .or_insert_with(|| Arc::new(Semaphore::new(OPENING_AT_ONCE)))
            .clone()
    }

    /// Sends one message on a warm connection of the account's, or a new
    /// one if it has a free place, waiting up to `limit` for one; the SMTP
    /// transaction then has `limit` too. A reused connection that fails
    /// without any SMTP reply (the server had closed it) is replaced once,
    /// in the same place.
    pub async fn send(
        &self,
        account: &EmailAccount,
        transport: &Transport,
        envelope: &Envelope,
        email: &[u8],
        limit: Duration,
    ) -> Result<Response, SendError> {
        let mut out = self.checkout(account, limit).await?;
        match tokio::time::timeout(limit, transact(&mut out, transport, envelope, email)).await {
            Ok(Ok(response)) => {
                self.checkin(account, out).await;
                Ok(response)
            }
            Ok(Err(e)) => {
                self.close(out).await;
                Err(e)
            }
            Err(_) => {
                self.close(out).await;
                Err(SendError::TimedOut(limit))
            }
        }
    }

    /// An idle connection, else a place for a new one (none needed without
    /// a cap), waiting up to `wait` for either.
    async fn checkout(
        &self,
        account: &EmailAccount,
        wait: Duration,
    ) -> Result<Checkout<'_>, SendError> {
        let deadline = Instant::now() + wait;
        loop {
            let (idle, stale, freed) = self.take_idle(account);
            for old in stale {
                self.give_back(account.id, old.lease).await;
            }
            if let Some(idle) = idle {
                return Ok(Checkout {
                    cache: self,
                    account: account.id,
                    conn: Some(idle.conn),
                    lease: idle.lease,
                });
            }
            let Some(max) = account.max_connections else {
                return Ok(self.checkout_new(account.id, None));
            };
            // Listening before asking, so a connection checked in meanwhile
            // is not missed.
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .throttle
                .lease(account.id, max.max(0) as u32, LEASE_TTL)
                .await
            {
                Ok(Some(lease)) => return Ok(self.checkout_new(account.id, Some(lease))),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(account = %account.email, error = %e, "cannot count the account's connections; waiting for one of ours");
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SendError::Busy { max, waited: wait });
            }
            let _ = tokio::time::timeout((deadline - now).min(POLL), notified).await;
        }
    }

    fn checkout_new(&self, account: Uuid, lease: Option<ConnectionLease>) -> Checkout<'_> {
        if let Some(lease) = &lease {
            if let Some(pool) = lock(&self.pools).get_mut(&account) {
                pool.leases.insert(lease.member().to_string());
            }
        }
        Checkout {
            cache: self,
            account,
            conn: None,
            lease,
        }
    }

    /// The newest usable idle connection, those found expired on the way,
    /// and the pool's wake-up.
    fn take_idle(&self, account: &EmailAccount) -> (Option<Idle>, Vec<Idle>, Arc<Notify>) {
        let mut pools = lock(&self.pools);
        let Some(pool) = pools.get_mut(&account.id) else {
            return (None, Vec::new(), Arc::new(Notify::new()));
        };
        let now = Instant::now();
        let mut stale = Vec::new();
        let mut found = None;
        if pool.version == account.updated_at {
            while let Some(idle) = pool.idle.pop() {
                if idle.expired(now) {
                    stale.push(idle);
                } else {
                    found = Some(idle);
                    break;
                }
            }
        }
        (found, stale, pool.freed.clone())
    }

    async fn checkin(&self, account: &EmailAccount, mut out: Checkout<'_>) {
        let lease = out.lease.take();
        let Some(conn) = out.conn.take().filter(|c| !c.has_broken()) else {
            return self.give_back(account.id, lease).await;
        };
        let refused = {
            let mut pools = lock(&self.pools);
            match pools.get_mut(&account.id) {
                Some(pool)
                    if pool.version == account.updated_at && pool.idle.len() < self.max_idle =>
                {
                    pool.idle.push(Idle {
                        conn,
                        since: Instant::now(),
                        lease,
                    });
                    pool.freed.notify_one();
                    None
                }
                _ => Some(lease),
            }
        };
        if let Some(lease) = refused {
            self.give_back(account.id, lease).await;
        }
    }

    /// Closes the checkout's connection (after an error) and gives its
    /// place back.
    async fn close(&self, mut out: Checkout<'_>) {
        let lease = out.lease.take();
        drop(out.conn.take());
        self.give_back(out.account, lease).await;
    }

    fn forget(&self, account: Uuid, lease: &ConnectionLease) -> Option<Arc<Notify>> {
        let mut pools = lock(&self.pools);
        let pool = pools.get_mut(&account)?;
        pool.leases.remove(lease.member());
        Some(pool.freed.clone())
    }

    async fn give_back(&self, account: Uuid, lease: Option<ConnectionLease>) {
        let Some(lease) = lease else { return };
        let freed = self.forget(account, &lease);
        if let Err(e) = self.throttle.release(lease).await {
            tracing::warn!(error = %e, "cannot give back a connection place; it expires by itself");
        }
        if let Some(freed) = freed {
            freed.notify_one();
        }
    }

    /// Closes idle connections past their idle limit (all of them with
    /// `everything`, at shutdown) and gives back their places and those of
    /// sends dropped mid-way.
    pub async fn sweep(&self, everything: bool) {
        let now = Instant::now();
        let mut closing: Vec<(Uuid, Idle)> = Vec::new();
        for (id, pool) in lock(&self.pools).iter_mut() {
            let (old, kept): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut pool.idle)
                .into_iter()
                .partition(|idle| everything || idle.expired(now));
            pool.idle = kept;
            closing.extend(old.into_iter().map(|idle| (*id, idle)));
        }
        for (account, idle) in closing {
            self.give_back(account, idle.lease).await;
        }
        let orphans = std::mem::take(&mut *lock(&self.orphans));
        for lease in orphans {
            if let Err(e) = self.throttle.release(lease).await {
                tracing::warn!(error = %e, "cannot give back a connection place; it expires by itself");
            }
        }
    }

    /// Renews every place this worker holds, one round trip per account.
    pub async fn renew(&self) {
        let held: Vec<(Uuid, Vec<String>)> = lock(&self.pools)
            .iter()
            .filter(|(_, pool)| !pool.leases.is_empty())
            .map(|(id, pool)| (*id, pool.leases.iter().cloned().collect()))
            .collect();
        for (account, members) in held {
            if let Err(e) = self.throttle.keep(account, &members, LEASE_TTL).await {
                tracing::warn!(%account, error = %e, "cannot renew connection places");
            }
        }
    }

    /// Sweeps and renews until `stop`, then closes every idle connection.
    pub async fn keep(&self, stop: &tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => break,
            }
            self.sweep(false).await;
            n += 1;
            if n.is_multiple_of(5) {
                self.renew().await;
            }
        }
        self.sweep(true).await;
    }
}

/// The SMTP transaction on the checkout's connection, opening one in its
/// place if it has none or the reused one turns out closed.
async fn transact(
    out: &mut Checkout<'_>,
    transport: &Transport,
    envelope: &Envelope,
    email: &[u8],
) -> Result<Response, SendError> {
    if let Some(conn) = out.conn.as_mut() {
        match conn.send(envelope, email).await {
            Ok(response) => return Ok(response),
            // A reply, or a server gone silent mid-transaction (it may
            // have the message): not a connection it had closed, so not
            // sent again on a new one.
            Err(e) if e.status().is_some() || e.is_timeout() => return Err(e.into()),
            Err(_) => out.conn = None,
        }
    }
    let conn = out.conn.insert(transport.connect().await?);
    Ok(conn.send(envelope, email).await?)
}
