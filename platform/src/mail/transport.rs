//! An SMTP transport for one account, built the way the worker builds its
//! pooled ones (TLS mode, port, credentials, timeout); used by the API's
//! connection test.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::crypto::Keyring;
use crate::db::email_accounts::{EmailAccount, TlsMode, PASSWORD_PURPOSE};

pub type SmtpTransport = AsyncSmtpTransport<Tokio1Executor>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot decrypt the account's SMTP password: {0}")]
    Password(#[from] crate::crypto::CryptoError),
    #[error("invalid SMTP settings: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

pub fn build_transport(
    account: &EmailAccount,
    keyring: &Keyring,
    timeout: Duration,
) -> Result<SmtpTransport, TransportError> {
    let password = keyring.open(&account.sealed_password(), PASSWORD_PURPOSE)?;
    let host = account.smtp_host.as_str();
    let builder = match account.tls() {
        TlsMode::Implicit => SmtpTransport::relay(host)?,
        TlsMode::Starttls => SmtpTransport::starttls_relay(host)?,
        TlsMode::None => SmtpTransport::builder_dangerous(host),
    };
    Ok(builder
        .port(account.smtp_port as u16)
        .credentials(Credentials::new(
            account.smtp_username.clone(),
            password.expose_secret().to_string(),
        ))
        .timeout(Some(timeout))
        .build())
}
