//! Keeps an active console session working past its access token's
//! lifetime: a request made when less than half of the token's lifetime is
//! left swaps it for a new token (a new `console_sessions` row of the same
//! session, with the same CSRF token) and sends the new cookie.
//!
//! Bounds: a session idle for a whole token lifetime ends (its last token
//! expires); an active one ends at its absolute end (`ends_at`, set at
//! sign-in to the refresh-token lifetime `JWT_REFRESH_EXPIRE_DAYS`, the
//! same bound a REST client's refreshes have). A renewal reads the key as
//! it is now: a revoked key gets none, and its scopes are the key's
//! current ones. Revoking the key still ends the session at once: every
//! request checks the key before it gets here ([`super::session::require`]).

use axum::http::HeaderValue;
use chrono::{DateTime, Utc};
use platform::db::api_keys;
use platform::db::console_sessions::{self, ConsoleSession, NewToken};

use super::session::{set_cookie, SESSION_COOKIE};
use crate::auth::{Claims, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// Whether a token expiring at `exp` (seconds since the epoch) with this
/// lifetime is due for renewal at `now`.
pub fn due(exp: i64, lifetime_secs: u64, now: DateTime<Utc>) -> bool {
    let left = exp - now.timestamp();
    left.saturating_mul(2) < lifetime_secs as i64
}

/// The `Set-Cookie` of the session's next token, when the token of this
/// request is due and this request is the one that renews it.
#[tracing::instrument(skip_all, fields(key_id = %claims.sub))]
pub async fn renew_if_due(
    state: &AppState,
    claims: &Claims,
    row: &ConsoleSession,
    secure: bool,
) -> Result<Option<HeaderValue>, ApiError> {
    let now = Utc::now();
    let lifetime = state.tokens.access_ttl.as_secs();
    if !due(claims.exp, lifetime, now) || row.ends_at <= now {
        return Ok(None);
    }
    let Some(key) = api_keys::get(&state.pool, claims.sub)
        .await?
        .filter(api_keys::ApiKey::is_usable)
    else {
        return Ok(None);
    };
    let mut tx = state.pool.begin().await?;
    if !console_sessions::claim_renewal(&mut *tx, row.token_id).await? {
        return Ok(None);
    }
    let token = state.tokens.issue(key.id, &key.scopes)?;
    let next = state.tokens.verify(&token, TokenKind::Access)?;
    let expires_at = DateTime::from_timestamp(next.exp, 0).unwrap_or(now);
    console_sessions::insert(
        &mut *tx,
        &NewToken {
            token_id: next.jti,
            session_id: row.session_id,
            api_key_id: key.id,
            csrf_token: &row.csrf_token,
            expires_at,
            ends_at: row.ends_at,
        },
    )
    .await?;
    tx.commit().await?;
    tracing::debug!(session_id = %row.session_id, "console session renewed");
    // The cookie lives as long as the token, and never past the session.
    let max_age = (row.ends_at - now).num_seconds().clamp(0, lifetime as i64) as u64;
    Ok(Some(set_cookie(SESSION_COOKIE, &token, max_age, secure)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_due_in_the_second_half_of_its_life() {
        let now = Utc::now();
        let t = now.timestamp();
        assert!(!due(t + 60, 60, now), "fresh");
        assert!(!due(t + 31, 60, now), "just over half left");
        assert!(due(t + 29, 60, now), "under half left");
        assert!(due(t - 1, 60, now), "expired (within the leeway)");
    }
}
