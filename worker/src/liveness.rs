//! This worker's liveness lease (`worker_leases`).
//!
//! Every claim records the claimant's lease id. When RabbitMQ redelivers a
//! task whose record is `sending` (its worker died mid-send), the lease
//! tells whether that worker is gone, so the email is sent again within
//! seconds instead of after the hard time limit; a claim held by a live
//! worker is left alone. The lease id is new for every process, so a
//! restarted worker never vouches for its dead predecessor.
//!
//! A worker whose lease is about to lapse (it cannot reach PostgreSQL to
//! renew it) claims nothing: others may by then treat its claims as
//! abandoned.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use platform::db::worker_leases;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub struct Liveness {
    id: String,
    settings: platform::config::Liveness,
    /// When the lease lapses, by this process's clock (measured from before
    /// the renewal was sent, so never later than the database's).
    valid_until: Mutex<Option<Instant>>,
}

impl Liveness {
    pub fn new(node_name: &str, settings: platform::config::Liveness) -> Self {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        Liveness {
            id: format!("{node_name}/{}/{}", std::process::id(), &nonce[..12]),
            settings,
            valid_until: Mutex::new(None),
        }
    }

    /// The id claims record.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the lease holds for at least another renewal period: only
    /// then may this worker claim a message.
    pub fn is_fresh(&self) -> bool {
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| until > Instant::now() + self.settings.renew)
    }

    /// Takes or renews the lease.
    pub async fn renew(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let asked = Instant::now();
        worker_leases::renew(pool, &self.id, self.settings.lease).await?;
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(asked + self.settings.lease);
        Ok(())
    }

    /// Renews the lease every renewal period (every second while renewals
    /// fail) until `shutdown`.
    pub async fn keep(&self, pool: &PgPool, shutdown: &CancellationToken) {
        loop {
            let pause = match self.renew(pool).await {
                Ok(()) => self.settings.renew,
                Err(e) => {
                    tracing::warn!(error = %e, fresh = self.is_fresh(), "cannot renew the worker's liveness lease");
                    metrics::counter!("worker_lease_renewal_failures_total").increment(1);
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Gives the lease up when the worker stops cleanly.
    pub async fn release(&self, pool: &PgPool) {
        if let Err(e) = worker_leases::release(pool, &self.id).await {
            tracing::warn!(error = %e, "cannot release the worker's lease; it lapses by itself");
        }
    }
}
