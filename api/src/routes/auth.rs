//! `POST /api/v1/auth/token` and `POST /api/v1/auth/refresh`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::crypto::{secret_hash, SecretScheme};
use platform::db::api_keys;
use platform::db::audit_log::{self, NewAuditEntry};
use platform::db::refresh_tokens::{self, Redemption};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::auth::{Subject, TokenKind};
use crate::client_addr::ClientAddr;
use crate::docs::responses::BadJson;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The public key, `noti_...`.
    pub api_key: String,
    pub api_secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Lifetime of the access token, in seconds.
    pub expires_in: u64,
}

/// Exchanges an API key and secret for an access token and a refresh token.
/// Failed attempts are throttled per client address and per key.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = Data<TokenPair>), BadJson,
        (status = 401, body = ErrorBody, description = "`invalid_credentials`: unknown key, wrong secret or revoked key"),
        (status = 422, body = ErrorBody, description = "`invalid_body`, `invalid_text` (NUL in text): missing fields"),
        (status = 429, body = ErrorBody, description = "`too_many_attempts`: too many failed authentications from this address or for this key (`AUTH_MAX_FAILURES_PER_ADDRESS`, `AUTH_MAX_FAILURES_PER_KEY` per `AUTH_FAILURE_WINDOW_SECONDS`); every attempt is refused until `Retry-After` seconds pass",
            headers(("Retry-After" = u64, description = "Seconds until attempts are accepted again")))))]
pub async fn issue_token(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Result<Json<Data<TokenPair>>, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "invalid_credentials",
            "API key or secret is wrong, or the key is revoked",
        )
    };
    let api_key: String = request.api_key.chars().take(256).collect();
    state.auth_throttle.check(client.0, &api_key).await?;
    let key = if request.api_key.len() > 256 || request.api_secret.len() > 256 {
        None
    } else {
        api_keys::find_by_key(&state.pool, &request.api_key).await?
    };
    let verified = match &key {
        Some(key) => verify_secret(key, request.api_secret).await && key.is_usable(),
        None => false,
    };
    let key = match key {
        Some(key) if verified => key,
        other => {
            if let Some(subject) = state.auth_throttle.failed(client.0, &api_key).await {
                audit_throttle(&state, client, other.map(|k| k.id), subject).await?;
            }
            return Err(invalid());
        }
    };
    api_keys::touch(&state.pool, key.id).await?;
    let family_id = Uuid::new_v4();
    let session_ends = Utc::now() + state.tokens.refresh_ttl;
    let mut tx = state.pool.begin().await?;
    let pair = pair(&state, &mut tx, &key, family_id, session_ends).await?;
    tx.commit().await?;
    Ok(Data::new(pair))
}

/// Writes the start of a throttle to the audit log (once per window and
/// subject, not once per refused attempt).
async fn audit_throttle(
    state: &AppState,
    client: ClientAddr,
    key_id: Option<Uuid>,
    subject: Subject,
) -> Result<(), ApiError> {
    tracing::warn!(client = ?client.0, ?key_id, subject = subject.as_str(), "sign-in throttled");
    audit_log::insert(
        &state.pool,
        &NewAuditEntry {
            actor_key_id: key_id,
            action: "auth.throttled",
            target_type: subject.as_str(),
            target_id: match subject {
                Subject::Address => client.to_text().unwrap_or_default(),
                Subject::Key => key_id.map(|id| id.to_string()).unwrap_or_default(),
            },
            details: json!({"window_seconds": state.settings.auth_throttle.window.as_secs()}),
            client_addr: client.to_text(),
        },
    )
    .await?;
    Ok(())
}

/// Exchanges a refresh token for a new access token and a new refresh
/// token. Each refresh token works once; presenting a used one again
/// revokes every token of its sign-in (its family), since one of the two
/// holders is not the owner. Scopes come from the key as it is now, and the
/// new refresh token expires when the sign-in's first one did: refreshing
/// never extends a session beyond `JWT_REFRESH_EXPIRE_DAYS`.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Data<TokenPair>), BadJson,
        (status = 401, body = ErrorBody, description = "`invalid_token`, `token_expired` or `key_revoked`: the refresh token is invalid, expired or its key revoked; `refresh_token_reused`: this refresh token was already used, and every token of its sign-in is now revoked; `token_revoked`: its sign-in was revoked after such a reuse"),
        (status = 422, body = ErrorBody, description = "`invalid_body`, `invalid_text` (NUL in text): missing refresh_token")))]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(request): JsonBody<RefreshRequest>,
) -> Result<Json<Data<TokenPair>>, ApiError> {
    let claims = state
        .tokens
        .verify(&request.refresh_token, TokenKind::Refresh)?;
    let mut tx = state.pool.begin().await?;
    match refresh_tokens::redeem(&mut tx, claims.jti, claims.sub).await? {
        Redemption::Redeemed {
            family_id,
            expires_at,
        } => {
            let key = api_keys::get(&state.pool, claims.sub)
                .await?
                .filter(api_keys::ApiKey::is_usable)
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "key_revoked",
                        "the API key behind this token is revoked",
                    )
                })?;
            let pair = pair(&state, &mut tx, &key, family_id, expires_at).await?;
            tx.commit().await?;
            Ok(Data::new(pair))
        }
        Redemption::Replayed { family_id } => {
            tracing::warn!(key_id = %claims.sub, %family_id, "refresh token replayed; its family is revoked");
            metrics::counter!("auth_refresh_reuse_total").increment(1);
            audit_log::insert(
                &mut *tx,
                &NewAuditEntry {
                    actor_key_id: Some(claims.sub),
                    action: "auth.refresh_token_reused",
                    target_type: "refresh_token_family",
                    target_id: family_id.to_string(),
                    details: json!({"jti": claims.jti}),
                    client_addr: client.to_text(),
                },
            )
            .await?;
            tx.commit().await?;
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; every token of this sign-in is revoked, authenticate again",
            ))
        }
        Redemption::Revoked => Err(ApiError::unauthorized(
            "token_revoked",
            "this sign-in was revoked after one of its refresh tokens was reused; authenticate again",
        )),
        Redemption::Unknown => Err(ApiError::unauthorized(
            "invalid_token",
            "token is invalid",
        )),
    }
}

/// A new access token with the key's current scopes, and the next refresh
/// token of `family_id` (recorded in `tx`), expiring at `session_ends`.
async fn pair(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    key: &api_keys::ApiKey,
    family_id: Uuid,
    session_ends: DateTime<Utc>,
) -> Result<TokenPair, ApiError> {
    let jti = Uuid::new_v4();
    refresh_tokens::insert(&mut *tx, jti, family_id, key.id, session_ends).await?;
    Ok(TokenPair {
        access_token: state.tokens.issue(key.id, &key.scopes)?,
        refresh_token: state
            .tokens
            .issue_refresh(key.id, jti, session_ends.timestamp())?,
        token_type: "bearer",
        expires_in: state.tokens.access_ttl.as_secs(),
    })
}

/// Slow hashes (bcrypt, PBKDF2, argon2: keys imported from the Python
/// platform) verified at once, each on a blocking thread: a burst of token
/// requests for such keys must not starve the rest of the API of CPU.
static SLOW_VERIFICATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Checks the secret by the scheme its hash was stored with.
async fn verify_secret(key: &api_keys::ApiKey, secret: String) -> bool {
    let Some(scheme) = SecretScheme::parse(&key.secret_scheme) else {
        tracing::error!(key_id = %key.id, scheme = %key.secret_scheme, "unknown secret scheme");
        return false;
    };
    if !scheme.is_slow() {
        return secret_hash::verify(scheme, &key.secret_hash, &secret);
    }
    let Ok(_permit) = SLOW_VERIFICATIONS.acquire().await else {
        return false;
    };
    let stored = key.secret_hash.clone();
    tokio::task::spawn_blocking(move || secret_hash::verify(scheme, &stored, &secret))
        .await
        .unwrap_or(false)
}
