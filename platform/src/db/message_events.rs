//! `message_events`: a message's timeline. Triggers on `message_records`
//! (migration V10) write a row for every change of the record, whatever
//! made it; this module reads them, and adds the events that change no
//! record (an unsubscribe).

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageEvent {
    pub id: i64,
    /// accepted, released, claimed, waiting, republished, retry_scheduled,
    /// requeued, sent, failed, suppressed, cancelled or unsubscribed.
    pub event: String,
    /// The message's status after the change.
    pub status: String,
    pub detail: sqlx::types::Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` events of `message_id` after the event `after`, oldest first.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %message_id))]
pub async fn list(
    pool: &PgPool,
    message_id: Uuid,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event, status, detail, created_at FROM message_events
          WHERE message_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(message_id)
    .bind(after.unwrap_or(0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Adds `event` to the timeline of `message_id`, with the message's
/// current status and `detail`.
#[tracing::instrument(level = "debug", skip(executor, detail))]
pub async fn insert(
    executor: impl PgExecutor<'_>,
    message_id: Uuid,
    event: &str,
    status: &str,
    detail: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO message_events (message_id, event, status, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(message_id)
    .bind(event)
    .bind(status)
    .bind(sqlx::types::Json(detail))
    .execute(executor)
    .await?;
    Ok(())
}
