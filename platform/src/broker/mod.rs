//! RabbitMQ: connections, the queue topology, and confirmed publishing.

mod publish;
mod topology;

pub use publish::{await_confirm, publish, publish_confirmed, PublishError};
pub use topology::{Topology, TopologyError};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::config::Settings;

/// How long one node may take to accept a connection before the next one
/// is tried: a node that is down refuses at once, but one that is
/// unreachable (a dropped route, a hung host) would otherwise hold the
/// caller for the operating system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker URL: {0}")]
    Url(String),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ node {node} did not accept a connection within {after:?}")]
    Timeout { node: String, after: Duration },
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

impl BrokerError {
    /// A configuration mistake that reconnecting cannot cure.
    pub fn is_permanent(&self) -> bool {
        matches!(self, BrokerError::Topology(t) if t.is_permanent())
    }
}

/// How long closing a connection waits for the broker's close-ok. A node
/// that hangs (a frozen host, a cut network) never answers, and lapin stops
/// watching heartbeats once a close has begun, so an unbounded close would
/// hold its caller for good instead of letting it reconnect elsewhere. Past
/// this the connection is abandoned; its socket goes when the peer answers
/// or TCP gives up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where this process's next connection starts in the list of broker URLs.
/// Each call moves it on by one, so a connection that replaces one that
/// died starts at another node than the one it lost, and the processes'
/// connections spread over a cluster's nodes. It starts at an offset taken
/// from the process id, so that instances do not all begin on the first
/// node.
fn next_start() -> usize {
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    NEXT.get_or_init(|| AtomicUsize::new(std::process::id() as usize))
        .fetch_add(1, Ordering::Relaxed)
}

/// Opens a connection driven by the tokio runtime, with the configured
/// heartbeat so dead peers are noticed. With several broker URLs (the nodes
/// of a cluster), tries them in turn, starting one further along the list
/// on every call, and returns the first that accepts; the error is the last
/// node's when none does.
pub async fn connect(
    settings: &Settings,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    let urls = &settings.broker_urls;
    let start = next_start();
    let mut last_error = BrokerError::Url("no broker URL is configured".into());
    for i in 0..urls.len() {
        let url = &urls[start.wrapping_add(i) % urls.len()];
        match connect_one(url, settings.heartbeat, connection_name).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                if urls.len() > 1 {
                    tracing::warn!(node = %node_of(url), error = %e, "RabbitMQ node unavailable; trying the next");
                }
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// Closes a connection politely when the broker answers, and gives up on
/// it after [`CLOSE_TIMEOUT`] when it does not.
pub async fn close(conn: &Connection, reply_code: u16, reply_text: &str) {
    if let Err(e) = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(reply_code, reply_text)).await {
        tracing::warn!(error = %e, "RabbitMQ did not answer the connection close; abandoning the connection");
    }
}

async fn connect_one(
    url: &str,
    heartbeat: u16,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    let mut uri: AMQPUri = url.parse().map_err(BrokerError::Url)?;
    uri.query.heartbeat = Some(heartbeat);
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(connection_name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(BrokerError::Timeout {
            node: node_of(url),
            after: CONNECT_TIMEOUT,
        }),
    }
}

/// Ready messages and consumers of a queue (`None`: it does not exist). A
/// failed passive declare closes its channel: one channel per queue.
pub async fn inspect_queue(
    connection: &Connection,
    name: &str,
) -> Result<Option<(u32, u32)>, lapin::Error> {
    let channel = connection.create_channel().await?;
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = match channel
        .queue_declare(name, options, lapin::types::FieldTable::default())
        .await
    {
        Ok(q) => Some((q.message_count(), q.consumer_count())),
        Err(_) => None,
    };
    if found.is_some() {
        let _ = channel.close(200, "inspected").await;
    }
    Ok(found)
}

/// `host:port` of a broker URL, for logs (never the credentials).
fn node_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or("?"),
            u.port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 })
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_without_credentials() {
        assert_eq!(
            node_of("amqp://guest:secret@10.0.0.2:5681/%2f"),
            "10.0.0.2:5681"
        );
        assert_eq!(
            node_of("amqps://u:p@rmq.example.org/vh"),
            "rmq.example.org:5671"
        );
    }
}
