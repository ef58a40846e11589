//! The few IMAP commands the bounce processor needs, over async-imap:
//! connect (TLS as the account says), log in, select, find new messages,
//! fetch them, flag the processed ones. Every step has a deadline.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::TryStreamExt;
use platform::db::account_mailboxes::Endpoint;
use platform::db::email_accounts::TlsMode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The keyword processed reports get (with `\Seen`): a person looking at
/// the mailbox sees what the platform handled.
pub const PROCESSED: &str = "$NotifyProcessed";

/// At most this much of a message is read: a report's own parts come
/// first, and a returned message's body is not needed.
const FETCH_PREFIX: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("{0} is not a valid TLS server name")]
    ServerName(String),
    #[error("login refused for {0}: {1}")]
    Login(String, async_imap::error::Error),
    #[error("IMAP: {0}")]
    Protocol(#[from] async_imap::error::Error),
    #[error("the server sent no greeting")]
    NoGreeting,
    #[error("mailbox {0} has no UIDVALIDITY")]
    NoUidValidity(String),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// A plain or TLS connection, as one type for async-imap.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Stream for T {}

type Session = async_imap::Session<Box<dyn Stream>>;

/// The roots public mail providers' certificates chain to.
static TLS: LazyLock<TlsConnector> = LazyLock::new(|| {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    // ring supports the default versions; keep a config that can only fail
    // at handshake rather than panic.
    .unwrap_or_else(|_| {
        ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    });
    TlsConnector::from(Arc::new(config))
});

async fn within<T, E>(
    limit: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, ImapError>
where
    ImapError: From<E>,
{
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(ImapError::from),
        Err(_) => Err(ImapError::Timeout(what)),
    }
}

/// A logged-in session with one mailbox selected.
pub struct Mailbox {
    session: Session,
    timeout: Duration,
    /// The mailbox's UIDVALIDITY: UIDs are only comparable within it.
    pub uid_validity: u32,
}

impl Mailbox {
    pub async fn open(
        endpoint: &Endpoint,
        password: &str,
        mailbox: &str,
        timeout: Duration,
    ) -> Result<Mailbox, ImapError> {
        let address = format!("{}:{}", endpoint.host, endpoint.port);
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(ImapError::Connect(address, e)),
            Err(_) => return Err(ImapError::Timeout("connecting")),
        };
        let client = match endpoint.tls {
            TlsMode::None => greeted(Box::new(tcp) as Box<dyn Stream>, timeout).await?,
            TlsMode::Implicit => {
                let tls = tls(&endpoint.host, tcp, timeout).await?;
                greeted(tls, timeout).await?
            }
            TlsMode::Starttls => {
                let mut plain = greeted(tcp, timeout).await?;
                within(
                    timeout,
                    "STARTTLS",
                    plain.run_command_and_check_ok("STARTTLS", None),
                )
                .await?;
                // No greeting after STARTTLS (RFC 3501 §6.2.1).
                async_imap::Client::new(tls(&endpoint.host, plain.into_inner(), timeout).await?)
            }
        };
        let mut session =
            match tokio::time::timeout(timeout, client.login(&endpoint.username, password)).await {
                Ok(Ok(session)) => session,
                Ok(Err((e, _))) => return Err(ImapError::Login(endpoint.username.clone(), e)),
                Err(_) => return Err(ImapError::Timeout("logging in")),
            };
        let selected = within(timeout, "SELECT", session.select(mailbox)).await?;
        let uid_validity = selected
            .uid_validity
            .ok_or_else(|| ImapError::NoUidValidity(mailbox.to_string()))?;
        Ok(Mailbox {
            session,
            timeout,
            uid_validity,
        })
    }

    /// UIDs above `after`, ascending. (`UID n:*` also matches the highest
    /// UID when it is below `n`, so the result is filtered.)
    pub async fn uids_after(&mut self, after: u32) -> Result<Vec<u32>, ImapError> {
        let query = format!("UID {}:*", after.saturating_add(1));
        let found = within(self.timeout, "UID SEARCH", self.session.uid_search(query)).await?;
        let mut uids: Vec<u32> = found.into_iter().filter(|uid| *uid > after).collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// The messages `uids` (their first [`FETCH_PREFIX`] bytes), by UID;
    /// one expunged meanwhile is simply absent.
    pub async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
        let set = uid_set(uids);
        let query = format!("(UID BODY.PEEK[]<0.{FETCH_PREFIX}>)");
        let timeout = self.timeout;
        let fetches: Vec<_> = within(timeout, "UID FETCH", async {
            self.session
                .uid_fetch(set, query)
                .await?
                .try_collect()
                .await
        })
        .await?;
        let mut messages: Vec<(u32, Vec<u8>)> = fetches
            .iter()
            .filter_map(|f| Some((f.uid?, f.body()?.to_vec())))
            .collect();
        messages.sort_unstable_by_key(|(uid, _)| *uid);
        Ok(messages)
    }

    /// Marks `uids` seen and [`PROCESSED`]; a server that refuses custom
    /// keywords gets `\Seen` alone.
    pub async fn flag_processed(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = uid_set(uids);
        let timeout = self.timeout;
        let with_keyword = within(timeout, "UID STORE", async {
            let flags = format!("+FLAGS.SILENT (\\Seen {PROCESSED})");
            self.session
                .uid_store(&set, flags)
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await;
        match with_keyword {
            Ok(_) => Ok(()),
            Err(ImapError::Protocol(_)) => {
                within(timeout, "UID STORE", async {
                    self.session
                        .uid_store(&set, "+FLAGS.SILENT (\\Seen)")
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.session.logout()).await;
    }
}

async fn greeted<S: Stream>(
    stream: S,
    timeout: Duration,
) -> Result<async_imap::Client<S>, ImapError> {
    let mut client = async_imap::Client::new(stream);
    match tokio::time::timeout(timeout, client.read_response()).await {
        Ok(Ok(Some(_))) => Ok(client),
        Ok(Ok(None)) => Err(ImapError::NoGreeting),
        Ok(Err(e)) => Err(ImapError::Protocol(e.into())),
        Err(_) => Err(ImapError::Timeout("waiting for the greeting")),
    }
}

async fn tls<S>(host: &str, stream: S, timeout: Duration) -> Result<Box<dyn Stream>, ImapError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Debug + 'static,
{
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| ImapError::ServerName(host.into()))?;
    match tokio::time::timeout(timeout, TLS.connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(Box::new(tls)),
        Ok(Err(e)) => Err(ImapError::Tls(host.to_string(), e)),
        Err(_) => Err(ImapError::Timeout("the TLS handshake")),
    }
}

/// `1,2,5` for the UIDs (short enough for a batch).
fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
