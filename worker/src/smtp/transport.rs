//! One account's SMTP connection settings, and opening a connection with
//! them. Opened by us rather than by lettre so the socket has
//! TCP_NODELAY: lettre writes a message and its terminating dot in two
//! writes, and with Nagle's algorithm the second one waits for the
//! server's delayed ACK, about 40 ms per message.
//!
//! Opening a connection is bounded twice. The whole handshake (TCP,
//! greeting, EHLO, STARTTLS, AUTH) has `EMAIL_TIMEOUT`: a server whose
//! accept queue overflowed leaves the client a connection that looks
//! established and never greets, and without the bound the send waited
//! for its whole time limit. And only a few connections to one server are
//! opened at a time ([`OPENING_AT_ONCE`]): a burst of sends to a cold
//! pool otherwise opens hundreds at once, more than a server's accept
//! queue holds (Postfix's is 100). On a plain or STARTTLS connection
//! every read and write then has `EMAIL_TIMEOUT` too
//! ([`super::deadline`]); an implicit-TLS one is opened by lettre, and
//! only its send's soft time limit bounds it.

use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use platform::crypto::Keyring;
use platform::db::email_accounts::{EmailAccount, TlsMode, PASSWORD_PURPOSE};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::deadline::Deadlined;

/// How many connections to one server (host and port) a worker opens at
/// a time; the sends beyond wait for one of those handshakes to end.
pub const OPENING_AT_ONCE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot decrypt the account's SMTP password: {0}")]
    Password(#[from] platform::crypto::CryptoError),
    #[error("invalid SMTP settings: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot connect to the SMTP server: {0}")]
    Connect(#[from] std::io::Error),
    #[error("no answer from the SMTP server within {0:?}")]
    TimedOut(Duration),
    /// Every connection the account allows was busy (here or in another
    /// worker) for as long as the send could wait.
    #[error("all {max} connections the account allows stayed busy for {waited:?}")]
    Busy { max: i32, waited: Duration },
}

impl SendError {
    /// The SMTP reply code, when the server replied.
    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Smtp(e) => e.status().and_then(|c| c.to_string().parse().ok()),
            SendError::Connect(_) | SendError::TimedOut(_) | SendError::Busy { .. } => None,
        }
    }
}

/// Everything needed to open a connection for one account.
#[derive(Clone)]
pub struct Transport {
    host: String,
    port: u16,
    tls: TlsMode,
    tls_parameters: Option<TlsParameters>,
    credentials: Credentials,
    timeout: Duration,
    /// Shared by every account on the same server.
    opening: Arc<Semaphore>,
}

impl Transport {
    /// The account's settings, its password decrypted.
    pub(super) fn for_account(
        account: &EmailAccount,
        keyring: &Keyring,
        timeout: Duration,
        opening: Arc<Semaphore>,
    ) -> Result<Transport, TransportError> {
        let password = keyring.open(&account.sealed_password(), PASSWORD_PURPOSE)?;
        let tls = account.tls();
        let tls_parameters = match tls {
            TlsMode::None => None,
            TlsMode::Implicit | TlsMode::Starttls => {
                Some(TlsParameters::new(account.smtp_host.clone())?)
            }
        };
        Ok(Transport {
            host: account.smtp_host.clone(),
            port: account.smtp_port as u16,
            tls,
            tls_parameters,
            credentials: Credentials::new(
                account.smtp_username.clone(),
                password.expose_secret().to_string(),
            ),
            timeout,
            opening,
        })
    }

    /// The server's address, which accounts on the same server share.
    pub(super) fn server(account: &EmailAccount) -> (String, u16) {
        (account.smtp_host.clone(), account.smtp_port as u16)
    }

    /// Opens an authenticated connection: at most [`OPENING_AT_ONCE`] to
    /// the server at a time, each handshake within the timeout.
    pub(super) async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        // The semaphore is never closed.
        let _opening = self.opening.acquire().await;
        tokio::time::timeout(self.timeout, self.handshake())
            .await
            .map_err(|_| SendError::TimedOut(self.timeout))?
    }

    async fn handshake(&self) -> Result<AsyncSmtpConnection, SendError> {
        let hello = ClientId::default();
        let mut conn = match self.tls {
            // Implicit TLS is set up by lettre itself (Nagle stays on there).
            TlsMode::Implicit => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &hello,
                    self.tls_parameters.clone(),
                    None,
                )
                .await?
            }
            TlsMode::Starttls | TlsMode::None => {
                let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
                let stream = tokio::time::timeout(self.timeout, connect)
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                let _ = stream.set_nodelay(true);
                let stream = Deadlined::new(stream, self.timeout);
                let mut conn =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await?;
                if let (TlsMode::Starttls, Some(parameters)) = (self.tls, &self.tls_parameters) {
                    conn.starttls(parameters.clone(), &hello).await?;
                }
                conn
            }
        };
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &self.credentials)
            .await?;
        Ok(conn)
    }
}
