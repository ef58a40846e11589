//! `worker_leases`: which worker processes are alive, by lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Takes or renews `worker_id`'s lease for `lease` from now; returns when it
/// lapses by the database's clock.
pub async fn renew(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO worker_leases (worker_id, expires_at)
         VALUES ($1, now() + make_interval(secs => $2))
         ON CONFLICT (worker_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
         RETURNING expires_at",
    )
    .bind(worker_id)
    .bind(lease.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// A worker that stops cleanly gives its lease up, so nothing waits on it.
pub async fn release(pool: &PgPool, worker_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM worker_leases WHERE worker_id = $1")
        .bind(worker_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// How long the lease of `worker_id` has left (`None`: lapsed or unknown).
pub async fn remaining(pool: &PgPool, worker_id: &str) -> Result<Option<Duration>, sqlx::Error> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM worker_leases
          WHERE worker_id = $1 AND expires_at > now()",
    )
    .bind(worker_id)
    .fetch_optional(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Deletes leases that lapsed more than a day ago (workers that died).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM worker_leases WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// A worker whose lease is current.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveWorker {
    pub worker_id: String,
    pub expires_at: DateTime<Utc>,
}

/// The workers online now (their lease has not lapsed), by name.
pub async fn live(pool: &PgPool) -> Result<Vec<LiveWorker>, sqlx::Error> {
    sqlx::query_as(
        "SELECT worker_id, expires_at FROM worker_leases WHERE expires_at > now() ORDER BY worker_id",
    )
    .fetch_all(pool)
    .await
}
