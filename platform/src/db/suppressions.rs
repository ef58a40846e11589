//! `suppressions`: addresses that must not receive mail. Addresses are
//! compared lower-cased.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Suppression {
    pub address: String,
    pub reason: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    address: &str,
    reason: &str,
    created_by: Uuid,
) -> Result<Suppression, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO suppressions (address, reason, created_by) VALUES (lower($1), $2, $3)
         RETURNING *",
    )
    .bind(address)
    .bind(reason)
    .bind(created_by)
    .fetch_one(executor)
    .await
}

/// Suppresses `address` unless it already is (whatever the reason);
/// returns whether it was added.
pub async fn insert_if_absent(
    executor: impl PgExecutor<'_>,
    address: &str,
    reason: &str,
    created_by: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO suppressions (address, reason, created_by) VALUES (lower($1), $2, $3)
         ON CONFLICT (address) DO NOTHING",
    )
    .bind(address)
    .bind(reason)
    .bind(created_by)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete(executor: impl PgExecutor<'_>, address: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM suppressions WHERE address = lower($1)")
        .bind(address)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(pool: &PgPool, address: &str) -> Result<Option<Suppression>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM suppressions WHERE address = lower($1)")
        .bind(address)
        .fetch_optional(pool)
        .await
}

/// Suppressions `owner` may see (`Some(key)`: those that key added;
/// `None`: all) ordered by address, after `after` when given.
pub async fn list(
    pool: &PgPool,
    owner: Option<Uuid>,
    containing: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Suppression>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM suppressions
         WHERE ($1::uuid IS NULL OR created_by = $1) AND ($2::text IS NULL OR address > $2)
           AND ($4::text IS NULL OR strpos(address, lower($4)) > 0)
         ORDER BY address LIMIT $3",
    )
    .bind(owner)
    .bind(after)
    .bind(limit)
    .bind(containing)
    .fetch_all(pool)
    .await
}

/// The first of `addresses` that is suppressed, if any.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn first_suppressed(
    executor: impl PgExecutor<'_>,
    addresses: &[String],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT address FROM suppressions
         WHERE address = ANY(SELECT lower(a) FROM unnest($1::text[]) AS a)
         ORDER BY address LIMIT 1",
    )
    .bind(addresses)
    .fetch_optional(executor)
    .await
}

/// Why a message to `address` is not sent, as every path records it.
pub fn reason(address: &str) -> String {
    format!("recipient {address} is on the suppression list")
}

/// The suppressed recipient a message reports: the first, alphabetically
/// and lower-cased, of `recipients` found in `suppressed` (as
/// [`suppressed_among`] returns it), so every path names the same one.
pub fn first_of<'a>(
    recipients: impl IntoIterator<Item = &'a String>,
    suppressed: &std::collections::HashSet<String>,
) -> Option<String> {
    recipients
        .into_iter()
        .map(|a| a.to_lowercase())
        .filter(|a| suppressed.contains(a))
        .min()
}

/// Which of `addresses` are suppressed, lower-cased.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn suppressed_among(
    executor: impl PgExecutor<'_>,
    addresses: &[String],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT address FROM suppressions
         WHERE address = ANY(SELECT lower(a) FROM unnest($1::text[]) AS a)",
    )
    .bind(addresses)
    .fetch_all(executor)
    .await?;
    Ok(found.into_iter().collect())
}
