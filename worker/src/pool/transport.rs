//! One pooled lettre transport per account, so consecutive messages reuse
//! an authenticated connection instead of a new TCP + TLS + AUTH handshake.
//! A transport is rebuilt when its account row changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use platform::crypto::Keyring;
use platform::db::email_accounts::{EmailAccount, TlsMode, PASSWORD_PURPOSE};
use secrecy::ExposeSecret;
use uuid::Uuid;

pub type Transport = AsyncSmtpTransport<Tokio1Executor>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot decrypt the account's SMTP password: {0}")]
    Password(#[from] platform::crypto::CryptoError),
    #[error("invalid SMTP settings: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

pub struct TransportCache {
    keyring: Keyring,
    timeout: Duration,
    pool_size: u32,
    transports: Mutex<HashMap<Uuid, (DateTime<Utc>, Transport)>>,
}

impl TransportCache {
    pub fn new(keyring: Keyring, timeout: Duration, pool_size: u32) -> Self {
        TransportCache {
            keyring,
            timeout,
            pool_size,
            transports: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, account: &EmailAccount) -> Result<Transport, TransportError> {
        let mut transports = self.transports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((version, transport)) = transports.get(&account.id) {
            if *version == account.updated_at {
                return Ok(transport.clone());
            }
        }
        let transport = self.build(account)?;
        transports.insert(account.id, (account.updated_at, transport.clone()));
        Ok(transport)
    }

    fn build(&self, account: &EmailAccount) -> Result<Transport, TransportError> {
        let password = self
            .keyring
            .open(&account.sealed_password(), PASSWORD_PURPOSE)?;
        let host = account.smtp_host.as_str();
        let builder = match account.tls() {
            TlsMode::Implicit => Transport::relay(host)?,
            TlsMode::Starttls => Transport::starttls_relay(host)?,
            TlsMode::None => Transport::builder_dangerous(host),
        };
        Ok(builder
            .port(account.smtp_port as u16)
            .credentials(Credentials::new(
                account.smtp_username.clone(),
                password.expose_secret().to_string(),
            ))
            .timeout(Some(self.timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(self.pool_size)
                    .idle_timeout(Duration::from_secs(60)),
            )
            .build())
    }
}
