//! `idempotency_keys`: stored first responses for the Idempotency-Key header.

use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_hash: String,
    pub response_status: i16,
    pub response_body: sqlx::types::Json<Value>,
}

/// Takes a transaction-scoped lock on (api key, idempotency key). `false`
/// means another request with the same key is in flight right now.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn try_lock(
    tx: &mut Transaction<'_, Postgres>,
    api_key_id: Uuid,
    key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("idempotency:{api_key_id}:{key}"))
        .fetch_one(&mut **tx)
        .await
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find(
    tx: &mut Transaction<'_, Postgres>,
    api_key_id: Uuid,
    key: &str,
) -> Result<Option<StoredResponse>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
         WHERE api_key_id = $1 AND idempotency_key = $2",
    )
    .bind(api_key_id)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn save(
    tx: &mut Transaction<'_, Postgres>,
    api_key_id: Uuid,
    key: &str,
    request_hash: &str,
    status: u16,
    body: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash, response_status, response_body)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(api_key_id)
    .bind(key)
    .bind(request_hash)
    .bind(status as i16)
    .bind(sqlx::types::Json(body))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
