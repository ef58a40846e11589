//! `POST /api/v1/auth/token` and `POST /api/v1/auth/refresh`.

use axum::extract::State;
use axum::Json;
use platform::crypto::{secret_hash, SecretScheme};
use platform::db::api_keys;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Data;
use crate::auth::TokenKind;
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
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = Data<TokenPair>), BadJson,
        (status = 401, body = ErrorBody, description = "`invalid_credentials`: unknown key, wrong secret or revoked key"),
        (status = 422, body = ErrorBody, description = "`invalid_body`, `invalid_text` (NUL in text): missing fields")))]
pub async fn issue_token(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Result<Json<Data<TokenPair>>, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "invalid_credentials",
            "API key or secret is wrong, or the key is revoked",
        )
    };
    if request.api_key.len() > 256 || request.api_secret.len() > 256 {
        return Err(invalid());
    }
    let key = api_keys::find_by_key(&state.pool, &request.api_key)
        .await?
        .ok_or_else(invalid)?;
    let secret_ok = verify_secret(&key, request.api_secret).await;
    if !secret_ok || !key.is_usable() {
        return Err(invalid());
    }
    api_keys::touch(&state.pool, key.id).await?;
    Ok(Data::new(pair(&state, key.id, &key.scopes)?))
}

/// Exchanges a refresh token for a new access token (and a new refresh token).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Data<TokenPair>), BadJson,
        (status = 401, body = ErrorBody, description = "`invalid_token`, `token_expired` or `key_revoked`: the refresh token is invalid, expired or its key revoked"),
        (status = 422, body = ErrorBody, description = "`invalid_body`, `invalid_text` (NUL in text): missing refresh_token")))]
pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RefreshRequest>,
) -> Result<Json<Data<TokenPair>>, ApiError> {
    let claims = state
        .tokens
        .verify(&request.refresh_token, TokenKind::Refresh)?;
    if !api_keys::is_usable(&state.pool, claims.sub).await? {
        return Err(ApiError::unauthorized(
            "key_revoked",
            "the API key behind this token is revoked",
        ));
    }
    Ok(Data::new(pair(&state, claims.sub, &claims.scopes)?))
}

fn pair(state: &AppState, key_id: uuid::Uuid, scopes: &[String]) -> Result<TokenPair, ApiError> {
    Ok(TokenPair {
        access_token: state.tokens.issue(key_id, scopes, TokenKind::Access)?,
        refresh_token: state.tokens.issue(key_id, scopes, TokenKind::Refresh)?,
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
