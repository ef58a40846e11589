//! The reconciler: publishes again the records whose broker message is gone.
//!
//! A message can leave RabbitMQ without an outcome: an operator purges or
//! deletes a queue, a node holding an unreplicated classic queue is lost.
//! Its record then stays `queued` (or `sending`, under a dead claimant)
//! forever. The leader looks for records left well past their due time
//! and publishes a fresh task for each through the outbox, but only for a
//! queue that holds no ready messages: a record whose message still waits
//! behind a backlog is slow, not lost. Should a message still turn up
//! after all, the second copy costs one extra delivery and never a second
//! email: the record's claim lets one copy through.

use chrono::Utc;
use platform::broker;
use platform::db::{messages, outbox};
use platform::Settings;

use super::{enqueue_sends, Duties};

/// The relay is behind when its oldest row is older than this: the broker
/// is down or the relay stuck, and publishing again would only add rows.
const RELAY_BEHIND: chrono::Duration = chrono::Duration::seconds(60);

impl Duties {
    /// Publishes again up to a batch of stray records; returns how many.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn reconcile(&self) -> Result<usize, sqlx::Error> {
        let (pool, settings, scheduler) = (&self.pool, &self.settings, &self.scheduler);
        if let Some(oldest) = outbox::oldest(pool).await? {
            if Utc::now() - oldest > RELAY_BEHIND {
                tracing::info!(%oldest, "outbox relay is behind; reconciling later");
                metrics::counter!("reconciler_skipped_total").increment(1);
                return Ok(0);
            }
        }
        let Some(idle) = idle_queues(settings).await else {
            metrics::counter!("reconciler_skipped_total").increment(1);
            return Ok(0);
        };
        let limit = settings.task_time_limit + std::time::Duration::from_secs(5);
        let stale_before = Utc::now() - chrono::Duration::from_std(limit).unwrap_or_default();
        let mut tx = pool.begin().await?;
        let strays = messages::take_strays(
            &mut tx,
            scheduler.reconcile_after,
            stale_before,
            idle,
            scheduler.reconcile_batch,
        )
        .await?;
        if strays.is_empty() {
            return Ok(0);
        }
        let queues = &settings.queues;
        for (bulk, queue) in [(false, queues.tasks.clone()), (true, queues.bulk())] {
            let emails = strays
                .iter()
                .filter(|s| s.bulk == bulk)
                .map(|s| (s.id, s.task_id.as_str()));
            enqueue_sends(&mut tx, &queue, emails).await?;
        }
        tx.commit().await?;
        self.waker.wake();
        for stray in &strays {
            tracing::debug!(message_id = %stray.id, task_id = %stray.task_id, "published again");
        }
        tracing::warn!(
            count = strays.len(),
            "records left past their due time with no broker message seen; published again"
        );
        metrics::counter!("reconciler_republished_total").increment(strays.len() as u64);
        Ok(strays.len())
    }
}

/// Whether the task queue and the bulk queue hold no ready messages
/// (`None` when RabbitMQ cannot be asked: nothing published now could be
/// relayed anyway). A queue that does is still draining a backlog.
#[tracing::instrument(level = "debug", skip_all)]
async fn idle_queues(settings: &Settings) -> Option<messages::IdleQueues> {
    let conn = match broker::connect(settings, "notify-reconciler").await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::info!(error = %e, "cannot ask RabbitMQ for queue depths; reconciling later");
            return None;
        }
    };
    let mut ready = Vec::new();
    for queue in settings.queues.consumed() {
        // A queue not declared yet holds nothing.
        let found = broker::inspect_queue(&conn, &queue).await.ok().flatten();
        ready.push(found.map_or(0, |(messages, _)| messages));
    }
    broker::close(&conn, 200, "reconciler done").await;
    Some(messages::IdleQueues {
        tasks: ready.first() == Some(&0),
        bulk: ready.get(1) == Some(&0),
    })
}
