//! Re-publication of a task's outcome, confirmed before its delivery is
//! acknowledged: a retry or a wait goes to the delay ladder, a task that
//! cannot be processed to the dead-letter queue (and table).

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{
    BasicNackOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use platform::broker;
use platform::celery::canvas::{Publication, Route};
use platform::celery::{table_to_json, TaskMessage};
use platform::db::dead_letters;

use super::Lane;
use crate::outcome::Outcome;

/// The channel used to re-publish (retries, delays, dead letters, and the
/// callbacks of tasks), in confirm mode, and its connection, for the
/// declarations that might fail (a channel of their own, so that a refused
/// one does not close this one).
pub struct Publisher {
    pub(super) channel: Channel,
    connection: std::sync::Arc<Connection>,
}

impl Publisher {
    pub fn new(channel: Channel, connection: std::sync::Arc<Connection>) -> Self {
        Publisher {
            channel,
            connection,
        }
    }
}

impl Lane {
    /// Carries out an outcome's re-publication (retry, delay, dead letter),
    /// confirmed before the delivery is acknowledged: a crash in between
    /// can duplicate a message but never lose one, and duplicates are
    /// absorbed by the record's claim. `properties` and `body` are the
    /// message as it is dead-lettered.
    pub(super) async fn publish_outcome(
        &self,
        properties: &BasicProperties,
        body: &[u8],
        message: Option<&TaskMessage>,
        outcome: Outcome,
    ) -> Result<(), String> {
        match (&outcome, message) {
            (Outcome::Done, _) => Ok(()),
            (Outcome::Retry { delay }, Some(message)) => {
                let mut again = message.clone();
                again.headers.retries += 1;
                again.headers.eta =
                    Some(Utc::now() + chrono::Duration::from_std(*delay).unwrap_or_default());
                self.delay_publish(&again, *delay)
                    .await
                    .map_err(|e| e.to_string())
            }
            (Outcome::Later { delay }, Some(message)) => self
                .delay_publish(message, *delay)
                .await
                .map_err(|e| e.to_string()),
            (Outcome::DeadLetter { reason }, message) => self
                .dead_letter(properties, body, message, reason)
                .await
                .map_err(|e| e.to_string()),
            (_, None) => self
                .dead_letter(properties, body, None, "no decodable message")
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Holds `message` in RabbitMQ for `delay`: it records its due time as
    /// its `eta` and takes the ladder's longest rung that does not overshoot
    /// it; on its return the worker sends it on to the next rung until it is
    /// due (a delay beyond the top rung travels in several hops).
    async fn delay_publish(
        &self,
        message: &TaskMessage,
        delay: Duration,
    ) -> Result<(), broker::PublishError> {
        let mut held = message.clone();
        let due = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if held.headers.eta.is_none_or(|eta| eta < due) {
            held.headers.eta = Some(due);
        }
        let rung = self.topology.names.rung_for(delay);
        let queue = self.topology.names.rung(&self.queue, rung);
        let body = held.body();
        let publish = || {
            broker::publish_confirmed(
                &self.publisher.channel,
                "",
                &queue,
                &body,
                held.properties(),
            )
        };
        let published = match publish().await {
            Err(broker::PublishError::Unroutable { .. }) => {
                // The rung is gone (deleted by an operator): declare it again.
                tracing::warn!(%queue, "delay queue missing; declaring it again");
                self.topology
                    .declare_rung(&self.publisher.channel, &self.queue, rung)
                    .await?;
                publish().await
            }
            other => other,
        };
        // A task with a record is listed by `inspect scheduled` from it;
        // one without is remembered here.
        if published.is_ok() && platform::tasks::record_id(&held).is_none() {
            if let Some(eta) = held.headers.eta {
                let info = serde_json::json!({
                    "exchange": self.queue, "routing_key": self.queue,
                    "priority": held.priority, "redelivered": false,
                });
                self.ctx.worker.laddered(&held, eta, info);
            }
        }
        published
    }

    /// Records the dead letter for operators (listing, requeue through the
    /// API), then moves the message to the dead-letter queue with its reason.
    async fn dead_letter(
        &self,
        properties: &BasicProperties,
        body: &[u8],
        message: Option<&TaskMessage>,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        tracing::warn!(task_id = message.map(|m| m.id()), %reason, "dead-lettering");
        metrics::counter!("dead_letters_total").increment(1);
        let headers = properties.headers().clone().unwrap_or_default();
        let message_id = message.and_then(platform::tasks::record_id);
        let recorded = dead_letters::insert(
            &self.ctx.pool,
            dead_letters::NewDeadLetter {
                task_id: message.map(|m| m.id()),
                task_name: message.map(|m| m.task()),
                message_id,
                reason,
                content_type: properties.content_type().as_ref().map(|c| c.as_str()),
                headers: table_to_json(&headers),
                body,
            },
        )
        .await;
        match recorded {
            Ok(_) => {}
            Err(e) if platform::db::is_transient(&e) => return Err(e.into()),
            // The queue keeps it even if the table cannot.
            Err(e) => tracing::warn!(error = %e, "cannot record the dead letter in the database"),
        }
        let mut headers = headers;
        headers.insert(
            ShortString::from("x-notify-dead-letter-reason"),
            AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
        );
        let properties = properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        broker::publish_confirmed(
            &self.publisher.channel,
            "",
            &self.topology.names.dead_letter(),
            body,
            properties.clone(),
        )
        .await?;
        // Celery's `task-rejected`: the message is not requeued. Its id is
        // known even when it could not be decoded, if kombu set it.
        let uuid = message
            .map(|m| m.id().to_string())
            .or_else(|| task_id_of(&properties));
        if let Some(uuid) = uuid {
            let event = serde_json::json!({"uuid": uuid, "requeue": false});
            self.ctx.worker.emit("task-rejected", event).await;
        }
        Ok(())
    }
}

/// The task id of a message that may not decode: its `correlation_id`
/// (kombu sets it to the task id), else its `id` header.
fn task_id_of(properties: &BasicProperties) -> Option<String> {
    if let Some(id) = properties.correlation_id() {
        return Some(id.as_str().to_string());
    }
    match properties.headers().as_ref()?.inner().get("id")? {
        AMQPValue::LongString(id) => Some(String::from_utf8_lossy(id.as_bytes()).into_owned()),
        AMQPValue::ShortString(id) => Some(id.as_str().to_string()),
        _ => None,
    }
}

impl Lane {
    /// Publishes what a task's final outcome makes follow (callbacks, the
    /// next chain step, a chord's body: `crate::canvas`), every message
    /// confirmed, before the delivery is acknowledged.
    pub(super) async fn follow_up(&self, message: &TaskMessage) -> Result<(), String> {
        let Some(follow_ups) = crate::canvas::follow_ups(&self.ctx, message)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        for publication in &follow_ups.publications {
            tracing::info!(
                task_id = message.id(),
                next = publication.message.id(),
                task = publication.message.task(),
                route = ?publication.route,
                "publishing a follow-up task"
            );
            self.publish_task(publication)
                .await
                .map_err(|e| e.to_string())?;
        }
        crate::canvas::finish(&self.ctx, follow_ups).await;
        Ok(())
    }

    /// Publishes a task for another worker, as Celery's `send_task` does:
    /// to its queue (declared as Celery declares it, if missing), or to the
    /// exchange it names (where, as for Celery, a message no queue is bound
    /// for is dropped).
    async fn publish_task(&self, publication: &Publication) -> Result<(), broker::PublishError> {
        let message = &publication.message;
        let body = message.body();
        match &publication.route {
            Route::Queue(queue) => {
                let publish = || {
                    broker::publish_confirmed(
                        &self.publisher.channel,
                        "",
                        queue,
                        &body,
                        message.properties(),
                    )
                };
                match publish().await {
                    Err(broker::PublishError::Unroutable { .. }) => {
                        tracing::info!(%queue, "declaring the follow-up task's queue, as Celery would");
                        self.declare_celery_queue(queue).await?;
                        publish().await
                    }
                    other => other,
                }
            }
            Route::Exchange {
                exchange,
                routing_key,
            } => {
                // A channel of its own: publishing to an exchange that does
                // not exist closes the channel.
                let channel = self.publisher.connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let published = broker::publish_confirmed(
                    &channel,
                    exchange,
                    routing_key,
                    &body,
                    message.properties(),
                )
                .await;
                let _ = channel.close(200, "published").await;
                // Refused on a connection still up: the exchange is missing.
                let dropped = match &published {
                    Err(broker::PublishError::Unroutable { .. }) => true,
                    Err(broker::PublishError::Amqp(_)) => {
                        self.publisher.connection.status().connected()
                    }
                    _ => false,
                };
                if let (true, Err(error)) = (dropped, &published) {
                    tracing::warn!(task_id = message.id(), %exchange, %routing_key, %error, "follow-up task dropped: nothing routes it");
                    metrics::counter!("canvas_unroutable_total").increment(1);
                    return Ok(());
                }
                published
            }
        }
    }

    /// Kombu's declaration of a queue named in `queue=`: durable, bound to
    /// a direct exchange of the same name with its name as routing key.
    async fn declare_celery_queue(&self, queue: &str) -> Result<(), lapin::Error> {
        let channel = self.publisher.connection.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue, durable, FieldTable::default())
            .await?;
        channel
            .exchange_declare(
                queue,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue,
                queue,
                queue,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "declared").await;
        Ok(())
    }
}

pub(super) async fn nack_requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(e) = delivery.nack(options).await {
        tracing::warn!(error = %e, "nack failed; RabbitMQ redelivers on reconnect");
    }
}

#[derive(Debug, thiserror::Error)]
enum DeadLetterError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] broker::PublishError),
}
