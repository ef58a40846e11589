//! Records delivered webhook deliveries in bursts. Requests end together
//! (a claim starts up to a batch of them at once), so one statement per
//! burst replaces a statement and a commit per delivery. Until its burst
//! is written, a delivery stays locked by its dispatcher: if the write
//! never happens (the database is away), it is unlocked still pending and
//! sent again with the same `webhook-id`, which receivers deduplicate.

use std::time::Duration;

use platform::db::webhooks::{self, Attempt};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::dispatch::Done;

/// Most deliveries written by one statement.
const BURST: usize = 500;
/// Tries for one burst before it is left pending, to be sent again.
const TRIES: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(200);

pub type Delivered = (Uuid, Attempt);

/// Writes what arrives on `rx` until every sender is gone and the channel
/// is empty, so a clean shutdown loses nothing already delivered.
/// Each burst, written or not, goes to `done` to be unlocked.
pub async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Delivered>, done: Done) {
    let mut burst = Vec::with_capacity(BURST);
    while rx.recv_many(&mut burst, BURST).await > 0 {
        write(&pool, &burst).await;
        done.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(burst.iter().map(|(id, _)| *id));
        burst.clear();
    }
}

async fn write(pool: &PgPool, burst: &[Delivered]) {
    for attempt in 1..=TRIES {
        match webhooks::record_delivered(pool, burst).await {
            Ok(()) => {
                metrics::histogram!("webhook_settle_burst_size").record(burst.len() as f64);
                return;
            }
            Err(e) if attempt < TRIES => {
                tracing::debug!(error = %e, "settling webhook deliveries; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(e) => {
                metrics::counter!("scheduler_errors_total", "job" => "webhooks").increment(1);
                tracing::warn!(error = %e, deliveries = burst.len(),
                    "settling webhook deliveries failed; they will be sent again");
            }
        }
    }
}
