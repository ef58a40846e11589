//! Periodic tasks: publishes each Celery task whose time has come (a cron
//! expression in its time zone, or a fixed interval) through the outbox,
//! once per due time, and moves its next run on.

use chrono::{DateTime, Utc};
use platform::celery::TaskMessage;
use platform::db::outbox;
use platform::db::periodic_tasks::{self, PeriodicTask};
use platform::schedule::CronSchedule;
use uuid::Uuid;

use super::{Duties, FIRE_BATCH, MISSED_GRACE};

impl Duties {
    /// Publishes each periodic task whose time has come through the outbox
    /// and moves its `next_run_at` on, in one transaction; the run row
    /// (unique on task and time) makes a due time publish once.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn fire_periodic_tasks(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let due = periodic_tasks::lock_due(&mut tx, FIRE_BATCH).await?;
        let now = Utc::now();
        let mut published = 0;
        for task in &due {
            let Some(at) = task.next_run_at else { continue };
            let task_id = Uuid::new_v4().to_string();
            let mut ran = None;
            if periodic_tasks::insert_run(&mut *tx, task.id, at, &task_id).await? {
                let message = TaskMessage::new(
                    &task.task,
                    &task_id,
                    task.args.0.clone(),
                    task.kwargs.0.clone(),
                );
                outbox::enqueue(&mut *tx, &task.queue, &task.queue, &message).await?;
                tracing::debug!(task_id, task = %task.task, periodic = %task.id, "periodic task enqueued");
                published += 1;
                ran = Some(now);
                metrics::counter!("scheduler_periodic_published_total").increment(1);
            }
            periodic_tasks::advance(&mut *tx, task.id, ran, next_periodic(task, at, now)).await?;
        }
        tx.commit().await?;
        if published > 0 {
            self.waker.wake();
        }
        Ok(published)
    }
}

/// A periodic task's next run after publishing (or skipping) `due` at
/// `now`: the cron's next time after now, or `due` plus the interval (times
/// missed while no scheduler ran are not made up).
fn next_periodic(
    task: &PeriodicTask,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // A little late (within the grace period): the following times follow
    // one by one; later than that, they are not made up.
    let from = if now - due <= MISSED_GRACE { due } else { now };
    if let Some(cron) = &task.cron {
        return CronSchedule::parse(cron, &task.time_zone)
            .ok()?
            .next_after(from);
    }
    let every = chrono::Duration::seconds(i64::from(task.interval_seconds?));
    let next = due + every;
    Some(if next > from { next } else { now + every })
}
