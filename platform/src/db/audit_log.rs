//! `audit_log`: every administrative change, with who made it and from where.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub actor_key_id: Option<Uuid>,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub details: sqlx::types::Json<Value>,
    pub client_addr: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One change to record. `details` must not hold secrets.
pub struct NewAuditEntry<'a> {
    /// `None` for events with no authenticated key (a throttled sign-in).
    pub actor_key_id: Option<Uuid>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: String,
    pub details: Value,
    pub client_addr: Option<String>,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    entry: &NewAuditEntry<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor_key_id, action, target_type, target_id, details, client_addr)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.actor_key_id)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(&entry.target_id)
    .bind(sqlx::types::Json(&entry.details))
    .bind(&entry.client_addr)
    .execute(executor)
    .await?;
    Ok(())
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub actor_key_id: Option<Uuid>,
    pub action: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Entries older than this id (newest first).
    pub before_id: Option<i64>,
}

pub async fn list(
    executor: impl PgExecutor<'_>,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM audit_log
         WHERE ($1::uuid IS NULL OR actor_key_id = $1)
           AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR target_id = $3)
           AND ($4::timestamptz IS NULL OR created_at >= $4)
           AND ($5::timestamptz IS NULL OR created_at < $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7",
    )
    .bind(filter.actor_key_id)
    .bind(&filter.action)
    .bind(&filter.target_id)
    .bind(filter.from)
    .bind(filter.until)
    .bind(filter.before_id)
    .bind(limit)
    .fetch_all(executor)
    .await
}
