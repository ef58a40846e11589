//! Leader election for the periodic work (campaigns, periodic tasks,
//! maintenance): a PostgreSQL session advisory lock held on a dedicated
//! connection. Followers retry `pg_try_advisory_lock` every
//! `SCHEDULER_LEADER_RETRY_MS`; when the leader dies its session ends, the
//! lock frees, and a follower takes over. The leader checks its connection
//! every retry interval and stops its work as soon as the connection is gone.
//!
//! Leadership is an optimisation, not the guarantee: everything the leader
//! fires is recorded under a unique key in the same transaction, so even two
//! leaders for a moment (a partitioned old leader that has not noticed yet)
//! cannot fire anything twice.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// The advisory lock key of the scheduler leader ("notify" + 1).
pub const LEADER_LOCK: i64 = 0x6e6f_7469_6679_0001;

/// `application_name` of the lock connection; the process id after the colon
/// tells operators (and tests) which process leads.
pub fn lock_application_name() -> String {
    format!("notify-scheduler-leader:{}", std::process::id())
}

pub struct Election {
    pub database_url: String,
    pub retry: Duration,
}

impl Election {
    /// Runs `work` whenever this process is the leader, with a token that is
    /// cancelled when leadership is lost (or on shutdown); returns on shutdown.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, work: F)
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut conn: Option<PgConnection> = None;
        while !shutdown.is_cancelled() {
            match self.try_lead(&mut conn).await {
                Ok(true) => {
                    tracing::info!("elected scheduler leader");
                    metrics::gauge!("scheduler_leader").set(1.0);
                    let token = shutdown.child_token();
                    let mut handle = tokio::spawn(work(token.clone()));
                    if let Some(c) = conn.as_mut() {
                        tokio::select! {
                            _ = self.hold(c, &shutdown) => {}
                            // The duties ended on their own (a panic): give
                            // the lock up rather than lead doing nothing.
                            result = &mut handle => {
                                tracing::error!(?result, "leader duties stopped; giving up the lead");
                            }
                        }
                    }
                    token.cancel();
                    if !handle.is_finished() {
                        let _ = handle.await;
                    }
                    metrics::gauge!("scheduler_leader").set(0.0);
                    if shutdown.is_cancelled() {
                        break;
                    }
                    tracing::warn!("lost the leader lock's connection; following again");
                    conn = None;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot reach PostgreSQL");
                    conn = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }

    async fn try_lead(&self, conn: &mut Option<PgConnection>) -> Result<bool, sqlx::Error> {
        if conn.is_none() {
            let options = PgConnectOptions::from_str(&self.database_url)?
                .application_name(&lock_application_name());
            *conn = Some(options.connect().await?);
        }
        let Some(c) = conn.as_mut() else {
            return Ok(false);
        };
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(c)
            .await
    }

    /// Holds the lock until the connection fails or shutdown; on shutdown
    /// the lock is released explicitly so a follower takes over at once.
    async fn hold(&self, conn: &mut PgConnection, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = shutdown.cancelled() => {
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(LEADER_LOCK)
                        .execute(&mut *conn)
                        .await;
                    return;
                }
            }
            let alive = tokio::time::timeout(self.retry.max(Duration::from_secs(1)), async {
                sqlx::query("SELECT 1").execute(&mut *conn).await
            })
            .await;
            if !matches!(alive, Ok(Ok(_))) {
                return;
            }
        }
    }
}
