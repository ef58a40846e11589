//! `outbox`: task messages waiting to be published (see the migration).

use serde_json::{Map, Value};
use sqlx::{PgExecutor, Postgres, Transaction};

use crate::celery::TaskMessage;

#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub task_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub headers: sqlx::types::Json<Map<String, Value>>,
    pub body: Vec<u8>,
    pub priority: Option<i16>,
}

#[tracing::instrument(level = "debug", skip_all, fields(task_id = message.id()))]
pub async fn enqueue(
    executor: impl PgExecutor<'_>,
    exchange: &str,
    routing_key: &str,
    message: &TaskMessage,
) -> Result<(), sqlx::Error> {
    let priority = message.priority.map(i16::from);
    enqueue_raw(
        executor,
        message.id(),
        exchange,
        routing_key,
        &message.headers_json(),
        &message.body(),
        priority,
    )
    .await
}

/// Enqueues several task messages to one exchange in one statement.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn enqueue_many(
    executor: impl PgExecutor<'_>,
    exchange: &str,
    routing_key: &str,
    messages: &[TaskMessage],
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let task_ids: Vec<&str> = messages.iter().map(TaskMessage::id).collect();
    let headers: Vec<sqlx::types::Json<Map<String, Value>>> = messages
        .iter()
        .map(|m| sqlx::types::Json(m.headers_json()))
        .collect();
    let bodies: Vec<Vec<u8>> = messages.iter().map(TaskMessage::body).collect();
    let priorities: Vec<Option<i16>> = messages.iter().map(|m| m.priority.map(i16::from)).collect();
    sqlx::query(
        "INSERT INTO outbox (task_id, exchange, routing_key, headers, body, priority)
         SELECT t, $1, $2, h, b, p
           FROM unnest($3::text[], $4::jsonb[], $5::bytea[], $6::smallint[]) AS u(t, h, b, p)",
    )
    .bind(exchange)
    .bind(routing_key)
    .bind(task_ids)
    .bind(headers)
    .bind(bodies)
    .bind(priorities)
    .execute(executor)
    .await?;
    Ok(())
}

/// Enqueues an already-encoded task message (a requeued dead letter).
pub async fn enqueue_raw(
    executor: impl PgExecutor<'_>,
    task_id: &str,
    exchange: &str,
    routing_key: &str,
    headers: &Map<String, Value>,
    body: &[u8],
    priority: Option<i16>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (task_id, exchange, routing_key, headers, body, priority)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(task_id)
    .bind(exchange)
    .bind(routing_key)
    .bind(sqlx::types::Json(headers))
    .bind(body)
    .bind(priority)
    .execute(executor)
    .await?;
    Ok(())
}

/// Locks the oldest pending rows; other relays skip them while this
/// transaction is open, so each row is published by one relay at a time.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_batch(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, task_id, exchange, routing_key, headers, body, priority FROM outbox
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn pending(executor: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(executor)
        .await
}

/// When the oldest row still waiting was written, if any.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn oldest(
    executor: impl PgExecutor<'_>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(created_at) FROM outbox")
        .fetch_one(executor)
        .await
}
