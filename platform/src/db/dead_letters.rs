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

/// Records a dead letter. Its text comes from whatever the broker carried,
/// NUL characters included, which PostgreSQL refuses in `text` and `jsonb`:
/// they are stored as U+FFFD (the body keeps the original bytes).
pub async fn insert(pool: &PgPool, new: NewDeadLetter<'_>) -> Result<i64, sqlx::Error> {
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    let headers = match without_nul(Value::Object(new.headers)) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    sqlx::query_scalar(
        "INSERT INTO dead_letters (task_id, task_name, message_id, reason, content_type, headers, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(new.task_id.map(clean))
    .bind(new.task_name.map(clean))
    .bind(new.message_id)
    .bind(clean(new.reason))
    .bind(new.content_type.map(clean))
    .bind(sqlx::types::Json(headers))
    .bind(new.body)
    .fetch_one(pool)
    .await
}

/// `value` with every NUL in its strings and keys replaced by U+FFFD.
fn without_nul(value: Value) -> Value {
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s
        }
    };
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
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
