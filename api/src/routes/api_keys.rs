//! `/api/v1/admin/api-keys`: minting, listing and revoking API keys (admin
//! scope). The secret is shown once, at creation; only its hash is stored.
//! A revoked key's outstanding tokens fail on their next request.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::crypto::generate_api_credentials;
use platform::db::api_keys::{self, ApiKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::docs::responses::{AdminAccess, BadJson, BadPath, InvalidFields, NotFound};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;
use crate::validate;

/// Highest per-key rate limit.
const MAX_RATE_LIMIT: i64 = 1_000_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "billing-service", "scopes": ["send", "read"], "rate_limit_per_minute": 120}))]
pub struct CreateApiKey {
    /// 1 to 128 characters, no control characters.
    #[schema(
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// At most 500 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: String,
    /// Any of `send`, `read`, `admin`; at least one.
    #[schema(value_type = Vec<crate::auth::Scope>, min_items = 1)]
    pub scopes: Vec<String>,
    /// Requests per rate-limit window for this key; RATE_LIMIT_PER_MINUTE when absent.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_minute: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// First characters of the key, to recognise it.
    pub key_prefix: String,
    pub scopes: Vec<String>,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// After this the key gets no tokens (keys imported from the Python
    /// platform may carry one).
    pub expires_at: Option<DateTime<Utc>>,
    /// How the secret's hash is verified: `sha256` for keys minted here;
    /// an imported key keeps the Python platform's (`bcrypt`,
    /// `passlib_pbkdf2`, `werkzeug_pbkdf2`, `argon2`).
    pub secret_scheme: String,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            name: k.name,
            description: k.description,
            key_prefix: k.key_prefix,
            scopes: k.scopes,
            is_active: k.is_active,
            rate_limit_per_minute: k.rate_limit_per_minute,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            expires_at: k.expires_at,
            secret_scheme: k.secret_scheme,
        }
    }
}

/// A new key with its credentials: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// `noti_...`
    pub api_key: String,
    /// Shown once; store it now.
    pub api_secret: String,
}

/// Mints an API key.
#[utoipa::path(post, path = "/api/v1/admin/api-keys", tag = "api-keys", request_body = CreateApiKey,
    security(("bearer" = [])),
    responses((status = 201, body = Data<CreatedApiKey>), AdminAccess, BadJson, InvalidFields))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(req): JsonBody<CreateApiKey>,
) -> Result<(StatusCode, Json<Data<CreatedApiKey>>), ApiError> {
    let name = validate::header_text("name", &req.name, true, 128)?;
    let description = validate::header_text("description", &req.description, false, 500)?;
    if req.scopes.is_empty() {
        return Err(ApiError::validation(
            "scopes",
            "at least one scope is required",
        ));
    }
    let mut scopes: Vec<String> = Vec::new();
    for (i, s) in req.scopes.iter().enumerate() {
        if !["send", "read", "admin"].contains(&s.as_str()) {
            return Err(ApiError::validation(
                format!("scopes[{i}]"),
                "a scope is send, read or admin",
            ));
        }
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    let rate_limit = req
        .rate_limit_per_minute
        .map(|l| validate::in_range("rate_limit_per_minute", l, 1, MAX_RATE_LIMIT))
        .transpose()?;
    let credentials = generate_api_credentials();
    let mut tx = state.pool.begin().await?;
    let key = api_keys::insert_with_limit(
        &mut *tx,
        &name,
        &description,
        &scopes,
        rate_limit,
        &credentials,
    )
    .await?;
    actor
        .commit(
            tx,
            "api_key.create",
            "api_key",
            key.id,
            json!({"name": name, "scopes": scopes, "rate_limit_per_minute": rate_limit}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Data::new(CreatedApiKey {
            key: key.into(),
            api_key: credentials.key,
            api_secret: credentials.secret,
        }),
    ))
}

/// Lists every key (revoked ones too), oldest first. No secrets.
#[utoipa::path(get, path = "/api/v1/admin/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<ApiKeyView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    AdminActor(_actor): AdminActor,
) -> Result<Json<Data<Vec<ApiKeyView>>>, ApiError> {
    let keys = api_keys::list(&state.pool).await?;
    Ok(Data::new(keys.into_iter().map(Into::into).collect()))
}

/// Revokes a key: its tokens stop working at once.
#[utoipa::path(delete, path = "/api/v1/admin/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Revoked"), AdminAccess, BadPath, NotFound,
        (status = 409, body = ErrorBody, description = "`already_revoked`")))]
pub async fn revoke(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !api_keys::revoke(&mut *tx, id).await? {
        return match api_keys::get(&state.pool, id).await? {
            Some(_) => Err(ApiError::conflict(
                "already_revoked",
                "this API key is already revoked",
            )),
            None => Err(ApiError::NotFound("API key")),
        };
    }
    actor
        .commit(tx, "api_key.revoke", "api_key", id, json!({}))
        .await?;
    // Other instances hear of it from PostgreSQL within milliseconds.
    state.keys.forget(id);
    Ok(StatusCode::NO_CONTENT)
}
