//! The leader's periodic duties, one module each, run in turn on every tick
//! while this instance leads:
//!
//! - `reconcile`: publishes again the records whose broker message is gone
//!   (every `RECONCILE_INTERVAL_SECONDS`);
//! - `periodic`: publishes the periodic tasks whose time has come;
//! - `retention`: deletes old message records, idempotency keys, requeued
//!   dead letters and lapsed worker leases (every
//!   `MAINTENANCE_INTERVAL_SECONDS`);
//! - `campaigns`: fires due campaigns and fans their runs out to the bulk
//!   queue.
//!
//! None relies on there being one leader: each records what it does under
//! row locks and unique keys in the transaction that does it, so a duty
//! interrupted by a crash, or run by two leaders for a moment, does nothing
//! twice.

mod campaigns;
mod periodic;
mod reconcile;
mod retention;

use std::time::Duration;

use platform::config::SchedulerSettings;
use platform::db::outbox;
use platform::outbox::OutboxWaker;
use platform::tasks::{send_email_batch_tasks, BatchMember};
use platform::Settings;
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the leader looks for due work.
const TICK: Duration = Duration::from_millis(200);
/// Campaigns or periodic tasks examined per firing transaction.
const FIRE_BATCH: i64 = 100;
/// A run time later than this is "missed" (the scheduler was down): a
/// campaign's missed-run policy applies, and a periodic task's missed times
/// are not made up.
const MISSED_GRACE: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Clone)]
pub struct Duties {
    pool: PgPool,
    settings: Settings,
    scheduler: SchedulerSettings,
    waker: OutboxWaker,
}

impl Duties {
    pub fn new(
        pool: PgPool,
        settings: Settings,
        scheduler: SchedulerSettings,
        waker: OutboxWaker,
    ) -> Self {
        Duties {
            pool,
            settings,
            scheduler,
            waker,
        }
    }

    /// Runs until `token` is cancelled (leadership lost, or shutdown).
    pub async fn run(self, token: CancellationToken) {
        // Maintenance first runs one interval after taking the lead.
        let mut maintained = Instant::now();
        let mut reconciled = Instant::now();
        while !token.is_cancelled() {
            if reconciled.elapsed() >= self.scheduler.reconcile_interval {
                reconciled = Instant::now();
                checked("reconcile", "reconciling", self.reconcile().await);
            }
            checked(
                "periodic",
                "publishing periodic tasks",
                self.fire_periodic_tasks().await,
            );
            if maintained.elapsed() >= self.scheduler.maintenance_interval {
                maintained = Instant::now();
                checked("maintenance", "maintenance", self.maintain(&token).await);
            }
            checked(
                "campaigns",
                "firing campaigns",
                self.fire_due_campaigns().await,
            );
            // Fan out until there is nothing left (or leadership is lost).
            while !token.is_cancelled() {
                let more = checked("fan_out", "campaign fan-out", self.fan_out_batch().await);
                if more != Some(true) {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = token.cancelled() => {}
            }
        }
    }
}

/// A duty's outcome; a failure is logged and counted (`job`), and the duty
/// runs again on a later tick.
fn checked<T>(job: &'static str, duty: &str, result: Result<T, sqlx::Error>) -> Option<T> {
    result
        .inspect_err(|e| {
            tracing::warn!(error = %e, "{duty} failed; will retry");
            metrics::counter!("scheduler_errors_total", "job" => job).increment(1);
        })
        .ok()
}

/// Writes the outbox rows that send recorded `emails` (record id, task id)
/// through `queue`: as the API does, one broker message per 50 emails, each
/// email keeping its own task id.
#[tracing::instrument(level = "debug", skip_all, fields(queue = %queue))]
async fn enqueue_sends<'a>(
    tx: &mut PgConnection,
    queue: &str,
    emails: impl IntoIterator<Item = (Uuid, &'a str)>,
) -> Result<(), sqlx::Error> {
    let members: Vec<BatchMember> = emails
        .into_iter()
        .map(|(message_id, task_id)| {
            tracing::debug!(%message_id, task_id, "email enqueued");
            BatchMember {
                message_id,
                task_id: task_id.to_string(),
            }
        })
        .collect();
    outbox::enqueue_many(tx, queue, queue, &send_email_batch_tasks(&members)).await
}
