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
                        let _ = conn.close(0, "reconnecting").await;
                    }
                    self.pause(&shutdown, backoff).await;
                }
            }
        }
        if let Some((conn, _)) = link {
            let _ = conn.close(200, "shutdown").await;
        }
    }

    async fn pause(&self, shutdown: &CancellationToken, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    async fn open_channel(&self) -> Result<(Connection, Channel), RelayError> {
        let conn = broker::connect(&self.settings, "notify-outbox-relay").await?;
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
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let priority = row.priority.and_then(|p| u8::try_from(p).ok());
            let properties = amqp_properties(&row.task_id, &row.headers, priority, None);
            let confirm = broker::publish(
                channel,
                &row.exchange,
                &row.routing_key,
                &row.body,
                properties,
            )
            .await?;
            confirms.push(broker::await_confirm(
                confirm,
                &row.exchange,
                &row.routing_key,
            ));
        }
        for result in join_all(confirms).await {
            result?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        outbox::delete(&mut tx, &ids).await?;
        tx.commit().await?;
        metrics::counter!("outbox_published_total").increment(rows.len() as u64);
        tracing::debug!(count = rows.len(), "outbox batch published");
        Ok(rows.len())
    }
}
