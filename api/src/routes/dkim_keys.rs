//! `/api/v1/admin/dkim-keys`: DKIM keys for the domains the SMTP accounts
//! send from (admin scope). A key is generated here or imported; its
//! private half is sealed and never returned, and the answer gives the DNS
//! record to publish. The worker signs mail whose From is on the key's
//! domain with every active key of it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::dkim_keys::{self, DkimKey, NewDkimKey};
use platform::mail::dkim::{self, Algorithm, KeyPair, PRIVATE_KEY_PURPOSE};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::docs::responses::{AdminAccess, BadJson, BadPath, BadPathOrJson, NotFound};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;

/// Longest imported private key, in characters (a 4096-bit RSA PEM is
/// about 3,300).
const MAX_PRIVATE_KEY: usize = 8192;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// RSA (generated with 2048 bits; imported with 1024 to 4096), `rsa-sha256`.
    Rsa,
    /// Ed25519 (RFC 8463), `ed25519-sha256`.
    Ed25519,
}

impl From<KeyAlgorithm> for Algorithm {
    fn from(a: KeyAlgorithm) -> Self {
        match a {
            KeyAlgorithm::Rsa => Algorithm::Rsa,
            KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
        }
    }
}

/// Not `Debug`: it may hold a private key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"domain": "example.com", "selector": "notify2026", "algorithm": "rsa"}))]
pub struct CreateDkimKey {
    /// The domain of the From addresses to sign (a DNS name, any case).
    #[schema(
        max_length = 253,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    )]
    pub domain: String,
    /// The selector: the record is published at `{selector}._domainkey.{domain}`.
    #[schema(
        max_length = 63,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$"
    )]
    pub selector: String,
    pub algorithm: KeyAlgorithm,
    /// An existing key to import instead of generating one: RSA as PKCS#1
    /// or PKCS#8 PEM, Ed25519 as PKCS#8 PEM or the base64 of its 32-byte
    /// seed. Stored AES-256-GCM encrypted; never returned.
    #[schema(max_length = 8192)]
    pub private_key: Option<String>,
    /// `false` creates the key without signing with it yet: publish its
    /// record, then turn it on (which turns off the domain's current key
    /// of the algorithm). Default `true`.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    pub is_active: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDkimKey {
    /// `true` signs with it from the workers' next refresh (within 30 s)
    /// and, in the same change, turns off the domain's other active key of
    /// this algorithm; `false` stops signing with it. Publish a key's
    /// record before turning it on, and keep a replaced key's record for a
    /// few days: mail it signed may still be in transit.
    pub is_active: bool,
}

/// The DNS record to publish for a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct DnsRecord {
    /// `{selector}._domainkey.{domain}`
    pub name: String,
    /// Always `TXT`.
    pub r#type: &'static str,
    /// `v=DKIM1; k=rsa|ed25519; p=<public key>`. Long RSA values must be
    /// split into strings of at most 255 characters in the zone file.
    pub value: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DkimKeyView {
    pub id: Uuid,
    pub domain: String,
    pub selector: String,
    /// `rsa` or `ed25519`.
    pub algorithm: String,
    pub is_active: bool,
    pub dns_record: DnsRecord,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<DkimKey> for DkimKeyView {
    fn from(k: DkimKey) -> Self {
        let algorithm = Algorithm::parse(&k.algorithm).unwrap_or(Algorithm::Rsa);
        let (name, value) = dkim::dns_record(&k.domain, &k.selector, algorithm, &k.public_key);
        DkimKeyView {
            id: k.id,
            domain: k.domain,
            selector: k.selector,
            algorithm: k.algorithm,
            is_active: k.is_active,
            dns_record: DnsRecord {
                name,
                r#type: "TXT",
                value,
            },
            created_at: k.created_at,
            updated_at: k.updated_at,
        }
    }
}

/// A DNS label: letters, digits and hyphens (`_` too in a selector), not
/// at either end, 1 to 63 characters.
fn label_ok(label: &str, underscore: bool) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || c == '-' || (underscore && c == '_');
    (1..=63).contains(&label.len())
        && label.chars().all(inner)
        && label.starts_with(|c: char| c.is_ascii_alphanumeric())
        && label.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn domain(raw: &str) -> Result<String, ApiError> {
    let value = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = value.split('.').collect();
    if value.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| label_ok(l, false)) {
        return Err(ApiError::validation(
            "domain",
            "domain must be a DNS name such as example.com",
        ));
    }
    Ok(value)
}

fn selector(raw: &str) -> Result<String, ApiError> {
    let value = raw.trim().to_ascii_lowercase();
    if !label_ok(&value, true) {
        return Err(ApiError::validation(
            "selector",
            "selector must be one DNS label: 1 to 63 letters, digits, - or _",
        ));
    }
    Ok(value)
}

fn key_pair(algorithm: Algorithm, imported: Option<&str>) -> Result<KeyPair, ApiError> {
    match imported {
        None => KeyPair::generate(algorithm).map_err(|e| ApiError::Internal(e.into())),
        Some(pem) if pem.len() > MAX_PRIVATE_KEY => Err(ApiError::invalid(
            "invalid_private_key",
            "private_key",
            format!("private_key must be at most {MAX_PRIVATE_KEY} characters"),
        )),
        Some(pem) => KeyPair::import(algorithm, pem)
            .map_err(|e| ApiError::invalid("invalid_private_key", "private_key", e.to_string())),
    }
}

/// 409 for a selector the domain already has, or a second active key of
/// one algorithm.
fn taken(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(db)
            if matches!(
                db.constraint(),
                Some("dkim_keys_domain_selector_key" | "dkim_keys_active_algorithm_key")
            ) =>
        {
            ApiError::conflict(
                "dkim_key_exists",
                "the domain already has this selector, or an active key of this algorithm (create the new one with is_active false, then turn it on)",
            )
        }
        _ => ApiError::from(e),
    }
}

async fn find(state: &AppState, id: Uuid) -> Result<DkimKey, ApiError> {
    dkim_keys::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("DKIM key"))
}

/// Generates (or imports) a domain's DKIM key. Publish `dns_record` before
/// mail is sent: the worker signs with every active key of the From
/// domain from the next message on (within 30 s on a busy worker).
#[utoipa::path(post, path = "/api/v1/admin/dkim-keys", tag = "dkim", request_body = CreateDkimKey,
    security(("bearer" = [])),
    responses((status = 201, body = Data<DkimKeyView>), AdminAccess, BadJson,
        (status = 409, body = ErrorBody, description = "`dkim_key_exists`: the selector is taken for the domain, or the domain has an active key of this algorithm"),
        (status = 422, body = ErrorBody, description = "`validation_error` (`domain`, `selector`), `invalid_private_key` (unreadable, or RSA outside 1024–4096 bits), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(req): JsonBody<CreateDkimKey>,
) -> Result<(StatusCode, Json<Data<DkimKeyView>>), ApiError> {
    let domain = domain(&req.domain)?;
    let selector = selector(&req.selector)?;
    let algorithm = Algorithm::from(req.algorithm);
    let imported = req.private_key.as_deref();
    // RSA key generation takes a moment of CPU; keep it off the runtime.
    let pair = tokio::task::block_in_place(|| key_pair(algorithm, imported))?;
    let sealed = state
        .settings
        .keyring
        .seal(pair.private_key.expose_secret(), PRIVATE_KEY_PURPOSE);
    let mut tx = state.pool.begin().await?;
    let key = dkim_keys::insert(
        &mut *tx,
        &NewDkimKey {
            domain: &domain,
            selector: &selector,
            algorithm: algorithm.as_str(),
            public_key: &pair.public_key,
            private_key: &sealed,
            is_active: req.is_active,
        },
    )
    .await
    .map_err(taken)?;
    let details = json!({"domain": key.domain, "selector": key.selector,
        "algorithm": key.algorithm, "imported": imported.is_some(), "is_active": key.is_active});
    actor
        .commit(tx, "dkim_key.create", "dkim_key", key.id, details)
        .await?;
    tracing::info!(dkim_key = %key.id, domain = %key.domain, "DKIM key created");
    Ok((StatusCode::CREATED, Data::new(key.into())))
}

/// Every key, by domain.
#[utoipa::path(get, path = "/api/v1/admin/dkim-keys", tag = "dkim", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<DkimKeyView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_principal): Admin,
) -> Result<Json<Data<Vec<DkimKeyView>>>, ApiError> {
    let keys = dkim_keys::list(&state.pool).await?;
    Ok(Data::new(keys.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/api/v1/admin/dkim-keys/{id}", tag = "dkim", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<DkimKeyView>), AdminAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_principal): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<DkimKeyView>>, ApiError> {
    Ok(Data::new(find(&state, id).await?.into()))
}

/// Turns signing with a key on (turning off the domain's other active key
/// of its algorithm: a rotation in one call) or off.
#[utoipa::path(patch, path = "/api/v1/admin/dkim-keys/{id}", tag = "dkim", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateDkimKey,
    responses((status = 200, body = Data<DkimKeyView>), AdminAccess, BadPathOrJson, NotFound,
        (status = 409, body = ErrorBody, description = "`dkim_key_exists`: another change turned a key of this algorithm on at the same moment"),
        (status = 422, body = ErrorBody, description = "`invalid_body`")))]
pub async fn update(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<UpdateDkimKey>,
) -> Result<Json<Data<DkimKeyView>>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let activation = dkim_keys::set_active(&mut tx, id, req.is_active)
        .await
        .map_err(taken)?
        .ok_or(ApiError::NotFound("DKIM key"))?;
    let details = json!({"is_active": activation.key.is_active, "replaced": activation.replaced});
    actor
        .commit(tx, "dkim_key.update", "dkim_key", id, details)
        .await?;
    let key = activation.key;
    Ok(Data::new(key.into()))
}

/// Deletes a key (keep its DNS record until mail it signed is delivered).
#[utoipa::path(delete, path = "/api/v1/admin/dkim-keys/{id}", tag = "dkim", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !dkim_keys::delete(&mut *tx, id).await? {
        return Err(ApiError::NotFound("DKIM key"));
    }
    actor
        .commit(tx, "dkim_key.delete", "dkim_key", id, json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
