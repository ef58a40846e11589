//! `console_sessions`: sign-ins of the operator console. A sign-in
//! (`session_id`) holds one access token at a time in a cookie; each token
//! is a row, revocable before it expires. A token near its expiry is
//! swapped for the next one (a new row of the same session) until the
//! session's absolute end (`ends_at`).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsoleSession {
    pub token_id: Uuid,
    pub session_id: Uuid,
    pub api_key_id: Uuid,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// One token of a session, as recorded.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    /// The `jti` of the access token.
    pub token_id: Uuid,
    /// The `jti` of the sign-in's first token.
    pub session_id: Uuid,
    pub api_key_id: Uuid,
    pub csrf_token: &'a str,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// When the session ends, whatever its tokens say.
    pub ends_at: DateTime<Utc>,
}

/// Records a token of a session (the sign-in's first, or a renewal).
pub async fn insert(
    executor: impl PgExecutor<'_>,
    token: &NewToken<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO console_sessions
                (token_id, session_id, api_key_id, csrf_token, expires_at, ends_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.token_id)
    .bind(token.session_id)
    .bind(token.api_key_id)
    .bind(token.csrf_token)
    .bind(token.expires_at)
    .bind(token.ends_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// The token `token_id`, unless its session was revoked or ended or the
/// token has expired.
pub async fn find_live(
    executor: impl PgExecutor<'_>,
    token_id: Uuid,
) -> Result<Option<ConsoleSession>, sqlx::Error> {
    sqlx::query_as(
        "SELECT token_id, session_id, api_key_id, csrf_token, expires_at, ends_at
           FROM console_sessions
          WHERE token_id = $1 AND revoked_at IS NULL AND expires_at > now() AND ends_at > now()",
    )
    .bind(token_id)
    .fetch_optional(executor)
    .await
}

/// Marks `token_id` as replaced by a renewal; false when another request
/// already renewed it (that one sets the next cookie, this one carries on
/// with the token it has, still valid).
pub async fn claim_renewal(
    executor: impl PgExecutor<'_>,
    token_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE console_sessions SET replaced_at = now()
          WHERE token_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends the session of `token_id` (sign-out): every token of it stops
/// working. True when it was live.
pub async fn revoke(executor: impl PgExecutor<'_>, token_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE console_sessions SET revoked_at = now()
          WHERE session_id = (SELECT session_id FROM console_sessions WHERE token_id = $1)
            AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() >= 1)
}

/// Deletes tokens that expired more than a day ago.
pub async fn prune(executor: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
            .execute(executor)
            .await?;
    Ok(done.rows_affected())
}
