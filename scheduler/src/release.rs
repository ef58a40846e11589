//! Delayed sends: releases `scheduled` messages whose `send_at` has come.
//!
//! Every scheduler instance runs this loop. One transaction locks due rows
//! with `FOR UPDATE SKIP LOCKED`, sets them `queued` and writes their outbox
//! rows, so two instances never release the same message, a message is never
//! queued without its task (or the reverse), and a cancelled message (its
//! status no longer `scheduled`) is never released.

use std::time::Duration;

use platform::db::{messages, outbox};
use platform::outbox::OutboxWaker;
use platform::tasks::send_email_task;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub struct Releaser {
    pub pool: PgPool,
    pub queue: String,
    pub batch: i64,
    pub poll: Duration,
    pub waker: OutboxWaker,
}

impl Releaser {
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let pause = match self.release_once().await {
                // A full batch: there may be more due right now.
                Ok(n) if n as i64 >= self.batch => Duration::ZERO,
                Ok(_) => self.poll,
                Err(e) => {
                    tracing::warn!(error = %e, "releasing delayed sends failed; will retry");
                    metrics::counter!("scheduler_errors_total", "job" => "release").increment(1);
                    self.poll.max(Duration::from_secs(1))
                }
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Releases one batch of due messages; returns how many.
    #[tracing::instrument(name = "release", level = "debug", skip_all)]
    pub async fn release_once(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let released = messages::release_due(&mut tx, self.batch).await?;
        for message in &released {
            tracing::debug!(message_id = %message.id, task_id = %message.task_id, "delayed send released");
            let task = send_email_task(message.id, &message.task_id);
            outbox::enqueue(&mut *tx, &self.queue, &self.queue, &task).await?;
        }
        tx.commit().await?;
        if !released.is_empty() {
            self.waker.wake();
            metrics::counter!("scheduler_delayed_released_total").increment(released.len() as u64);
            tracing::debug!(count = released.len(), "delayed sends released");
        }
        Ok(released.len())
    }
}
