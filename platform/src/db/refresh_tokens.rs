//! `refresh_tokens`: the server-side record of every refresh token, so that
//! each can be used once and a replayed one revokes its whole family.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Records a newly issued refresh token.
pub async fn insert(
    executor: impl PgExecutor<'_>,
    jti: Uuid,
    family_id: Uuid,
    api_key_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (jti, family_id, api_key_id, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(jti)
    .bind(family_id)
    .bind(api_key_id)
    .bind(expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    /// First use: the token is now spent; the next one joins `family_id`
    /// and expires with it.
    Redeemed {
        family_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// Already used: a replay (one of its two holders is not the owner).
    /// The family is now revoked.
    Replayed { family_id: Uuid },
    /// Never used, but its family was revoked (after a replay).
    Revoked,
    /// Never issued here, for another key, or expired.
    Unknown,
}

/// Spends the token `jti` of `api_key_id`. Atomic: of two concurrent
/// presentations of one token, exactly one redeems it and the other is a
/// replay (which revokes the family, the safe side).
pub async fn redeem(
    conn: &mut sqlx::PgConnection,
    jti: Uuid,
    api_key_id: Uuid,
) -> Result<Redemption, sqlx::Error> {
    let spent: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE refresh_tokens SET used_at = now()
         WHERE jti = $1 AND api_key_id = $2 AND used_at IS NULL AND revoked_at IS NULL
           AND expires_at > now()
         RETURNING family_id, expires_at",
    )
    .bind(jti)
    .bind(api_key_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((family_id, expires_at)) = spent {
        return Ok(Redemption::Redeemed {
            family_id,
            expires_at,
        });
    }
    let spent_before: Option<(Uuid, bool)> = sqlx::query_as(
        "SELECT family_id, used_at IS NOT NULL FROM refresh_tokens
         WHERE jti = $1 AND api_key_id = $2 AND (used_at IS NOT NULL OR revoked_at IS NOT NULL)",
    )
    .bind(jti)
    .bind(api_key_id)
    .fetch_optional(&mut *conn)
    .await?;
    match spent_before {
        None => Ok(Redemption::Unknown),
        Some((_, false)) => Ok(Redemption::Revoked),
        Some((family_id, true)) => {
            revoke_family(&mut *conn, family_id).await?;
            Ok(Redemption::Replayed { family_id })
        }
    }
}

/// Revokes every token of a family that is not revoked yet.
pub async fn revoke_family(
    executor: impl PgExecutor<'_>,
    family_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}
