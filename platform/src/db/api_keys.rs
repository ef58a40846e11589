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
    pub scopes: Vec<String>,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[sqlx(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, description, key_prefix, secret_hash, scopes, is_active, \
                       rate_limit_per_minute, created_at, revoked_at, last_used_at";

pub async fn insert(
    pool: &PgPool,
    name: &str,
    description: &str,
    scopes: &[String],
    credentials: &ApiCredentials,
) -> Result<ApiKey, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO api_keys (id, name, description, key_prefix, key_hash, secret_hash, scopes)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(description)
    .bind(&credentials.key[..12])
    .bind(hash_token(&credentials.key))
    .bind(hash_token(&credentials.secret))
    .bind(scopes)
    .fetch_one(pool)
    .await
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
    let active: Option<bool> = sqlx::query_scalar("SELECT is_active FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(active == Some(true))
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
    sqlx::query_scalar("SELECT rate_limit_per_minute FROM api_keys WHERE id = $1 AND is_active")
        .bind(id)
        .fetch_optional(pool)
        .await
}
