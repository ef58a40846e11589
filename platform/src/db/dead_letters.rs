//! `dead_letters`: what the worker gave up on, kept for operators.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub message_id: Option<Uuid>,
    pub reason: String,
    pub content_type: Option<String>,
    pub headers: sqlx::types::Json<Map<String, Value>>,
    pub body: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub requeued_at: Option<DateTime<Utc>>,
}

pub struct NewDeadLetter<'a> {
    pub task_id: Option<&'a str>,
    pub task_name: Option<&'a str>,
    pub message_id: Option<Uuid>,
    pub reason: &'a str,
    pub content_type: Option<&'a str>,
    pub headers: Map<String, Value>,
    pub body: &'a [u8],
}

pub async fn insert(pool: &PgPool, new: NewDeadLetter<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (task_id, task_name, message_id, reason, content_type, headers, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(new.task_id)
    .bind(new.task_name)
    .bind(new.message_id)
    .bind(new.reason)
    .bind(new.content_type)
    .bind(sqlx::types::Json(new.headers))
    .bind(new.body)
    .fetch_one(pool)
    .await
}

/// Newest first; `before` is the id of the last row of the previous page.
pub async fn list(
    pool: &PgPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM dead_letters WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Locks one dead letter for requeueing.
pub async fn lock(
    executor: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn mark_requeued(executor: impl PgExecutor<'_>, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dead_letters SET requeued_at = now() WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}
