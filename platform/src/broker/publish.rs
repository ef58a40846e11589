//! Publishing with publisher confirms: a message counts as published only
//! once RabbitMQ has taken responsibility for it.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::{BasicProperties, Channel};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for exchange {exchange:?} and routing key {routing_key:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a `mandatory` message on a channel in confirm mode (so a missing
/// queue is an error, not a silent drop) and returns the pending confirm.
/// Callers may send several before awaiting their confirms.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, PublishError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    Ok(channel
        .basic_publish(exchange, routing_key, options, body, properties)
        .await?)
}

pub async fn await_confirm(
    confirm: PublisherConfirm,
    exchange: &str,
    routing_key: &str,
) -> Result<(), PublishError> {
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = publish(channel, exchange, routing_key, body, properties).await?;
    await_confirm(confirm, exchange, routing_key).await
}
