//! `email_accounts`: the SMTP account pool, and the atomic quota reservation
//! that keeps several workers together under each account's daily limit.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::crypto::Sealed;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS (usually port 587).
    Starttls,
    /// No TLS at all: only for loopback or trusted networks.
    None,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "implicit" => Some(TlsMode::Implicit),
            "starttls" => Some(TlsMode::Starttls),
            "none" => Some(TlsMode::None),
            _ => None,
        }
    }

    /// The usual mode for a port, when the caller does not say.
    pub fn default_for_port(port: u16) -> Self {
        match port {
            465 => TlsMode::Implicit,
            587 => TlsMode::Starttls,
            _ => TlsMode::Starttls,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailAccount {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub smtp_host: String,
    pub smtp_port: i32,
    pub smtp_username: String,
    pub smtp_password_ciphertext: Vec<u8>,
    pub smtp_password_nonce: Vec<u8>,
    pub smtp_password_key_id: String,
    pub tls_mode: String,
    pub daily_limit: i32,
    /// Sends counted today (in TZ); zero when the counter belongs to a past day.
    pub sent_today: i32,
    pub priority: i32,
    pub is_active: bool,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(default)]
    pub consecutive_failures: i32,
    #[sqlx(default)]
    pub circuit_open_until: Option<DateTime<Utc>>,
}

impl EmailAccount {
    pub fn sealed_password(&self) -> Sealed {
        Sealed {
            key_id: self.smtp_password_key_id.clone(),
            nonce: self.smtp_password_nonce.clone(),
            ciphertext: self.smtp_password_ciphertext.clone(),
        }
    }

    pub fn tls(&self) -> TlsMode {
        TlsMode::parse(&self.tls_mode).unwrap_or(TlsMode::Starttls)
    }
}

/// Associated data bound into every sealed SMTP password.
pub const PASSWORD_PURPOSE: &str = "email_accounts.smtp_password";

/// `$1` is today's date in TZ.
const COLUMNS: &str = "id, email, display_name, smtp_host, smtp_port, smtp_username, \
    smtp_password_ciphertext, smtp_password_nonce, smtp_password_key_id, tls_mode, daily_limit, \
    (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END) AS sent_today, \
    priority, is_active, last_used_at, last_error, last_error_at, created_at, updated_at, \
    consecutive_failures, circuit_open_until";

pub struct NewEmailAccount {
    pub email: String,
    pub display_name: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_username: String,
    pub password: Sealed,
    pub tls_mode: TlsMode,
    pub daily_limit: i32,
    pub priority: i32,
    pub is_active: bool,
}

#[derive(Default)]
pub struct AccountPatch {
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_username: Option<String>,
    pub password: Option<Sealed>,
    pub tls_mode: Option<TlsMode>,
    pub daily_limit: Option<i32>,
    pub priority: Option<i32>,
    pub is_active: Option<bool>,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    today: NaiveDate,
    new: &NewEmailAccount,
) -> Result<EmailAccount, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO email_accounts (id, email, display_name, smtp_host, smtp_port, smtp_username,
            smtp_password_ciphertext, smtp_password_nonce, smtp_password_key_id, tls_mode,
            daily_limit, priority, is_active)
         VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         RETURNING {COLUMNS}"
    ))
    .bind(today)
    .bind(Uuid::now_v7())
    .bind(&new.email)
    .bind(&new.display_name)
    .bind(&new.smtp_host)
    .bind(i32::from(new.smtp_port))
    .bind(&new.smtp_username)
    .bind(&new.password.ciphertext)
    .bind(&new.password.nonce)
    .bind(&new.password.key_id)
    .bind(new.tls_mode.as_str())
    .bind(new.daily_limit)
    .bind(new.priority)
    .bind(new.is_active)
    .fetch_one(executor)
    .await
}

pub async fn list(pool: &PgPool, today: NaiveDate) -> Result<Vec<EmailAccount>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM email_accounts ORDER BY priority DESC, created_at"
    ))
    .bind(today)
    .fetch_all(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    today: NaiveDate,
    id: Uuid,
) -> Result<Option<EmailAccount>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM email_accounts WHERE id = $2"
    ))
    .bind(today)
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn update(
    executor: impl PgExecutor<'_>,
    today: NaiveDate,
    id: Uuid,
    patch: &AccountPatch,
) -> Result<Option<EmailAccount>, sqlx::Error> {
    let (ciphertext, nonce, key_id) = match &patch.password {
        Some(s) => (Some(&s.ciphertext), Some(&s.nonce), Some(&s.key_id)),
        None => (None, None, None),
    };
    sqlx::query_as(&format!(
        "UPDATE email_accounts SET
            email = COALESCE($3, email),
            display_name = COALESCE($4, display_name),
            smtp_host = COALESCE($5, smtp_host),
            smtp_port = COALESCE($6, smtp_port),
            smtp_username = COALESCE($7, smtp_username),
            smtp_password_ciphertext = COALESCE($8, smtp_password_ciphertext),
            smtp_password_nonce = COALESCE($9, smtp_password_nonce),
            smtp_password_key_id = COALESCE($10, smtp_password_key_id),
            tls_mode = COALESCE($11, tls_mode),
            daily_limit = COALESCE($12, daily_limit),
            priority = COALESCE($13, priority),
            is_active = COALESCE($14, is_active),
            updated_at = now()
         WHERE id = $2
         RETURNING {COLUMNS}"
    ))
    .bind(today)
    .bind(id)
    .bind(&patch.email)
    .bind(&patch.display_name)
    .bind(&patch.smtp_host)
    .bind(patch.smtp_port.map(i32::from))
    .bind(&patch.smtp_username)
    .bind(ciphertext)
    .bind(nonce)
    .bind(key_id)
    .bind(patch.tls_mode.map(TlsMode::as_str))
    .bind(patch.daily_limit)
    .bind(patch.priority)
    .bind(patch.is_active)
    .fetch_optional(executor)
    .await
}

pub async fn delete(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM email_accounts WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Reserves one send on the best account with quota left: highest priority
/// first, and among equals the one that sent least today.
///
/// Candidates are read without locks and then claimed one by one with a
/// conditional UPDATE. PostgreSQL re-checks the UPDATE's WHERE clause after
/// waiting for a concurrent writer, so the count can never pass the limit,
/// however many workers race; a lost race just moves on to the next
/// candidate, preserving priority order.
pub async fn reserve(pool: &PgPool, today: NaiveDate) -> Result<Option<EmailAccount>, sqlx::Error> {
    loop {
        let candidates: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM email_accounts
             WHERE is_active AND daily_limit > (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END)
             ORDER BY priority DESC,
                      (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END),
                      last_used_at NULLS FIRST
             LIMIT 8",
        )
        .bind(today)
        .fetch_all(pool)
        .await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        for id in candidates {
            let reserved: Option<EmailAccount> = sqlx::query_as(&format!(
                "UPDATE email_accounts SET
                    daily_sent_count = (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END) + 1,
                    quota_day = $1,
                    last_used_at = now()
                 WHERE id = $2 AND is_active
                   AND daily_limit > (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END)
                 RETURNING {COLUMNS}"
            ))
            .bind(today)
            .bind(id)
            .fetch_optional(pool)
            .await?;
            if reserved.is_some() {
                return Ok(reserved);
            }
        }
        // Every candidate was taken by concurrent workers: look again.
    }
}

/// Gives back a reservation that did not result in an accepted email.
pub async fn release(pool: &PgPool, today: NaiveDate, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_accounts SET daily_sent_count = daily_sent_count - 1
         WHERE id = $1 AND quota_day = $2 AND daily_sent_count > 0",
    )
    .bind(id)
    .bind(today)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn record_error(pool: &PgPool, id: Uuid, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE email_accounts SET last_error = $2, last_error_at = now() WHERE id = $1")
        .bind(id)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}
