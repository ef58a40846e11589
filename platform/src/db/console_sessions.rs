//! `console_sessions`: sign-ins of the operator console, one per access
//! token it holds in a cookie, revocable before the token expires.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsoleSession {
    pub token_id: Uuid,
    pub api_key_id: Uuid,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// Records the sign-in of the access token `token_id`.
pub async fn insert(
    executor: impl PgExecutor<'_>,
    token_id: Uuid,
    api_key_id: Uuid,
    csrf_token: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO console_sessions (token_id, api_key_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_id)
    .bind(api_key_id)
    .bind(csrf_token)
    .bind(expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// The sign-in of `token_id`, unless it was revoked or has expired.
pub async fn find_live(
    executor: impl PgExecutor<'_>,
    token_id: Uuid,
) -> Result<Option<ConsoleSession>, sqlx::Error> {
    sqlx::query_as(
        "SELECT token_id, api_key_id, csrf_token, expires_at FROM console_sessions
          WHERE token_id = $1 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(token_id)
    .fetch_optional(executor)
    .await
}

/// Ends a sign-in (sign-out); true when it was live.
pub async fn revoke(executor: impl PgExecutor<'_>, token_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE console_sessions SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes sign-ins that ended more than a day ago.
pub async fn prune(executor: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
            .execute(executor)
            .await?;
    Ok(done.rows_affected())
}
