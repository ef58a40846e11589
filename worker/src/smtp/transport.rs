//! Pooled SMTP connections, one small pool per account.
//!
//! Consecutive messages reuse an authenticated connection instead of a new
//! TCP + TLS + AUTH handshake. The pool is ours rather than lettre's so the
//! socket can be opened with TCP_NODELAY: lettre writes a message and its
//! terminating dot in two writes, and with Nagle's algorithm the second one
//! waits for the server's delayed ACK, about 40 ms per message. A pool is
//! rebuilt when its account row changes (password, host, TLS mode).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use platform::crypto::Keyring;
use platform::db::email_accounts::{EmailAccount, TlsMode, PASSWORD_PURPOSE};
use secrecy::ExposeSecret;
use uuid::Uuid;

/// Idle connections older than this are closed rather than reused: servers
/// drop idle clients, and a dead connection would cost a failed attempt.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

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
}

impl SendError {
    /// The SMTP reply code, when the server replied.
    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Smtp(e) => e.status().and_then(|c| c.to_string().parse().ok()),
            SendError::Connect(_) => None,
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
}

struct AccountPool {
    version: DateTime<Utc>,
    transport: Transport,
    idle: Vec<(AsyncSmtpConnection, Instant)>,
}

pub struct TransportCache {
    keyring: Keyring,
    timeout: Duration,
    max_idle: usize,
    pools: Mutex<HashMap<Uuid, AccountPool>>,
}

impl TransportCache {
    pub fn new(keyring: Keyring, timeout: Duration, max_idle: u32) -> Self {
        TransportCache {
            keyring,
            timeout,
            max_idle: max_idle as usize,
            pools: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, AccountPool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account's connection settings (decrypting its password once per
    /// version of the account row).
    pub fn get(&self, account: &EmailAccount) -> Result<Transport, TransportError> {
        let mut pools = self.lock();
        if let Some(pool) = pools.get(&account.id) {
            if pool.version == account.updated_at {
                return Ok(pool.transport.clone());
            }
        }
        let transport = self.build(account)?;
        pools.insert(
            account.id,
            AccountPool {
                version: account.updated_at,
                transport: transport.clone(),
                idle: Vec::new(),
            },
        );
        Ok(transport)
    }

    fn build(&self, account: &EmailAccount) -> Result<Transport, TransportError> {
        let password = self
            .keyring
            .open(&account.sealed_password(), PASSWORD_PURPOSE)?;
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
            timeout: self.timeout,
        })
    }

    /// Sends one message through the account's pool. A failure on a reused
    /// connection that got no SMTP reply at all (the server had closed it)
    /// is retried once on a fresh connection.
    pub async fn send(
        &self,
        account: &EmailAccount,
        transport: &Transport,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, SendError> {
        if let Some(mut conn) = self.checkout(account) {
            match conn.send(envelope, email).await {
                Ok(response) => {
                    self.checkin(account, conn);
                    return Ok(response);
                }
                Err(e) if e.status().is_some() => return Err(e.into()),
                Err(_) => {}
            }
        }
        let mut conn = transport.connect().await?;
        let response = conn.send(envelope, email).await?;
        self.checkin(account, conn);
        Ok(response)
    }

    fn checkout(&self, account: &EmailAccount) -> Option<AsyncSmtpConnection> {
        let mut pools = self.lock();
        let pool = pools
            .get_mut(&account.id)
            .filter(|p| p.version == account.updated_at)?;
        while let Some((conn, since)) = pool.idle.pop() {
            if since.elapsed() < IDLE_LIMIT && !conn.has_broken() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, account: &EmailAccount, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut pools = self.lock();
        if let Some(pool) = pools
            .get_mut(&account.id)
            .filter(|p| p.version == account.updated_at)
        {
            if pool.idle.len() < self.max_idle {
                pool.idle.push((conn, Instant::now()));
            }
        }
    }
}

impl Transport {
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
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
