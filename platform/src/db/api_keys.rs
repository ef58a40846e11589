//! `api_keys`: credentials that are exchanged for JWTs.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::{hash_token, ApiCredentials};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub key_prefix: String,
    pub secret_hash: String,
    /// How `secret_hash` is verified ([`crate::crypto::SecretScheme`]).
    pub secret_scheme: String,
    pub scopes: Vec<String>,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[sqlx(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Active and not past its expiry.
    pub fn is_usable(&self) -> bool {
        self.is_active && self.expires_at.is_none_or(|at| at > Utc::now())
    }
}

const COLUMNS: &str = "id, name, description, key_prefix, secret_hash, secret_scheme, scopes, \
                       is_active, rate_limit_per_minute, created_at, revoked_at, last_used_at, \
                       expires_at";

/// Active and not expired.
const USABLE: &str = "is_active AND (expires_at IS NULL OR expires_at > now())";

pub async fn insert(
    pool: &PgPool,
    name: &str,
    description: &str,
    scopes: &[String],
    credentials: &ApiCredentials,
) -> Result<ApiKey, sqlx::Error> {
    insert_with_limit(pool, name, description, scopes, None, credentials).await
}

pub async fn find_by_key(pool: &PgPool, key: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1"
    ))
    .bind(hash_token(key))
    .fetch_optional(pool)
    .await
}

/// Whether tokens minted for this key are still honoured.
pub async fn is_usable(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let usable: Option<bool> =
        sqlx::query_scalar(&format!("SELECT {USABLE} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(usable == Some(true))
}

pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn revoke(executor: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_keys SET is_active = false, revoked_at = now() WHERE id = $1 AND is_active",
    )
    .bind(id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Like [`insert`], with an optional per-key rate limit.
pub async fn insert_with_limit(
    executor: impl sqlx::PgExecutor<'_>,
    name: &str,
    description: &str,
    scopes: &[String],
    rate_limit_per_minute: Option<i32>,
    credentials: &ApiCredentials,
) -> Result<ApiKey, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO api_keys (id, name, description, key_prefix, key_hash, secret_hash, scopes,
            rate_limit_per_minute)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(description)
    .bind(&credentials.key[..12])
    .bind(hash_token(&credentials.key))
    .bind(hash_token(&credentials.secret))
    .bind(scopes)
    .bind(rate_limit_per_minute)
    .fetch_one(executor)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// For a usable (active) key, its per-key rate limit (`Some(None)` when it
/// has none); `None` when the key is revoked or unknown.
pub async fn usable_limit(pool: &PgPool, id: Uuid) -> Result<Option<Option<i32>>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT rate_limit_per_minute FROM api_keys WHERE id = $1 AND {USABLE}"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// What an import did to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Inserted,
    Updated,
    Unchanged,
}

impl Upserted {
    /// From an upsert's `RETURNING (xmax = 0)`: no row when nothing changed.
    pub fn from_returned(inserted: Option<bool>) -> Self {
        match inserted {
            Some(true) => Upserted::Inserted,
            Some(false) => Upserted::Updated,
            None => Upserted::Unchanged,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Upserted::Inserted => "imported",
            Upserted::Updated => "updated",
            Upserted::Unchanged => "unchanged",
        }
    }
}

/// A key carried over from the Python platform, with the hash it stored.
pub struct ImportedKey {
    pub name: String,
    pub description: String,
    /// SHA-256 (hex) of the public key, as for our own keys.
    pub key_hash: String,
    pub key_prefix: String,
    pub secret_hash: String,
    pub secret_scheme: &'static str,
    pub scopes: Vec<String>,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Inserts an imported key, or brings an earlier import of it (same public
/// key) up to date; a row that already matches is not written at all, so
/// re-running an import changes nothing.
pub async fn upsert_imported(
    executor: impl sqlx::PgExecutor<'_>,
    key: &ImportedKey,
) -> Result<Upserted, sqlx::Error> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO api_keys (id, name, description, key_prefix, key_hash, secret_hash,
            secret_scheme, scopes, is_active, rate_limit_per_minute, expires_at, created_at,
            revoked_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
            CASE WHEN $9 THEN NULL ELSE now() END)
         ON CONFLICT (key_hash) DO UPDATE SET
            name = EXCLUDED.name, description = EXCLUDED.description,
            secret_hash = EXCLUDED.secret_hash, secret_scheme = EXCLUDED.secret_scheme,
            scopes = EXCLUDED.scopes, is_active = EXCLUDED.is_active,
            rate_limit_per_minute = EXCLUDED.rate_limit_per_minute,
            expires_at = EXCLUDED.expires_at,
            revoked_at = CASE WHEN EXCLUDED.is_active THEN NULL
                              ELSE COALESCE(api_keys.revoked_at, now()) END
         WHERE (api_keys.name, api_keys.description, api_keys.secret_hash,
                api_keys.secret_scheme, api_keys.scopes, api_keys.is_active,
                api_keys.rate_limit_per_minute, api_keys.expires_at)
           IS DISTINCT FROM
               (EXCLUDED.name, EXCLUDED.description, EXCLUDED.secret_hash,
                EXCLUDED.secret_scheme, EXCLUDED.scopes, EXCLUDED.is_active,
                EXCLUDED.rate_limit_per_minute, EXCLUDED.expires_at)
         RETURNING (xmax = 0)",
    )
    .bind(Uuid::now_v7())
    .bind(&key.name)
    .bind(&key.description)
    .bind(&key.key_prefix)
    .bind(&key.key_hash)
    .bind(&key.secret_hash)
    .bind(key.secret_scheme)
    .bind(&key.scopes)
    .bind(key.is_active)
    .bind(key.rate_limit_per_minute)
    .bind(key.expires_at)
    .bind(key.created_at)
    .fetch_optional(executor)
    .await?;
    Ok(Upserted::from_returned(inserted))
}

/// Our key ids by the SHA-256 of their public key (to attach imported
/// message records to their keys).
pub async fn ids_by_key_hash(
    executor: impl sqlx::PgExecutor<'_>,
    hashes: &[String],
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as("SELECT key_hash, id FROM api_keys WHERE key_hash = ANY($1)")
        .bind(hashes)
        .fetch_all(executor)
        .await
}
