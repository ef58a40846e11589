//! `notify-api import-python`: carries a running Python platform's SMTP
//! accounts, API keys, today's send counts and (optionally) recent message
//! records into this platform, so a team can switch without new
//! credentials and without any account passing its daily limit.
//!
//! - Accounts: each Fernet token is verified (HMAC) and decrypted with the
//!   Python `ENCRYPTION_KEY`, then sealed again under our AES-256-GCM
//!   keyring. Upserted by address.
//! - Keys: imported with the hash the Python platform stored (see
//!   `platform::crypto::secret_hash`), so the same key and secret still get
//!   tokens. Upserted by public key. Hashes that cannot be verified safely
//!   are refused and listed: reissue those keys.
//! - Quota: an account's count of today's sends becomes the larger of
//!   ours and the Python platform's.
//! - Messages: final records (`sent`, `failed`) are copied by task id; a
//!   task id already known is kept. Records still in flight are skipped:
//!   their tasks are in RabbitMQ and our workers record them on arrival.
//!
//! Everything is written in one transaction: a failure leaves nothing
//! half-imported, and `--dry-run` runs the same steps and rolls back.
//! Re-running is safe: rows that already match are not written.

mod legacy;
mod report;

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use platform::crypto::fernet::{FernetError, FernetKeys};
use platform::crypto::Keyring;
use platform::crypto::{hash_token, SecretScheme};
use platform::db::api_keys::{self, ImportedKey};
use platform::db::email_accounts::{
    self, ImportedAccount, NewEmailAccount, TlsMode, PASSWORD_PURPOSE,
};
use platform::db::messages::{self, ImportedMessages};
use platform::mail::EmailAddress;
use platform::{db, Settings};
use secrecy::ExposeSecret;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub use legacy::LegacyError;
pub use report::ImportReport;

use crate::routes::email_accounts::{host, password, MAX_DAILY_LIMIT, PRIORITY_RANGE};
use crate::validate;

/// Message records read and written per statement.
const MESSAGE_PAGE: i64 = 2000;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The Python platform's `DATABASE_URL`.
    pub from: String,
    /// Its `ENCRYPTION_KEY` (Fernet); several, comma-separated, as for
    /// Python's `MultiFernet`.
    pub fernet_keys: String,
    pub dry_run: bool,
    /// Import message records created in the last this many days.
    pub messages_since_days: Option<u32>,
    /// TLS for ports other than the usual 465 (implicit), 587, 25 and 2525
    /// (STARTTLS).
    pub port_tls: HashMap<u16, TlsMode>,
    /// Only carry today's send counts (the last step of a switch).
    pub quota_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] db::OpenError),
    #[error("PYTHON_ENCRYPTION_KEY: {0}")]
    Fernet(#[from] FernetError),
    #[error(transparent)]
    Config(#[from] platform::config::ConfigError),
}

/// Parses `--port-tls 1025=none`.
pub fn parse_port_tls(raw: &str) -> Result<(u16, TlsMode), String> {
    let (port, mode) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not PORT=implicit|starttls|none"))?;
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    let mode = TlsMode::parse(mode.trim())
        .ok_or_else(|| format!("{mode:?} is not implicit, starttls or none"))?;
    Ok((port, mode))
}

pub async fn import_python(
    settings: &Settings,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let fernet = FernetKeys::parse(&options.fernet_keys)?;
    let legacy = legacy::Legacy::connect(&options.from).await?;
    let pool = db::open(settings).await?;
    let today = platform::today(settings);
    let mut report = ImportReport {
        dry_run: options.dry_run,
        ..Default::default()
    };

    let started = Instant::now();
    let accounts = legacy.accounts(today).await?;
    let ours: HashMap<String, platform::crypto::Sealed> = email_accounts::stored_passwords(&pool)
        .await?
        .into_iter()
        .map(|p| (p.email, p.sealed))
        .collect();
    let mut tx = pool.begin().await?;
    for account in &accounts {
        import_account(
            settings,
            options,
            &fernet,
            &ours,
            account,
            &mut tx,
            &mut report,
        )
        .await?;
    }
    report.seconds.accounts = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut key_ids: HashMap<String, Uuid> = HashMap::new();
    if !options.quota_only && legacy.has_table("api_keys") {
        let keys = legacy.keys().await?;
        for key in &keys {
            import_key(key, &mut tx, &mut report).await?;
        }
        let hashes: Vec<String> = keys.iter().map(|k| hash_token(k.api_key.trim())).collect();
        key_ids = api_keys::ids_by_key_hash(&mut *tx, &hashes)
            .await?
            .into_iter()
            .collect();
    }
    report.seconds.keys = started.elapsed().as_secs_f64();

    let started = Instant::now();
    if let (Some(days), false) = (options.messages_since_days, options.quota_only) {
        if legacy.has_table("message_records") {
            let since = Utc::now() - chrono::Duration::days(i64::from(days));
            import_messages(&legacy, since, &key_ids, &mut tx, &mut report).await?;
        }
    }
    report.seconds.messages = started.elapsed().as_secs_f64();

    if options.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    legacy.close().await;
    pool.close().await;
    Ok(report)
}

async fn import_account(
    settings: &Settings,
    options: &ImportOptions,
    fernet: &FernetKeys,
    ours: &HashMap<String, platform::crypto::Sealed>,
    account: &legacy::LegacyAccount,
    tx: &mut Transaction<'_, Postgres>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let label = account.email.clone();
    let keyring = settings.keyring()?;
    if !options.quota_only {
        let new = match checked_account(keyring, options, fernet, account) {
            Ok(new) => new,
            Err(reason) => {
                report.record("account", label, "refused", Some(reason));
                return Ok(());
            }
        };
        let password_changed = match ours.get(&new.account.email) {
            None => true,
            Some(sealed) => keyring
                .open(sealed, PASSWORD_PURPOSE)
                .map(|p| p.expose_secret() != new.plaintext.expose_secret())
                .unwrap_or(true),
        };
        let imported = ImportedAccount {
            account: new.account,
            password_changed,
        };
        let done = email_accounts::upsert_imported(&mut **tx, &imported).await?;
        report.record("account", label.clone(), done.as_str(), None);
    }
    if account.counts_today && account.daily_sent_count > 0 {
        let email = EmailAddress::parse(&account.email)
            .map(|e| e.to_string())
            .unwrap_or_else(|_| account.email.clone());
        if email_accounts::carry_quota(
            &mut **tx,
            &email,
            platform::today(settings),
            account.daily_sent_count,
        )
        .await?
        {
            report.quota_carried += 1;
            report.rows.push(report::Row {
                kind: "quota",
                row: label,
                outcome: "carried",
                detail: Some(format!("{} sent today", account.daily_sent_count)),
            });
        }
    }
    Ok(())
}

struct CheckedAccount {
    account: NewEmailAccount,
    plaintext: secrecy::SecretString,
}

/// The same checks as `POST /admin/email-accounts`, plus the token's.
fn checked_account(
    keyring: &Keyring,
    options: &ImportOptions,
    fernet: &FernetKeys,
    a: &legacy::LegacyAccount,
) -> Result<CheckedAccount, String> {
    let plain = |e: crate::error::ApiError| e.to_string();
    let email = EmailAddress::parse(a.email.trim()).map_err(|e| format!("invalid address: {e}"))?;
    let plaintext = fernet
        .decrypt(&a.smtp_password)
        .map_err(|e| format!("bad Fernet token: {e}"))?;
    password(plaintext.expose_secret()).map_err(plain)?;
    let port = u16::try_from(a.smtp_port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("smtp_port {} is not a port", a.smtp_port))?;
    let tls_mode = match (options.port_tls.get(&port), port) {
        (Some(mode), _) => *mode,
        (None, 465) => TlsMode::Implicit,
        (None, 587 | 25 | 2525) => TlsMode::Starttls,
        (None, other) => {
            return Err(format!(
                "unknown TLS port {other}: say how to connect with --port-tls {other}=implicit|starttls|none"
            ))
        }
    };
    let sealed = keyring.seal(plaintext.expose_secret(), PASSWORD_PURPOSE);
    Ok(CheckedAccount {
        account: NewEmailAccount {
            smtp_host: host(&a.smtp_host).map_err(plain)?,
            smtp_port: port,
            smtp_username: validate::header_text("smtp_username", &a.smtp_username, true, 320)
                .map_err(plain)?,
            password: sealed,
            display_name: validate::header_text("display_name", &a.display_name, false, 128)
                .map_err(plain)?,
            tls_mode,
            daily_limit: validate::in_range(
                "daily_limit",
                a.daily_limit.into(),
                0,
                MAX_DAILY_LIMIT,
            )
            .map_err(plain)?,
            priority: validate::in_range(
                "priority",
                a.priority.into(),
                PRIORITY_RANGE.0,
                PRIORITY_RANGE.1,
            )
            .map_err(plain)?,
            is_active: a.is_active,
            rate_limit_per_minute: None,
            max_connections: None,
            warmup: None,
            email: email.to_string(),
        },
        plaintext,
    })
}

async fn import_key(
    key: &legacy::LegacyKey,
    tx: &mut Transaction<'_, Postgres>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let public = key.api_key.trim();
    let prefix: String = public.chars().take(12).collect();
    let label = format!("{prefix}… ({})", key.name.trim());
    if public.is_empty() || public.len() > 256 || public.chars().any(char::is_control) {
        report.record(
            "key",
            label,
            "refused",
            Some("the public key is empty or malformed".into()),
        );
        return Ok(());
    }
    let scheme = match SecretScheme::detect(key.secret_hash.trim()) {
        Ok(scheme) => scheme,
        Err(why) => {
            report.record(
                "key",
                label,
                "refused",
                Some(format!("{why}: reissue this key")),
            );
            return Ok(());
        }
    };
    let name = match key.name.trim() {
        "" => format!("imported key #{}", key.id),
        name => name.chars().filter(|c| !c.is_control()).take(128).collect(),
    };
    let mut scopes = vec!["send".to_string(), "read".to_string()];
    if key.is_admin {
        scopes.push("admin".to_string());
    }
    let imported = ImportedKey {
        name,
        description: key.description.clone(),
        key_hash: hash_token(public),
        key_prefix: prefix,
        secret_hash: match scheme {
            SecretScheme::Sha256 => key.secret_hash.trim().to_ascii_lowercase(),
            _ => key.secret_hash.trim().to_string(),
        },
        secret_scheme: scheme.as_str(),
        scopes,
        is_active: key.is_active,
        rate_limit_per_minute: key.rate_limit.filter(|l| *l > 0),
        expires_at: key.expires_at,
        created_at: key.created_at.unwrap_or_else(Utc::now),
    };
    let done = api_keys::upsert_imported(&mut **tx, &imported).await?;
    let mut detail = scheme.as_str().to_string();
    if key.is_admin {
        detail.push_str(", admin");
    }
    if !key.is_active {
        detail.push_str(", inactive");
    }
    if key.expires_at.is_some_and(|at| at <= Utc::now()) {
        detail.push_str(", expired");
    }
    report.record("key", label, done.as_str(), Some(detail));
    Ok(())
}

async fn import_messages(
    legacy: &legacy::Legacy,
    since: chrono::DateTime<Utc>,
    key_ids: &HashMap<String, Uuid>,
    tx: &mut Transaction<'_, Postgres>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let account_ids: HashMap<String, Uuid> = email_accounts::ids_by_email(&mut **tx)
        .await?
        .into_iter()
        .collect();
    let mut after = i64::MIN;
    loop {
        let page = legacy.messages(since, after, MESSAGE_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let mut batch = ImportedMessages::default();
        for m in page {
            let task_id = m
                .task_id
                .clone()
                .unwrap_or_else(|| format!("python-{}", m.id));
            let status = match m.status.as_str() {
                "sent" | "success" | "delivered" => "sent",
                "failed" | "failure" | "error" | "bounced" => "failed",
                other => {
                    report.record(
                        "message",
                        task_id,
                        "skipped",
                        Some(format!(
                            "{other} in the Python platform: its task is still in RabbitMQ and our workers record it when they take it"
                        )),
                    );
                    continue;
                }
            };
            if m.to_email.trim().is_empty() {
                report.record("message", task_id, "refused", Some("no recipient".into()));
                continue;
            }
            let account_email = m
                .account_email
                .as_deref()
                .map(str::trim)
                .map(str::to_string);
            batch.task_ids.push(task_id);
            batch.api_key_ids.push(
                m.api_key
                    .as_deref()
                    .and_then(|k| key_ids.get(&hash_token(k.trim())).copied()),
            );
            batch.statuses.push(status.to_string());
            batch.recipients.push(m.to_email);
            batch.subjects.push(m.subject);
            batch.bodies.push(m.content);
            batch.account_ids.push(
                account_email
                    .as_deref()
                    .and_then(|e| EmailAddress::parse(e).ok())
                    .and_then(|e| account_ids.get(&e.to_string()).copied()),
            );
            batch.account_emails.push(account_email);
            batch.errors.push(m.error);
            batch.attempts.push(m.retries.saturating_add(1).max(1));
            batch.created_at.push(m.created_at);
            batch.finished_at.push(m.finished_at);
        }
        if !batch.is_empty() {
            let inserted = messages::insert_imported(&mut **tx, &batch).await? as usize;
            report.messages.imported += inserted;
            report.messages.unchanged += batch.len() - inserted;
        }
    }
    Ok(())
}
