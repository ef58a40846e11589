//! Running and settling the deliveries of one queue.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use platform::broker::{self, Topology};
use platform::celery::{table_to_json, DecodeError, TaskMessage, TaskState};
use platform::db::{dead_letters, messages};
use platform::tasks::{expand_batch, BATCH_MEMBERS, SEND_EMAIL_BATCH};

use crate::context::Context;
use crate::outcome::Outcome;
use crate::tasks::{self, send_batch};

/// The channel used to re-publish (retries, delays, dead letters), in
/// confirm mode.
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub fn new(channel: Channel) -> Self {
        Publisher { channel }
    }
}

pub struct Lane {
    pub ctx: Arc<Context>,
    pub topology: Topology,
    pub publisher: Arc<Publisher>,
    /// The queue consumed; delayed messages come back to it.
    pub queue: String,
}

/// One task to run: a delivery's own task, or one email of a
/// `send_email_batch` delivery.
struct Job {
    /// Index of the delivery that carried it.
    delivery: usize,
    message: TaskMessage,
    /// Expanded from a batch: re-publications and dead letters carry this
    /// email's own `send_email` task, not the batch.
    member: bool,
}

/// A delivery as the consumer hands it over, decoded once.
pub type Decoded = (Delivery, Result<TaskMessage, DecodeError>);

/// How many sends a decoded delivery stands for (what it weighs against
/// the lane's concurrency).
pub fn weight(decoded: &Decoded) -> usize {
    match &decoded.1 {
        Ok(m) if m.task() == SEND_EMAIL_BATCH => m
            .kwargs
            .get("messages")
            .and_then(|v| v.as_array())
            .map_or(1, |a| a.len().clamp(1, BATCH_MEMBERS)),
        _ => 1,
    }
}

impl Lane {
    /// Decodes a delivery, with Python task names and positional
    /// arguments mapped to ours.
    pub fn decode(&self, delivery: Delivery) -> Decoded {
        let decoded = TaskMessage::decode(&delivery.properties, &delivery.data).map(|mut m| {
            self.ctx.aliases.apply(&mut m);
            m
        });
        (delivery, decoded)
    }

    /// Deliveries that arrived together. Batch tasks are expanded into
    /// their emails; plain API-published sends take the batched fast path,
    /// everything else (and whatever the fast path hands back) is handled
    /// one by one. A delivery is acknowledged once every task it carries
    /// is settled, and requeued whole if any of them could not be (a
    /// member already sent is then skipped by its record's claim).
    pub async fn handle_batch(&self, deliveries: Vec<Decoded>) {
        if !self.ctx.liveness.is_fresh() {
            // Others may soon treat this worker's claims as abandoned: it
            // claims nothing until it has renewed its lease.
            tracing::warn!("liveness lease not renewed; deliveries go back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (delivery, _) in &deliveries {
                nack_requeue(delivery).await;
            }
            return;
        }
        let mut requeue = vec![false; deliveries.len()];
        let mut jobs: Vec<Job> = Vec::new();
        let mut settled: Vec<(usize, Option<usize>, Outcome)> = Vec::new(); // (delivery, job, outcome)
        for (d, (_, decoded)) in deliveries.iter().enumerate() {
            match decoded {
                Err(e) => settled.push((
                    d,
                    None,
                    Outcome::DeadLetter {
                        reason: format!("undecodable message: {e}"),
                    },
                )),
                Ok(m) if m.task() == SEND_EMAIL_BATCH => match expand_batch(m) {
                    Ok(members) => jobs.extend(members.into_iter().map(|message| Job {
                        delivery: d,
                        message,
                        member: true,
                    })),
                    Err(reason) => settled.push((d, None, Outcome::DeadLetter { reason })),
                },
                Ok(m) => jobs.push(Job {
                    delivery: d,
                    message: m.clone(),
                    member: false,
                }),
            }
        }

        let now = Utc::now();
        let mut fast = Vec::new();
        let mut single = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            if let Some(outcome) = self.before_running(&job.message, now).await {
                settled.push((job.delivery, Some(j), outcome));
            } else if let Some(id) = send_batch::fast_path_id(&job.message) {
                fast.push((j, id));
            } else {
                single.push(j);
            }
        }
        if fast.len() == 1 {
            single.extend(fast.drain(..).map(|(j, _)| j));
        }
        let mut database_down = false;
        if !fast.is_empty() {
            let batch: Vec<(uuid::Uuid, &TaskMessage)> = fast
                .iter()
                .map(|(j, id)| (*id, &jobs[*j].message))
                .collect();
            let messages: Vec<&TaskMessage> = batch.iter().map(|(_, m)| *m).collect();
            self.ctx.worker.tasks_started(&messages, &self.queue).await;
            let ran = send_batch::run(&self.ctx, &batch).await;
            self.ctx
                .worker
                .tasks_finished(&messages, &self.ctx.results)
                .await;
            match ran {
                Ok(outcomes) => {
                    for ((j, _), outcome) in fast.into_iter().zip(outcomes) {
                        match outcome {
                            Some(outcome) => settled.push((jobs[j].delivery, Some(j), outcome)),
                            None => single.push(j),
                        }
                    }
                }
                Err(e) if platform::db::is_transient(&e) => {
                    tracing::warn!(error = %e, "database unavailable; the batch goes back to the queue");
                    database_down = true;
                    for (j, _) in fast {
                        requeue[jobs[j].delivery] = true;
                    }
                }
                Err(e) => {
                    // One message's data, not the database: each goes its
                    // own way, so the bad one fails alone.
                    tracing::warn!(error = %e, "the database refused a batch; running its tasks one by one");
                    single.extend(fast.into_iter().map(|(j, _)| j));
                }
            }
        }
        let ran = join_all(single.iter().map(|&j| self.run_one(&jobs[j].message))).await;
        for (j, ran) in single.into_iter().zip(ran) {
            match ran {
                Ok(outcome) => settled.push((jobs[j].delivery, Some(j), outcome)),
                Err(e) if platform::db::is_transient(&e) => {
                    tracing::warn!(task_id = jobs[j].message.id(), error = %e, "database unavailable; the task goes back to the queue");
                    database_down = true;
                    requeue[jobs[j].delivery] = true;
                }
                Err(e) => {
                    // Trying again would fail the same way forever.
                    tracing::warn!(task_id = jobs[j].message.id(), error = %e, "the database refused the task's data");
                    let reason = format!(
                        "the database refused this task's data: {}",
                        platform::db::describe(&e)
                    );
                    self.fail_record(&jobs[j].message, &reason).await;
                    settled.push((jobs[j].delivery, Some(j), Outcome::DeadLetter { reason }));
                }
            }
        }

        for (d, j, outcome) in settled {
            if requeue[d] {
                continue;
            }
            let delivery = &deliveries[d];
            let job = j.map(|j| &jobs[j]);
            let published = match job {
                Some(job) if job.member => {
                    let (properties, body) = (job.message.properties(), job.message.body());
                    self.publish_outcome(&properties, &body, Some(&job.message), outcome)
                        .await
                }
                _ => {
                    let message = job.map(|job| &job.message).or(delivery.1.as_ref().ok());
                    let (properties, body) = (&delivery.0.properties, &delivery.0.data);
                    self.publish_outcome(properties, body, message, outcome)
                        .await
                }
            };
            if let Err(e) = published {
                tracing::warn!(error = %e, "re-publication failed; requeueing the original");
                requeue[d] = true;
            }
        }

        if requeue.iter().any(|r| *r) {
            // Not at once: a database or broker that just failed needs a moment.
            let pause = if database_down { 1000 } else { 500 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        for ((delivery, _), requeue) in deliveries.iter().zip(requeue) {
            if requeue {
                nack_requeue(delivery).await;
            } else if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered");
            }
        }
    }

    /// Stores the task's failure for Python callers and marks the record it
    /// refers to failed (when it has one), so it does not sit `queued` and
    /// come back through the reconciler only to be refused again. Best
    /// effort: the dead letter itself keeps the task for operators.
    async fn fail_record(&self, message: &TaskMessage, reason: &str) {
        if let Err(e) = self
            .ctx
            .results
            .store_failure(message.id(), "EmailDeliveryError", reason)
            .await
        {
            tracing::warn!(error = %e, "cannot store the task result");
        }
        let Some(id) = platform::tasks::record_id(message) else {
            return;
        };
        if let Err(e) = messages::mark_failed(&self.ctx.pool, id, reason, None).await {
            tracing::warn!(message_id = %id, error = %e, "cannot mark the record failed");
        }
    }

    /// An outcome decided before running: an expired task is revoked, one
    /// due later is held in RabbitMQ (not in memory, so consumer_timeout
    /// cannot fire).
    async fn before_running(&self, message: &TaskMessage, now: DateTime<Utc>) -> Option<Outcome> {
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
            return Some(Outcome::Done);
        }
        // Any wait at all goes back to the ladder: a task never runs early.
        let wait = (message.headers.eta? - now).to_std().ok()?;
        (!wait.is_zero()).then_some(Outcome::Later { delay: wait })
    }

    /// Runs one task. An `Err` is an infrastructure failure (database
    /// unreachable): its delivery goes back to the queue.
    async fn run_one(&self, message: &TaskMessage) -> Result<Outcome, sqlx::Error> {
        self.ctx.worker.tasks_started(&[message], &self.queue).await;
        let ran = tasks::run(&self.ctx, message).await;
        self.ctx
            .worker
            .tasks_finished(&[message], &self.ctx.results)
            .await;
        ran
    }

    /// Carries out an outcome's re-publication (retry, delay, dead letter),
    /// confirmed before the delivery is acknowledged: a crash in between
    /// can duplicate a message but never lose one, and duplicates are
    /// absorbed by the record's claim. `properties` and `body` are the
    /// message as it is dead-lettered.
    async fn publish_outcome(
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
        match publish().await {
            Err(broker::PublishError::Unroutable { .. }) => {
                // The rung is gone (deleted by an operator): declare it again.
                tracing::warn!(%queue, "delay queue missing; declaring it again");
                self.topology
                    .declare_rung(&self.publisher.channel, &self.queue, rung)
                    .await?;
                publish().await
            }
            other => other,
        }
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
