//! `account_mailboxes`: the IMAP side of an SMTP account, where its
//! bounces and complaints arrive, and how far the bounce processor has
//! read it. A processor leases a mailbox before reading it, so of several
//! scheduler instances one reads each mailbox at a time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::email_accounts::TlsMode;
use crate::crypto::Sealed;

/// What an operator sets; every `None` takes the SMTP side's value
/// ([`Endpoint::resolve`]).
#[derive(Debug, Clone, Default)]
pub struct MailboxSettings {
    pub enabled: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub tls_mode: Option<TlsMode>,
    pub mailbox: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountMailbox {
    pub account_id: Uuid,
    pub enabled: bool,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub username: Option<String>,
    pub tls_mode: Option<String>,
    pub mailbox: String,
    pub uid_validity: Option<i64>,
    pub last_uid: i64,
    pub polled_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub reports: i64,
    pub unmatched: i64,
    pub malformed: i64,
    pub ignored: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "account_id, enabled, host, port, username, tls_mode, mailbox, \
    uid_validity, last_uid, polled_at, last_error, last_error_at, reports, unmatched, malformed, \
    ignored, created_at, updated_at";

/// Creates or replaces the account's IMAP settings; the read position is
/// kept unless the server or mailbox changes.
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    account_id: Uuid,
    settings: &MailboxSettings,
) -> Result<AccountMailbox, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO account_mailboxes (account_id, enabled, host, port, username, tls_mode, mailbox)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (account_id) DO UPDATE SET
            enabled = EXCLUDED.enabled, host = EXCLUDED.host, port = EXCLUDED.port,
            username = EXCLUDED.username, tls_mode = EXCLUDED.tls_mode, mailbox = EXCLUDED.mailbox,
            uid_validity = CASE WHEN (account_mailboxes.host, account_mailboxes.port,
                                      account_mailboxes.username, account_mailboxes.mailbox)
                                     IS NOT DISTINCT FROM
                                     (EXCLUDED.host, EXCLUDED.port, EXCLUDED.username, EXCLUDED.mailbox)
                                THEN account_mailboxes.uid_validity END,
            last_error = NULL, last_error_at = NULL, updated_at = now()
         RETURNING {COLUMNS}"
    ))
    .bind(account_id)
    .bind(settings.enabled)
    .bind(&settings.host)
    .bind(settings.port.map(i32::from))
    .bind(&settings.username)
    .bind(settings.tls_mode.map(TlsMode::as_str))
    .bind(&settings.mailbox)
    .fetch_one(executor)
    .await
}

pub async fn get(
    executor: impl PgExecutor<'_>,
    account_id: Uuid,
) -> Result<Option<AccountMailbox>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM account_mailboxes WHERE account_id = $1"
    ))
    .bind(account_id)
    .fetch_optional(executor)
    .await
}

pub async fn delete(executor: impl PgExecutor<'_>, account_id: Uuid) -> Result<bool, sqlx::Error> {
    super::changed_any(
        sqlx::query("DELETE FROM account_mailboxes WHERE account_id = $1").bind(account_id),
        executor,
    )
    .await
}

/// Where and how to log in, every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub tls: TlsMode,
}

impl Endpoint {
    /// The IMAP side from what is set and the SMTP side: the SMTP host with
    /// `smtp.` made `imap.` (as mail clients guess it), the SMTP user name,
    /// implicit TLS, and the port of the TLS mode (993, else 143).
    pub fn resolve(
        host: Option<&str>,
        port: Option<u16>,
        username: Option<&str>,
        tls: Option<TlsMode>,
        smtp_host: &str,
        smtp_username: &str,
    ) -> Endpoint {
        let host =
            host.map(str::to_string)
                .unwrap_or_else(|| match smtp_host.strip_prefix("smtp.") {
                    Some(rest) => format!("imap.{rest}"),
                    None => smtp_host.to_string(),
                });
        let tls = tls.unwrap_or(TlsMode::Implicit);
        let port = port.unwrap_or(match tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        });
        Endpoint {
            host,
            port,
            username: username.unwrap_or(smtp_username).to_string(),
            tls,
        }
    }
}

/// A mailbox leased for one read.
#[derive(Debug, Clone)]
pub struct Lease {
    pub account_id: Uuid,
    pub account_email: String,
    pub endpoint: Endpoint,
    pub mailbox: String,
    pub uid_validity: Option<i64>,
    pub last_uid: i64,
    pub password: Sealed,
}

#[derive(sqlx::FromRow)]
struct LeaseRow {
    account_id: Uuid,
    email: String,
    host: Option<String>,
    port: Option<i32>,
    username: Option<String>,
    tls_mode: Option<String>,
    mailbox: String,
    uid_validity: Option<i64>,
    last_uid: i64,
    smtp_host: String,
    smtp_username: String,
    smtp_password_key_id: String,
    smtp_password_nonce: Vec<u8>,
    smtp_password_ciphertext: Vec<u8>,
}

/// Leases up to `limit` enabled mailboxes not read for `interval`, for
/// `lease` (longer than a read takes; a crashed reader's lease lapses).
pub async fn lease_due(
    pool: &PgPool,
    owner: &str,
    interval: Duration,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Lease>, sqlx::Error> {
    let rows: Vec<LeaseRow> = sqlx::query_as(
        "WITH due AS (
            SELECT m.account_id FROM account_mailboxes m
            WHERE m.enabled
              AND (m.lease_until IS NULL OR m.lease_until < now())
              AND (m.polled_at IS NULL OR m.polled_at < now() - make_interval(secs => $2::float8 / 1000))
            ORDER BY m.polled_at NULLS FIRST
            LIMIT $4
            FOR UPDATE SKIP LOCKED
         ), leased AS (
            UPDATE account_mailboxes m
            SET lease_owner = $1, lease_until = now() + make_interval(secs => $3::float8 / 1000)
            FROM due WHERE m.account_id = due.account_id
            RETURNING m.*
         )
         SELECT l.account_id, a.email, l.host, l.port, l.username, l.tls_mode, l.mailbox,
                l.uid_validity, l.last_uid, a.smtp_host, a.smtp_username,
                a.smtp_password_key_id, a.smtp_password_nonce, a.smtp_password_ciphertext
         FROM leased l JOIN email_accounts a ON a.id = l.account_id",
    )
    .bind(owner)
    .bind(interval.as_millis() as i64)
    .bind(lease.as_millis() as i64)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Lease {
            account_id: r.account_id,
            account_email: r.email,
            endpoint: Endpoint::resolve(
                r.host.as_deref(),
                r.port.and_then(|p| u16::try_from(p).ok()),
                r.username.as_deref(),
                r.tls_mode.as_deref().and_then(TlsMode::parse),
                &r.smtp_host,
                &r.smtp_username,
            ),
            mailbox: r.mailbox,
            uid_validity: r.uid_validity,
            last_uid: r.last_uid,
            password: Sealed {
                key_id: r.smtp_password_key_id,
                nonce: r.smtp_password_nonce,
                ciphertext: r.smtp_password_ciphertext,
            },
        })
        .collect())
}

/// What one read found, added to the mailbox's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub reports: i64,
    pub unmatched: i64,
    pub malformed: i64,
    pub ignored: i64,
}

/// Moves the read position to `last_uid` of `uid_validity` and adds
/// `counts`, while `owner` still holds the lease; whether it did.
pub async fn advance(
    pool: &PgPool,
    account_id: Uuid,
    owner: &str,
    uid_validity: i64,
    last_uid: i64,
    counts: Counts,
) -> Result<bool, sqlx::Error> {
    super::changed_any(
        sqlx::query(
            "UPDATE account_mailboxes SET uid_validity = $3, last_uid = $4,
                reports = reports + $5, unmatched = unmatched + $6,
                malformed = malformed + $7, ignored = ignored + $8
             WHERE account_id = $1 AND lease_owner = $2",
        )
        .bind(account_id)
        .bind(owner)
        .bind(uid_validity)
        .bind(last_uid)
        .bind(counts.reports)
        .bind(counts.unmatched)
        .bind(counts.malformed)
        .bind(counts.ignored),
        pool,
    )
    .await
}

/// Ends a read: records when, and its error (cleared by a good read), and
/// gives the lease back.
pub async fn finish(
    pool: &PgPool,
    account_id: Uuid,
    owner: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE account_mailboxes SET polled_at = now(), lease_owner = NULL, lease_until = NULL,
            last_error = $3, last_error_at = CASE WHEN $3::text IS NULL THEN last_error_at ELSE now() END
         WHERE account_id = $1 AND lease_owner = $2",
    )
    .bind(account_id)
    .bind(owner)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_imap_side_defaults_to_the_smtp_side() {
        let e = Endpoint::resolve(None, None, None, None, "smtp.example.com", "me@example.com");
        assert_eq!(
            e,
            Endpoint {
                host: "imap.example.com".into(),
                port: 993,
                username: "me@example.com".into(),
                tls: TlsMode::Implicit,
            }
        );
        let e = Endpoint::resolve(
            Some("127.0.0.1"),
            None,
            Some("bounces"),
            Some(TlsMode::None),
            "mail.example.com",
            "me",
        );
        assert_eq!(
            (e.host.as_str(), e.port, e.username.as_str()),
            ("127.0.0.1", 143, "bounces")
        );
    }
}
