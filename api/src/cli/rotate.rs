//! `notify-api rotate-encryption-key`: re-encrypts every stored secret (SMTP
//! passwords, webhook signing secrets with their previous ones, DKIM
//! private keys) under the
//! current key (ENCRYPTION_KEY / ENCRYPTION_KEY_ID), opening each with the
//! keyring (current key plus ENCRYPTION_PREVIOUS_KEYS).
//!
//! Safe while the platform runs: each row is one conditional UPDATE, and
//! readers accept both keys until the old one is removed. Rows already on
//! the current key are skipped, so the command can be re-run after a failure.

use platform::crypto::{Keyring, Sealed};
use platform::db::email_accounts::{self, PASSWORD_PURPOSE};
use platform::db::{dkim_keys, webhooks};
use platform::mail::dkim::PRIVATE_KEY_PURPOSE;
use platform::webhooks::signature::SECRET_PURPOSE;
use platform::{db, Settings};
use secrecy::ExposeSecret;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    pub key_id: String,
    pub rotated: usize,
    pub already_current: usize,
    /// Changed by someone else between read and write (so already re-sealed).
    pub changed_concurrently: usize,
    /// Secrets that could not be opened (unknown or wrong key), by owner.
    pub failed: Vec<String>,
}

impl RotationReport {
    /// Counts a re-sealed secret written (`true`) or found changed by
    /// someone else meanwhile (so already re-sealed).
    fn count(&mut self, written: bool) {
        if written {
            self.rotated += 1;
        } else {
            self.changed_concurrently += 1;
        }
    }
}

/// `sealed` re-sealed under the current key, or `None` when it needs no
/// writing (already current, counted) or cannot be opened (reported).
/// Every secret is opened, those already on the current key id too: if
/// ENCRYPTION_KEY changed but kept its id, they no longer open, and the
/// rotation must say so rather than report success.
fn reseal(
    keyring: &Keyring,
    sealed: &Sealed,
    purpose: &str,
    owner: &str,
    report: &mut RotationReport,
) -> Option<Sealed> {
    let plaintext = match keyring.open(sealed, purpose) {
        Ok(p) => p,
        Err(e) => {
            report.failed.push(format!("{owner}: {e}"));
            return None;
        }
    };
    if sealed.key_id == keyring.current_key_id() {
        report.already_current += 1;
        return None;
    }
    Some(keyring.seal(plaintext.expose_secret(), purpose))
}

impl std::fmt::Display for RotationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {}: {} re-encrypted, {} already current, {} changed meanwhile, {} failed",
            self.key_id,
            self.rotated,
            self.already_current,
            self.changed_concurrently,
            self.failed.len()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] db::OpenError),
    #[error(transparent)]
    Config(#[from] platform::config::ConfigError),
    #[error(
        "{} secret(s) could not be decrypted with the configured keys (add their key to \
         ENCRYPTION_PREVIOUS_KEYS and run again): {}", .0.len(), .0.join("; ")
    )]
    Undecryptable(Vec<String>),
}

pub async fn rotate_encryption_key(settings: &Settings) -> Result<RotationReport, RotationError> {
    let keyring = settings.keyring()?;
    let pool = db::open(settings).await?;
    let mut report = RotationReport {
        key_id: keyring.current_key_id().to_string(),
        ..Default::default()
    };
    for row in email_accounts::stored_passwords(&pool).await? {
        let owner = format!("{} ({})", row.email, row.id);
        if let Some(resealed) = reseal(keyring, &row.sealed, PASSWORD_PURPOSE, &owner, &mut report)
        {
            let changed =
                email_accounts::reseal_password(&pool, row.id, &row.sealed, &resealed).await?;
            report.count(changed);
        }
    }
    for stored in webhooks::stored_secrets(&pool).await? {
        let which = if stored.previous {
            "previous secret"
        } else {
            "secret"
        };
        let owner = format!("webhook endpoint {} ({which})", stored.endpoint);
        if let Some(resealed) = reseal(keyring, &stored.sealed, SECRET_PURPOSE, &owner, &mut report)
        {
            report.count(webhooks::reseal_secret(&pool, &stored, &resealed).await?);
        }
    }
    for key in dkim_keys::stored_keys(&pool).await? {
        let owner = format!(
            "DKIM key {}._domainkey.{} ({})",
            key.selector, key.domain, key.id
        );
        if let Some(resealed) = reseal(
            keyring,
            &key.sealed,
            PRIVATE_KEY_PURPOSE,
            &owner,
            &mut report,
        ) {
            report.count(dkim_keys::reseal(&pool, &key, &resealed).await?);
        }
    }
    pool.close().await;
    if report.failed.is_empty() {
        Ok(report)
    } else {
        println!("{report}");
        Err(RotationError::Undecryptable(report.failed))
    }
}
