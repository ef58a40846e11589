//! Turns the events that message changes recorded (one small row each, in
//! the changing transaction) into events and deliveries, in bulk and off
//! the sending path, and wakes the dispatcher when there are new ones.
//! Every scheduler instance runs it; one at a time gets through (the
//! others find the advisory lock taken and wait for the next round).

use std::sync::Arc;
use std::time::Duration;

use platform::db::webhooks;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Pending events taken per transaction.
const BATCH: i32 = 2000;
/// After a failed round.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct FanOut {
    pub pool: PgPool,
    /// How long to wait when nothing is pending (`WEBHOOK_POLL_MS`).
    pub poll: Duration,
    /// Notified after a round fanned events out.
    pub wake: Arc<Notify>,
}

impl FanOut {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match webhooks::fan_out(&self.pool, BATCH).await {
                Ok(taken) => {
                    if taken > 0 {
                        metrics::counter!("webhook_events_fanned_out_total")
                            .increment(taken as u64);
                        self.wake.notify_one();
                    }
                    // A full batch: more are waiting.
                    if taken == BATCH {
                        Duration::ZERO
                    } else {
                        self.poll
                    }
                }
                Err(e) => {
                    metrics::counter!("scheduler_errors_total", "job" => "webhook_fan_out")
                        .increment(1);
                    tracing::warn!(error = %e, "fanning out webhook events");
                    RETRY_AFTER
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
