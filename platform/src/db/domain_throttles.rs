//! `domain_throttles`: limits on mail to one recipient domain (sends per
//! minute, concurrent SMTP transactions), set by operators and held by the
//! workers in Redis. Domains are stored in lower case and matched exactly.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::mail::domain::Domain;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DomainThrottle {
    pub domain: String,
    /// Sends per minute to the domain, spread evenly; `None`: no limit.
    pub rate_limit_per_minute: Option<i32>,
    /// SMTP transactions for the domain at once; `None`: no cap.
    pub max_connections: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A throttle's limits, as set by a create or a replace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub rate_limit_per_minute: Option<i32>,
    pub max_connections: Option<i32>,
}

/// A partial change: absent fields are kept; `Some(0)` removes a limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitsPatch {
    pub rate_limit_per_minute: Option<i32>,
    pub max_connections: Option<i32>,
}

/// The unique constraint a second throttle for a domain breaks.
pub const DOMAIN_TAKEN: &str = "domain_throttles_pkey";

pub async fn list(pool: &PgPool) -> Result<Vec<DomainThrottle>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM domain_throttles ORDER BY domain")
        .fetch_all(pool)
        .await
}

pub async fn get(pool: &PgPool, domain: &Domain) -> Result<Option<DomainThrottle>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM domain_throttles WHERE domain = $1")
        .bind(domain.as_str())
        .fetch_optional(pool)
        .await
}

/// Adds a throttle; a domain that has one breaks [`DOMAIN_TAKEN`].
pub async fn insert(
    executor: impl PgExecutor<'_>,
    domain: &Domain,
    limits: Limits,
) -> Result<DomainThrottle, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO domain_throttles (domain, rate_limit_per_minute, max_connections)
         VALUES ($1, $2, $3) RETURNING *",
    )
    .bind(domain.as_str())
    .bind(limits.rate_limit_per_minute)
    .bind(limits.max_connections)
    .fetch_one(executor)
    .await
}

/// Sets the domain's limits, adding its throttle if it has none; whether
/// it was added.
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    domain: &Domain,
    limits: Limits,
) -> Result<(DomainThrottle, bool), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        throttle: DomainThrottle,
        created: bool,
    }
    let row: Row = sqlx::query_as(
        "INSERT INTO domain_throttles (domain, rate_limit_per_minute, max_connections)
         VALUES ($1, $2, $3)
         ON CONFLICT (domain) DO UPDATE SET
            rate_limit_per_minute = EXCLUDED.rate_limit_per_minute,
            max_connections = EXCLUDED.max_connections,
            updated_at = now()
         RETURNING *, (xmax = 0) AS created",
    )
    .bind(domain.as_str())
    .bind(limits.rate_limit_per_minute)
    .bind(limits.max_connections)
    .fetch_one(executor)
    .await?;
    Ok((row.throttle, row.created))
}

pub async fn update(
    executor: impl PgExecutor<'_>,
    domain: &Domain,
    patch: LimitsPatch,
) -> Result<Option<DomainThrottle>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE domain_throttles SET
            rate_limit_per_minute = CASE WHEN $2::int IS NULL THEN rate_limit_per_minute
                                         ELSE NULLIF($2, 0) END,
            max_connections = CASE WHEN $3::int IS NULL THEN max_connections
                                   ELSE NULLIF($3, 0) END,
            updated_at = now()
         WHERE domain = $1
         RETURNING *",
    )
    .bind(domain.as_str())
    .bind(patch.rate_limit_per_minute)
    .bind(patch.max_connections)
    .fetch_optional(executor)
    .await
}

pub async fn delete(executor: impl PgExecutor<'_>, domain: &Domain) -> Result<bool, sqlx::Error> {
    crate::db::changed_any(
        sqlx::query("DELETE FROM domain_throttles WHERE domain = $1").bind(domain.as_str()),
        executor,
    )
    .await
}
