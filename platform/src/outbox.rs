//! The outbox relay: publishes task messages recorded in the `outbox` table
//! to RabbitMQ and deletes them once the broker has confirmed them.
//!
//! Why an outbox: the API commits the message record and its task message in
//! one PostgreSQL transaction and answers 202 without waiting for RabbitMQ.
//! If the broker is down, rows wait here and go out when it is back; if the
//! API dies, another instance's relay picks them up. A crash between the
//! broker's confirm and the DELETE can publish a row twice; the worker's
//! `queued → sending` claim makes that harmless.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Topology};
use crate::celery::amqp_properties;
use crate::config::Settings;
use crate::db::outbox;
use crate::tasks::{batch_members_of, send_email_batch_tasks, BatchMember};

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
}

impl OutboxRelay {
    pub fn new(pool: PgPool, settings: Settings, waker: OutboxWaker) -> Self {
        OutboxRelay {
            pool,
            settings,
            waker,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut link: Option<(Connection, Channel)> = None;
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            if link
                .as_ref()
                .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
            {
                match self.open_channel().await {
                    Ok(l) => {
                        tracing::info!("outbox relay connected to RabbitMQ");
                        link = Some(l);
                        backoff = Duration::from_millis(200);
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
            let Some((_, channel)) = &link else { continue };
            match self.relay_batch(channel).await {
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
                    if let Some((conn, _)) = link.take() {
                        broker::close(&conn, 0, "reconnecting").await;
                    }
                    self.pause(&shutdown, backoff).await;
                }
            }
        }
        if let Some((conn, _)) = link {
            broker::close(&conn, 200, "shutdown").await;
        }
    }

    async fn pause(&self, shutdown: &CancellationToken, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    async fn open_channel(&self) -> Result<(Connection, Channel), RelayError> {
        // The process id tells operators (and the cluster failover test)
        // whose relay a connection on a broker node is.
        let name = format!("notify-outbox-relay/{}", std::process::id());
        let conn = broker::connect(&self.settings, &name).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Topology::new(self.settings.queues.clone())
            .declare_task_queue(&channel)
            .await?;
        Ok((conn, channel))
    }

    /// Publishes one batch: all messages are sent, then all confirms awaited,
    /// then the rows deleted in the transaction that locked them.
    async fn relay_batch(&self, channel: &Channel) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows = outbox::lock_batch(&mut tx, BATCH).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let publications = merge_batches(&rows);
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
        Ok(rows.len())
    }
}

/// One message as it goes to the broker.
struct Publication {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: lapin::BasicProperties,
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
fn merge_batches(rows: &[outbox::OutboxRow]) -> Vec<Publication> {
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
        });
    }
    for ((exchange, routing_key, priority), members) in merged {
        for mut task in send_email_batch_tasks(&members) {
            task.priority = priority.and_then(|p| u8::try_from(p).ok());
            publications.push(Publication {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                body: task.body(),
                properties: task.properties(),
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
        let published = merge_batches(&rows);
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
    }
}
