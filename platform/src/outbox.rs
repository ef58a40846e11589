//! The outbox relay: publishes task messages recorded in the `outbox` table
//! to RabbitMQ and deletes them once the broker has confirmed them.
//!
//! Why an outbox: the API commits the message record and its task message in
//! one PostgreSQL transaction and answers 202 without waiting for RabbitMQ.
//! If the broker is down, rows wait here and go out when it is back; if the
//! API dies, another instance's relay picks them up. A crash between the
//! broker's confirm and the DELETE can publish a row twice; the worker's
//! `queued → sending` claim makes that harmless.
//!
//! With `CELERY_TASK_SEND_SENT_EVENT`, the relay emits Celery's `task-sent`
//! event for each task once the broker has confirmed it: for each email of
//! a `send_email_batch` message, under the email's own task id, since that
//! is the task Flower then sees received, started and finished.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Topology};
use crate::celery::events::{self, Dispatcher};
use crate::celery::{amqp_properties, pidbox};
use crate::config::Settings;
use crate::db::outbox;
use crate::tasks::{
    batch_members_of, send_email_batch_task, send_email_task, BatchMember, BATCH_MEMBERS,
};

const BATCH: i64 = 500;
/// How often the relay looks for rows written by other processes.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] broker::PublishError),
    #[error(transparent)]
    Topology(#[from] broker::TopologyError),
}

/// The relay's link to RabbitMQ: the publishing channel (confirm mode)
/// and, when `task-sent` events are on, a channel for them.
struct Link {
    connection: Connection,
    channel: Channel,
    events: Option<Channel>,
}

/// Wakes the relay right after a commit so a send is published at once.
#[derive(Clone, Default)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

pub struct OutboxRelay {
    pool: PgPool,
    settings: Settings,
    waker: OutboxWaker,
    /// `task-sent` events (`CELERY_TASK_SEND_SENT_EVENT`).
    events: Option<Dispatcher>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, settings: Settings, waker: OutboxWaker) -> Self {
        let events = settings
            .send_sent_event
            .then(|| Dispatcher::producer(&settings.host_name));
        OutboxRelay {
            pool,
            settings,
            waker,
            events,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut link: Option<Link> = None;
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            if link.as_ref().is_none_or(|l| {
                !l.connection.status().connected() || !l.channel.status().connected()
            }) {
                match self.open_channel().await {
                    Ok(l) => {
                        tracing::info!("outbox relay connected to RabbitMQ");
                        link = Some(l);
                        backoff = Duration::from_millis(200);
                    }
                    Err(RelayError::Topology(e)) if e.is_permanent() => {
                        // Sends wait in the outbox until an operator fixes it.
                        tracing::error!(error = %e, retry_in = ?backoff, "outbox relay cannot declare the task queues");
                        metrics::counter!("outbox_relay_errors_total").increment(1);
                        self.pause(&shutdown, backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay cannot reach RabbitMQ");
                        metrics::counter!("outbox_relay_errors_total").increment(1);
                        self.pause(&shutdown, backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(l) = &link else { continue };
            match self.relay_batch(&l.channel, l.events.as_ref()).await {
                Ok(0) => {
                    tokio::select! {
                        _ = self.waker.0.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay failed to publish a batch; will retry");
                    metrics::counter!("outbox_relay_errors_total").increment(1);
                    if let Some(l) = link.take() {
                        broker::close(&l.connection, 0, "reconnecting").await;
                    }
                    self.pause(&shutdown, backoff).await;
                }
            }
        }
        if let Some(l) = link {
            broker::close(&l.connection, 200, "shutdown").await;
        }
    }

    async fn pause(&self, shutdown: &CancellationToken, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    async fn open_channel(&self) -> Result<Link, RelayError> {
        // The process id tells operators (and the cluster failover test)
        // whose relay a connection on a broker node is.
        let name = format!("notify-outbox-relay/{}", std::process::id());
        let conn = broker::connect(&self.settings, &name).await?;
        match self.channels(&conn).await {
            Ok((channel, events)) => Ok(Link {
                connection: conn,
                channel,
                events,
            }),
            Err(e) => {
                // Not left open: a queue declared with other arguments
                // fails the same way at every reconnect.
                broker::close(&conn, 200, "setup failed").await;
                Err(e)
            }
        }
    }

    /// The publishing channel, with the task queues declared, and the
    /// events channel when `task-sent` is on.
    async fn channels(&self, conn: &Connection) -> Result<(Channel, Option<Channel>), RelayError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Topology::new(self.settings.queues.clone())
            .declare_task_queue(&channel)
            .await?;
        let events = match self.events {
            Some(_) => {
                let events = conn.create_channel().await?;
                pidbox::declare_event_exchange(&events).await?;
                Some(events)
            }
            None => None,
        };
        Ok((channel, events))
    }

    /// Publishes one batch: all messages are sent, then all confirms awaited,
    /// then the rows deleted in the transaction that locked them.
    async fn relay_batch(
        &self,
        channel: &Channel,
        events: Option<&Channel>,
    ) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows = outbox::lock_batch(&mut tx, BATCH).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let publications = merge_batches(&rows, self.events.is_some());
        let mut confirms = Vec::with_capacity(publications.len());
        for p in &publications {
            let confirm = broker::publish(
                channel,
                &p.exchange,
                &p.routing_key,
                &p.body,
                p.properties.clone(),
            )
            .await?;
            confirms.push(broker::await_confirm(confirm, &p.exchange, &p.routing_key));
        }
        for result in join_all(confirms).await {
            result?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        outbox::delete(&mut tx, &ids).await?;
        tx.commit().await?;
        metrics::counter!("outbox_published_total").increment(publications.len() as u64);
        tracing::debug!(count = rows.len(), "outbox batch published");
        if let (Some(dispatcher), Some(events)) = (&self.events, events) {
            self.announce(dispatcher, events, &publications).await;
        }
        Ok(rows.len())
    }

    /// `task-sent` for every task just published; best effort, as
    /// Celery's events are.
    async fn announce(
        &self,
        dispatcher: &Dispatcher,
        channel: &Channel,
        published: &[Publication],
    ) {
        for p in published {
            for headers in &p.sent {
                let fields = events::task_sent(headers, &p.exchange, &p.routing_key);
                if let Err(e) = dispatcher.send(channel, "task-sent", fields).await {
                    tracing::debug!(error = %e, "task-sent event not published");
                    return;
                }
            }
        }
    }
}

/// One message as it goes to the broker.
struct Publication {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: lapin::BasicProperties,
    /// The headers of the tasks it carries, for `task-sent` (only when
    /// those events are on): its own, or its batch's emails'.
    sent: Vec<Map<String, Value>>,
}

/// Exchange, routing key and priority: what batches must share to merge.
type Destination<'a> = (&'a str, &'a str, Option<i16>);

/// The rows as messages, with the `send_email_batch` tasks bound for the
/// same queue and priority merged into as few as
/// [`crate::tasks::BATCH_MEMBERS`] allows.
/// At a steady rate the API's group commits are small, so their batches
/// are too; rows that gathered here between two relay rounds go out as one
/// message instead of many. Each email keeps its own task id, so how the
/// emails are grouped changes nothing for the worker.
fn merge_batches(rows: &[outbox::OutboxRow], with_sent: bool) -> Vec<Publication> {
    let mut publications = Vec::with_capacity(rows.len());
    let mut merged: Vec<(Destination, Vec<BatchMember>)> = Vec::new();
    for row in rows {
        if let Some(members) = batch_members_of(&row.headers, &row.body) {
            let key = (
                row.exchange.as_str(),
                row.routing_key.as_str(),
                row.priority,
            );
            match merged.iter_mut().find(|(k, _)| *k == key) {
                Some((_, all)) => all.extend(members),
                None => merged.push((key, members)),
            }
            continue;
        }
        let priority = row.priority.and_then(|p| u8::try_from(p).ok());
        publications.push(Publication {
            exchange: row.exchange.clone(),
            routing_key: row.routing_key.clone(),
            body: row.body.clone(),
            properties: amqp_properties(&row.task_id, &row.headers, priority, None),
            sent: if with_sent {
                vec![row.headers.0.clone()]
            } else {
                Vec::new()
            },
        });
    }
    for ((exchange, routing_key, priority), members) in merged {
        for chunk in members.chunks(BATCH_MEMBERS) {
            let mut task = send_email_batch_task(chunk);
            task.priority = priority.and_then(|p| u8::try_from(p).ok());
            let sent = if with_sent {
                chunk
                    .iter()
                    .map(|m| send_email_task(m.message_id, &m.task_id).headers_json())
                    .collect()
            } else {
                Vec::new()
            };
            publications.push(Publication {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                body: task.body(),
                properties: task.properties(),
                sent,
            });
        }
    }
    publications
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{expand_batch, send_email_batch_task};
    use uuid::Uuid;

    fn row(id: i64, task: &crate::celery::TaskMessage, priority: Option<i16>) -> outbox::OutboxRow {
        outbox::OutboxRow {
            id,
            task_id: task.id().to_string(),
            exchange: "q".into(),
            routing_key: "q".into(),
            headers: sqlx::types::Json(task.headers_json()),
            body: task.body(),
            priority,
        }
    }

    fn members(n: usize) -> Vec<BatchMember> {
        (0..n)
            .map(|_| BatchMember {
                message_id: Uuid::new_v4(),
                task_id: Uuid::new_v4().to_string(),
            })
            .collect()
    }

    #[test]
    fn batches_for_one_queue_and_priority_are_merged_and_others_kept() {
        let (a, b, c) = (members(20), members(20), members(20));
        let urgent = members(3);
        let plain = crate::tasks::send_email_task(Uuid::new_v4(), "plain-1");
        let rows = vec![
            row(1, &send_email_batch_task(&a), None),
            row(2, &plain, None),
            row(3, &send_email_batch_task(&b), None),
            row(4, &send_email_batch_task(&urgent), Some(9)),
            row(5, &send_email_batch_task(&c), None),
        ];
        let published = merge_batches(&rows, true);
        // The plain task as it was; 60 emails in batches of 50 and 10; the
        // other priority on its own.
        assert_eq!(published.len(), 4);
        assert_eq!(published[0].body, plain.body());
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        for p in &published[1..] {
            let task = crate::celery::TaskMessage::decode(&p.properties, &p.body).unwrap();
            let expanded = expand_batch(&task).unwrap();
            sizes.push((expanded.len(), task.priority));
            seen.extend(expanded.iter().map(|t| t.id().to_string()));
        }
        assert_eq!(sizes, [(50, None), (10, None), (3, Some(9))]);
        let expected: Vec<String> = a
            .iter()
            .chain(&b)
            .chain(&c)
            .chain(&urgent)
            .map(|m| m.task_id.clone())
            .collect();
        assert_eq!(
            seen, expected,
            "every email once, with its own task id, in order"
        );
        // task-sent names each email under its own task id, not the batch.
        let announced: Vec<String> = published
            .iter()
            .flat_map(|p| &p.sent)
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect();
        let mut all = vec![plain.id().to_string()];
        all.extend(expected);
        assert_eq!(announced, all);
        assert!(merge_batches(&rows, false)
            .iter()
            .all(|p| p.sent.is_empty()));
    }
}
