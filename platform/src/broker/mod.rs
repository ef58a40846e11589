//! RabbitMQ: connections, the queue topology, and confirmed publishing.

mod publish;
mod topology;

pub use publish::{await_confirm, publish, publish_confirmed, PublishError};
pub use topology::Topology;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker URL: {0}")]
    Url(String),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Opens a connection driven by the tokio runtime, with the configured
/// heartbeat so dead peers are noticed.
pub async fn connect(
    settings: &Settings,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    let mut uri: AMQPUri = settings.broker_url.parse().map_err(BrokerError::Url)?;
    uri.query.heartbeat = Some(settings.heartbeat);
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(connection_name.into());
    Ok(Connection::connect_uri(uri, properties).await?)
}
