//! Consumes the task queue: bounded concurrency, ack only after the
//! outcome is recorded, durable delays through RabbitMQ holding queues.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
use platform::broker::{self, Topology};
use platform::celery::{table_to_json, TaskMessage, TaskState};
use platform::db::dead_letters;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::outcome::Outcome;
use crate::tasks::{self, send_batch};

/// How long in-flight tasks may run on after SIGTERM before the worker
/// exits (their deliveries are then redelivered to another worker).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct Consumer {
    ctx: Arc<Context>,
    topology: Topology,
    node_name: String,
}

/// The channel used to re-publish (retries, delays, dead letters), in
/// confirm mode, and the delay queues already declared on it.
struct Publisher {
    channel: Channel,
    declared: Mutex<HashSet<String>>,
}

impl Consumer {
    pub fn new(ctx: Arc<Context>, node_name: String) -> Self {
        let topology = Topology::new(ctx.settings.queues.clone());
        Consumer {
            ctx,
            topology,
            node_name,
        }
    }

    /// Consumes until `shutdown`, reconnecting whenever the broker goes away.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "worker lost RabbitMQ; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), broker::BrokerError> {
        let conn = broker::connect(&self.ctx.settings, &self.node_name).await?;
        let result = self.consume(&conn, shutdown).await;
        let _ = conn.close(200, "worker stopping").await;
        result
    }

    async fn consume(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.ctx.settings.prefetch_count, BasicQosOptions::default())
            .await?;
        self.topology.declare_task_queue(&channel).await?;
        self.topology.declare_dead_letter_queue(&channel).await?;
        let publish_channel = conn.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let publisher = Arc::new(Publisher {
            channel: publish_channel,
            declared: Mutex::new(HashSet::new()),
        });

        let mut deliveries = channel
            .basic_consume(
                &self.topology.names.tasks,
                &self.node_name,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.topology.names.tasks, node = %self.node_name, "consuming");

        let concurrency = self.ctx.settings.worker_concurrency;
        let slots = Arc::new(Semaphore::new(concurrency));
        let outcome = loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = shutdown.cancelled() => break Ok(()),
            };
            let mut batch = match next {
                Some(Ok(d)) => vec![d],
                Some(Err(e)) => break Err(e.into()),
                None => {
                    break Err(
                        lapin::Error::InvalidChannelState(lapin::ChannelState::Closed).into(),
                    )
                }
            };
            // Whatever else has already arrived joins this batch.
            while batch.len() < concurrency {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => batch.push(d),
                    _ => break,
                }
            }
            let Ok(permits) = slots.clone().acquire_many_owned(batch.len() as u32).await else {
                break Ok(());
            };
            let ctx = self.ctx.clone();
            let topology = self.topology.clone();
            let publisher = publisher.clone();
            tokio::spawn(async move {
                handle_batch(&ctx, &topology, &publisher, batch).await;
                drop(permits);
            });
        };

        // Stop taking work, then let in-flight tasks finish within the grace period.
        let _ = channel
            .basic_cancel(
                &self.node_name,
                lapin::options::BasicCancelOptions::default(),
            )
            .await;
        let drained =
            tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(concurrency as u32)).await;
        if drained.is_err() {
            tracing::warn!("in-flight tasks did not finish within the grace period; RabbitMQ will redeliver them");
        }
        outcome
    }
}

/// Deliveries that arrived together: plain API-published sends take the
/// batched fast path, everything else (and whatever the fast path hands
/// back) is handled one by one.
async fn handle_batch(
    ctx: &Context,
    topology: &Topology,
    publisher: &Publisher,
    deliveries: Vec<Delivery>,
) {
    let now = Utc::now();
    let mut fast = Vec::new();
    let mut single = Vec::new();
    for delivery in deliveries {
        match TaskMessage::decode(&delivery.properties, &delivery.data) {
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
        match send_batch::run(ctx, &batch).await {
            Ok(outcomes) => {
                for ((delivery, message, _), outcome) in fast.into_iter().zip(outcomes) {
                    match outcome {
                        Some(outcome) => {
                            settle(ctx, topology, publisher, &delivery, Some(&message), outcome)
                                .await
                        }
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
    join_all(
        single
            .into_iter()
            .map(|d| handle(ctx, topology, publisher, d)),
    )
    .await;
}

async fn handle(ctx: &Context, topology: &Topology, publisher: &Publisher, delivery: Delivery) {
    let message = match TaskMessage::decode(&delivery.properties, &delivery.data) {
        Ok(m) => m,
        Err(e) => {
            let reason = format!("undecodable message: {e}");
            tracing::error!(%reason, "dead-lettering");
            return settle(
                ctx,
                topology,
                publisher,
                &delivery,
                None,
                Outcome::DeadLetter { reason },
            )
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
        if let Err(e) = ctx
            .results
            .store(message.id(), TaskState::Revoked, serde_json::Value::Null)
            .await
        {
            tracing::warn!(error = %e, "cannot store the task result");
        }
        return settle(
            ctx,
            topology,
            publisher,
            &delivery,
            Some(&message),
            Outcome::Done,
        )
        .await;
    }
    if let Some(eta) = message.headers.eta {
        if let Ok(wait) = (eta - now).to_std() {
            if wait >= Duration::from_secs(1) {
                // Held in RabbitMQ, not in memory, so consumer_timeout cannot fire.
                let outcome = Outcome::Later { delay: wait };
                return settle(ctx, topology, publisher, &delivery, Some(&message), outcome).await;
            }
        }
    }

    let outcome = match tasks::run(ctx, &message).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(task_id = message.id(), error = %e, "database unavailable; the task goes back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            nack_requeue(&delivery).await;
            return;
        }
    };
    settle(ctx, topology, publisher, &delivery, Some(&message), outcome).await;
}

/// Carries out an outcome. Re-publications are confirmed before the
/// original is acknowledged: a crash in between can duplicate a message
/// but never lose one, and duplicates are absorbed by the record's claim.
async fn settle(
    ctx: &Context,
    topology: &Topology,
    publisher: &Publisher,
    delivery: &Delivery,
    message: Option<&TaskMessage>,
    outcome: Outcome,
) {
    let published: Result<(), String> = match (&outcome, message) {
        (Outcome::Done, _) => Ok(()),
        (Outcome::Retry { delay }, Some(message)) => {
            let mut again = message.clone();
            again.headers.retries += 1;
            again.headers.eta =
                Some(Utc::now() + chrono::Duration::from_std(*delay).unwrap_or_default());
            delay_publish(topology, publisher, &again, *delay)
                .await
                .map_err(|e| e.to_string())
        }
        (Outcome::Later { delay }, Some(message)) => {
            delay_publish(topology, publisher, message, *delay)
                .await
                .map_err(|e| e.to_string())
        }
        (Outcome::DeadLetter { reason }, message) => {
            dead_letter(ctx, topology, publisher, delivery, message, reason)
                .await
                .map_err(|e| e.to_string())
        }
        (_, None) => dead_letter(
            ctx,
            topology,
            publisher,
            delivery,
            None,
            "no decodable message",
        )
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

async fn nack_requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(e) = delivery.nack(options).await {
        tracing::warn!(error = %e, "nack failed; RabbitMQ redelivers on reconnect");
    }
}

async fn delay_publish(
    topology: &Topology,
    publisher: &Publisher,
    message: &TaskMessage,
    delay: Duration,
) -> Result<(), broker::PublishError> {
    // Whole seconds, rounded up, so a message never comes back early.
    let delay = Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
        .max(Duration::from_secs(1));
    let queue = topology.names.delay(delay);
    {
        let mut declared = publisher.declared.lock().await;
        if !declared.contains(&queue) {
            topology
                .declare_delay_queue(&publisher.channel, delay)
                .await?;
            declared.insert(queue.clone());
        }
    }
    broker::publish_confirmed(
        &publisher.channel,
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
    ctx: &Context,
    topology: &Topology,
    publisher: &Publisher,
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
        &ctx.pool,
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
        &publisher.channel,
        "",
        &topology.names.dead_letter(),
        &delivery.data,
        properties,
    )
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum DeadLetterError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] broker::PublishError),
}
