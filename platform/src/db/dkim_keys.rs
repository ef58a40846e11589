//! `dkim_keys`: the DKIM keys of sending domains (migration V12). The
//! private key is stored sealed; only the worker opens it, to sign.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::crypto::Sealed;

/// A key as the API shows it: never its private half.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DkimKey {
    pub id: Uuid,
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    pub public_key: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const KEY: &str = "id, domain, selector, algorithm, public_key, is_active, created_at, updated_at";

pub struct NewDkimKey<'a> {
    pub domain: &'a str,
    pub selector: &'a str,
    pub algorithm: &'a str,
    pub public_key: &'a str,
    pub private_key: &'a Sealed,
    pub is_active: bool,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    new: &NewDkimKey<'_>,
) -> Result<DkimKey, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO dkim_keys (id, domain, selector, algorithm, public_key,
            private_key_ciphertext, private_key_nonce, private_key_key_id, is_active)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {KEY}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.domain)
    .bind(new.selector)
    .bind(new.algorithm)
    .bind(new.public_key)
    .bind(&new.private_key.ciphertext)
    .bind(&new.private_key.nonce)
    .bind(&new.private_key.key_id)
    .bind(new.is_active)
    .fetch_one(executor)
    .await
}

/// Every key, by domain then age.
pub async fn list(pool: &PgPool) -> Result<Vec<DkimKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY} FROM dkim_keys ORDER BY domain, created_at, id"
    ))
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DkimKey>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {KEY} FROM dkim_keys WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A key turned on or off, and the keys it replaced.
pub struct Activation {
    pub key: DkimKey,
    /// Turning a key on turns off its domain's other active key of the
    /// same algorithm (there is at most one), so a rotation is one change.
    pub replaced: Vec<Uuid>,
}

/// Turns a key on or off; `None` if there is none by that id. Two
/// statements in the caller's transaction: the replaced key first, so the
/// one-active-key-per-algorithm index never sees two.
pub async fn set_active(
    tx: &mut PgConnection,
    id: Uuid,
    active: bool,
) -> Result<Option<Activation>, sqlx::Error> {
    let replaced: Vec<Uuid> = if active {
        sqlx::query_scalar(
            "UPDATE dkim_keys k SET is_active = false, updated_at = now()
             FROM dkim_keys target
             WHERE target.id = $1 AND k.domain = target.domain
               AND k.algorithm = target.algorithm AND k.is_active AND k.id <> $1
             RETURNING k.id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    let key: Option<DkimKey> = sqlx::query_as(&format!(
        "UPDATE dkim_keys SET is_active = $2, updated_at = now() WHERE id = $1 RETURNING {KEY}"
    ))
    .bind(id)
    .bind(active)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(key.map(|key| Activation { key, replaced }))
}

pub async fn delete(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM dkim_keys WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// An active key with its sealed private half, for signing.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub id: Uuid,
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    pub sealed: Sealed,
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    id: Uuid,
    domain: String,
    selector: String,
    algorithm: String,
    private_key_key_id: String,
    private_key_nonce: Vec<u8>,
    private_key_ciphertext: Vec<u8>,
}

impl From<SealedRow> for SigningKey {
    fn from(r: SealedRow) -> Self {
        SigningKey {
            id: r.id,
            domain: r.domain,
            selector: r.selector,
            algorithm: r.algorithm,
            sealed: Sealed {
                key_id: r.private_key_key_id,
                nonce: r.private_key_nonce,
                ciphertext: r.private_key_ciphertext,
            },
        }
    }
}

const SEALED: &str = "id, domain, selector, algorithm, private_key_key_id, private_key_nonce, \
    private_key_ciphertext";

/// The active keys of `domain` (at most one per algorithm).
pub async fn active_for_domain(
    pool: &PgPool,
    domain: &str,
) -> Result<Vec<SigningKey>, sqlx::Error> {
    let rows: Vec<SealedRow> = sqlx::query_as(&format!(
        "SELECT {SEALED} FROM dkim_keys WHERE domain = $1 AND is_active ORDER BY algorithm"
    ))
    .bind(domain)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Every key's sealed private half, for `rotate-encryption-key`.
pub async fn stored_keys(pool: &PgPool) -> Result<Vec<SigningKey>, sqlx::Error> {
    let rows: Vec<SealedRow> = sqlx::query_as(&format!(
        "SELECT {SEALED} FROM dkim_keys ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Replaces a sealed private key with its re-encryption, only if the row
/// still holds exactly the old one. Returns whether it changed.
pub async fn reseal(pool: &PgPool, key: &SigningKey, new: &Sealed) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dkim_keys SET private_key_ciphertext = $2, private_key_nonce = $3,
            private_key_key_id = $4, updated_at = now()
         WHERE id = $1 AND private_key_ciphertext = $5 AND private_key_nonce = $6",
    )
    .bind(key.id)
    .bind(&new.ciphertext)
    .bind(&new.nonce)
    .bind(&new.key_id)
    .bind(&key.sealed.ciphertext)
    .bind(&key.sealed.nonce)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
