//! Running and settling the deliveries of one queue.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::Channel;
use platform::broker::{self, Topology};
use platform::celery::{table_to_json, DecodeError, TaskMessage, TaskState};
use platform::db::dead_letters;
use tokio::sync::Mutex;

use crate::context::Context;
use crate::outcome::Outcome;
use crate::tasks::{self, send_batch};

/// The channel used to re-publish (retries, delays, dead letters), in
/// confirm mode, and the delay queues already declared on it.
pub struct Publisher {
    channel: Channel,
    declared: Mutex<HashSet<String>>,
}

impl Publisher {
    pub fn new(channel: Channel) -> Self {
        Publisher {
            channel,
            declared: Mutex::new(HashSet::new()),
        }
    }
}

pub struct Lane {
    pub ctx: Arc<Context>,
    pub topology: Topology,
    pub publisher: Arc<Publisher>,
    /// The queue consumed; delayed messages come back to it.
    pub queue: String,
}

impl Lane {
    /// Deliveries that arrived together: plain API-published sends take the
    /// batched fast path, everything else (and whatever the fast path hands
    /// back) is handled one by one.
    pub async fn handle_batch(&self, deliveries: Vec<Delivery>) {
        let now = Utc::now();
        let mut fast = Vec::new();
        let mut single = Vec::new();
        for delivery in deliveries {
            match self.decode(&delivery) {
                Ok(message) if message.headers.expires.is_none_or(|e| e > now) => {
                    match send_batch::fast_path_id(&message) {
                        Some(id) => fast.push((delivery, message, id)),
                        None => single.push(delivery),
                    }
                }
                _ => single.push(delivery),
            }
        }
        if fast.len() == 1 {
            single.extend(fast.drain(..).map(|(d, _, _)| d));
        }
        if !fast.is_empty() {
            let batch: Vec<(uuid::Uuid, &TaskMessage)> =
                fast.iter().map(|(_, m, id)| (*id, m)).collect();
            let messages: Vec<&TaskMessage> = batch.iter().map(|(_, m)| *m).collect();
            self.ctx.worker.tasks_started(&messages, &self.queue).await;
            let ran = send_batch::run(&self.ctx, &batch).await;
            self.ctx
                .worker
                .tasks_finished(&messages, &self.ctx.results)
                .await;
            match ran {
                Ok(outcomes) => {
                    for ((delivery, message, _), outcome) in fast.into_iter().zip(outcomes) {
                        match outcome {
                            Some(outcome) => self.settle(&delivery, Some(&message), outcome).await,
                            None => single.push(delivery),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "database unavailable; the batch goes back to the queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    for (delivery, _, _) in &fast {
                        nack_requeue(delivery).await;
                    }
                }
            }
        }
        join_all(single.into_iter().map(|d| self.handle(d))).await;
    }

    /// Decodes a delivery, with Python task names and positional
    /// arguments mapped to ours.
    fn decode(&self, delivery: &Delivery) -> Result<TaskMessage, DecodeError> {
        let mut message = TaskMessage::decode(&delivery.properties, &delivery.data)?;
        self.ctx.aliases.apply(&mut message);
        Ok(message)
    }

    async fn handle(&self, delivery: Delivery) {
        let message = match self.decode(&delivery) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable message: {e}");
                tracing::error!(%reason, "dead-lettering");
                return self
                    .settle(&delivery, None, Outcome::DeadLetter { reason })
                    .await;
            }
        };
        let now = Utc::now();
        if message
            .headers
            .expires
            .is_some_and(|expires| expires <= now)
        {
            tracing::info!(
                task_id = message.id(),
                "task expired before it could run; revoked"
            );
            if let Err(e) = self
                .ctx
                .results
                .store(
                    message.id(),
                    TaskState::Revoked,
                    // What Celery stores for an expired task, so that
                    // AsyncResult.get() raises TaskRevokedError('expired').
                    serde_json::json!({
                        "exc_type": "TaskRevokedError",
                        "exc_message": ["expired"],
                        "exc_module": "celery.exceptions",
                    }),
                )
                .await
            {
                tracing::warn!(error = %e, "cannot store the task result");
            }
            return self.settle(&delivery, Some(&message), Outcome::Done).await;
        }
        if let Some(eta) = message.headers.eta {
            if let Ok(wait) = (eta - now).to_std() {
                if wait >= Duration::from_secs(1) {
                    // Held in RabbitMQ, not in memory, so consumer_timeout cannot fire.
                    return self
                        .settle(&delivery, Some(&message), Outcome::Later { delay: wait })
                        .await;
                }
            }
        }

        self.ctx
            .worker
            .tasks_started(&[&message], &self.queue)
            .await;
        let ran = tasks::run(&self.ctx, &message).await;
        self.ctx
            .worker
            .tasks_finished(&[&message], &self.ctx.results)
            .await;
        let outcome = match ran {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(task_id = message.id(), error = %e, "database unavailable; the task goes back to the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                nack_requeue(&delivery).await;
                return;
            }
        };
        self.settle(&delivery, Some(&message), outcome).await;
    }

    /// Carries out an outcome. Re-publications are confirmed before the
    /// original is acknowledged: a crash in between can duplicate a message
    /// but never lose one, and duplicates are absorbed by the record's claim.
    async fn settle(&self, delivery: &Delivery, message: Option<&TaskMessage>, outcome: Outcome) {
        let published: Result<(), String> = match (&outcome, message) {
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
                .dead_letter(delivery, message, reason)
                .await
                .map_err(|e| e.to_string()),
            (_, None) => self
                .dead_letter(delivery, None, "no decodable message")
                .await
                .map_err(|e| e.to_string()),
        };
        match published {
            Ok(()) => {
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(error = %e, "ack failed; the message will be redelivered");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-publication failed; requeueing the original");
                tokio::time::sleep(Duration::from_millis(500)).await;
                nack_requeue(delivery).await;
            }
        }
    }

    async fn delay_publish(
        &self,
        message: &TaskMessage,
        delay: Duration,
    ) -> Result<(), broker::PublishError> {
        // Whole seconds, rounded up, so a message never comes back early.
        let delay = Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
            .max(Duration::from_secs(1));
        let queue = self.topology.names.delay(&self.queue, delay);
        {
            let mut declared = self.publisher.declared.lock().await;
            if !declared.contains(&queue) {
                self.topology
                    .declare_delay_queue(&self.publisher.channel, &self.queue, delay)
                    .await?;
                declared.insert(queue.clone());
            }
        }
        broker::publish_confirmed(
            &self.publisher.channel,
            "",
            &queue,
            &message.body(),
            message.properties(),
        )
        .await
    }

    /// Records the dead letter for operators (listing, requeue through the
    /// API), then moves the message to the dead-letter queue with its reason.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        message: Option<&TaskMessage>,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        metrics::counter!("dead_letters_total").increment(1);
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let message_id = message
            .and_then(|m| m.kwargs.get("message_id"))
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok());
        dead_letters::insert(
            &self.ctx.pool,
            dead_letters::NewDeadLetter {
                task_id: message.map(|m| m.id()),
                task_name: message.map(|m| m.task()),
                message_id,
                reason,
                content_type: delivery
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.as_str()),
                headers: table_to_json(&headers),
                body: &delivery.data,
            },
        )
        .await?;
        let mut headers = headers;
        headers.insert(
            ShortString::from("x-notify-dead-letter-reason"),
            AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        broker::publish_confirmed(
            &self.publisher.channel,
            "",
            &self.topology.names.dead_letter(),
            &delivery.data,
            properties,
        )
        .await?;
        Ok(())
    }
}

async fn nack_requeue(delivery: &Delivery) {
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
