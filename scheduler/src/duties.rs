//! The leader's periodic duties: firing due campaigns and fanning their runs
//! out to the bulk queue.
//!
//! Neither relies on there being one leader: firing inserts the run row
//! (unique on campaign and scheduled time) under the campaign's row lock in
//! the transaction that moves `next_run_at` on, and each fan-out batch locks
//! its run row and advances the run's cursor in the transaction that records
//! the batch's messages and outbox rows. A run interrupted by a crash goes on
//! from its cursor under the next leader.

use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::celery::TaskMessage;
use platform::db::campaigns::{self, Campaign, Run};
use platform::db::periodic_tasks::{self, PeriodicTask};
use platform::db::{lists, maintenance, messages, outbox, suppressions, templates};
use platform::outbox::OutboxWaker;
use platform::schedule::CronSchedule;
use platform::tasks::{send_email_batch_tasks, BatchMember};
use platform::templating::{self, Sources};
use platform::Settings;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the leader looks for due work.
const TICK: Duration = Duration::from_millis(200);
/// Campaigns examined per firing transaction.
const FIRE_BATCH: i64 = 100;
/// A run time later than this is "missed" (the scheduler was down), and the
/// campaign's missed-run policy applies.
const MISSED_GRACE: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Clone)]
pub struct Duties {
    pool: PgPool,
    settings: Settings,
    waker: OutboxWaker,
}

impl Duties {
    pub fn new(pool: PgPool, settings: Settings, waker: OutboxWaker) -> Self {
        Duties {
            pool,
            settings,
            waker,
        }
    }

    /// Runs until `token` is cancelled (leadership lost, or shutdown).
    pub async fn run(self, token: CancellationToken) {
        // Maintenance first runs one interval after taking the lead.
        let mut maintained = tokio::time::Instant::now();
        let mut reconciled = tokio::time::Instant::now();
        while !token.is_cancelled() {
            if reconciled.elapsed() >= self.settings.scheduler.reconcile_interval {
                reconciled = tokio::time::Instant::now();
                if let Err(e) =
                    crate::reconcile::run_once(&self.pool, &self.settings, &self.waker).await
                {
                    tracing::warn!(error = %e, "reconciling failed; will retry");
                    metrics::counter!("scheduler_errors_total", "job" => "reconcile").increment(1);
                }
            }
            if let Err(e) = self.fire_periodic_tasks().await {
                tracing::warn!(error = %e, "publishing periodic tasks failed; will retry");
                metrics::counter!("scheduler_errors_total", "job" => "periodic").increment(1);
            }
            if maintained.elapsed() >= self.settings.scheduler.maintenance_interval {
                maintained = tokio::time::Instant::now();
                if let Err(e) = self.maintain(&token).await {
                    tracing::warn!(error = %e, "maintenance failed; will retry");
                    metrics::counter!("scheduler_errors_total", "job" => "maintenance")
                        .increment(1);
                }
            }
            if let Err(e) = self.fire_due_campaigns().await {
                tracing::warn!(error = %e, "firing campaigns failed; will retry");
                metrics::counter!("scheduler_errors_total", "job" => "campaigns").increment(1);
            }
            // Fan out until there is nothing left (or leadership is lost).
            loop {
                if token.is_cancelled() {
                    return;
                }
                match self.fan_out_batch().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "campaign fan-out failed; will retry");
                        metrics::counter!("scheduler_errors_total", "job" => "fan_out")
                            .increment(1);
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = token.cancelled() => {}
            }
        }
    }

    /// Publishes each periodic task whose time has come through the outbox
    /// and moves its `next_run_at` on, in one transaction; the run row
    /// (unique on task and time) makes a due time publish once.
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

    /// Retention: deletes old finished message records, old idempotency keys
    /// and requeued dead letters, in small batches (each its own statement,
    /// so locks are short).
    pub async fn maintain(&self, token: &CancellationToken) -> Result<(), sqlx::Error> {
        let s = &self.settings.scheduler;
        let jobs: [(&str, maintenance::Job); 3] = [
            (
                "message_records",
                maintenance::Job::Messages {
                    days: s.message_retention_days,
                },
            ),
            (
                "idempotency_keys",
                maintenance::Job::IdempotencyKeys {
                    hours: s.idempotency_retention_hours,
                },
            ),
            (
                "dead_letters",
                maintenance::Job::RequeuedDeadLetters {
                    days: s.message_retention_days,
                },
            ),
        ];
        for (table, job) in jobs {
            let mut total = 0;
            loop {
                if token.is_cancelled() {
                    return Ok(());
                }
                let n = maintenance::delete_batch(&self.pool, job, s.maintenance_batch).await?;
                total += n;
                if (n as i64) < s.maintenance_batch {
                    break;
                }
            }
            if total > 0 {
                tracing::info!(table, deleted = total, "retention cleanup");
                metrics::counter!("scheduler_retention_deleted_total", "table" => table)
                    .increment(total);
            }
        }
        let pruned = platform::db::worker_leases::prune(&self.pool).await?;
        if pruned > 0 {
            tracing::info!(pruned, "lapsed worker leases removed");
        }
        Ok(())
    }

    /// Records a run for each campaign whose time has come and moves its
    /// `next_run_at` on, in one transaction.
    pub async fn fire_due_campaigns(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let due = campaigns::lock_due(&mut tx, FIRE_BATCH).await?;
        let now = Utc::now();
        let mut fired = 0;
        for campaign in &due {
            let schedule = CronSchedule::parse(&campaign.cron, &campaign.time_zone).ok();
            let (fire_at, next) = decide(campaign, schedule.as_ref(), now);
            if let Some(at) = fire_at {
                if campaigns::insert_run(&mut *tx, campaign.id, at, "schedule")
                    .await?
                    .is_some()
                {
                    fired += 1;
                    tracing::info!(campaign = %campaign.id, scheduled_for = %at, "campaign run fired");
                    metrics::counter!("scheduler_campaign_runs_total").increment(1);
                }
            }
            campaigns::set_next_run(&mut *tx, campaign.id, next).await?;
        }
        tx.commit().await?;
        Ok(fired)
    }

    /// Enqueues the next batch of one running run; `false` when no run is
    /// waiting.
    pub async fn fan_out_batch(&self) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let Some(run) = campaigns::lock_running(&mut tx).await? else {
            return Ok(false);
        };
        let Some(campaign) = campaigns::get(&mut *tx, run.campaign_id).await? else {
            campaigns::fail_run(&mut *tx, run.id, "the campaign was deleted").await?;
            tx.commit().await?;
            return Ok(true);
        };
        let Some(template) = templates::get(&mut *tx, campaign.template_id).await? else {
            campaigns::fail_run(&mut *tx, run.id, "the campaign's template was deleted").await?;
            tx.commit().await?;
            return Ok(true);
        };
        let batch = self.settings.scheduler.campaign_batch;
        let members =
            lists::audience_after(&mut *tx, &campaign.list_ids, run.last_member_id, batch).await?;
        let addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
        let suppressed = suppressions::suppressed_among(&mut *tx, &addresses).await?;
        let sources = Sources {
            subject: &template.subject,
            html: &template.html_body,
            text: template.text_body.as_deref(),
        };
        let renderer = match templating::Renderer::new(&sources, &template.variables) {
            Ok(r) => r,
            Err(e) => {
                campaigns::fail_run(&mut *tx, run.id, &format!("the template is invalid: {e}"))
                    .await?;
                tx.commit().await?;
                return Ok(true);
            }
        };
        let bulk = self.settings.queues.bulk();
        let (mut skipped, mut suppressed_count) = (0i32, 0i32);
        let mut batch_messages = Vec::with_capacity(members.len());
        for member in &members {
            if suppressed.contains(&member.address.to_lowercase()) {
                suppressed_count += 1;
                continue;
            }
            let variables = member_variables(
                &template.variables,
                &campaign,
                &member.variables.0,
                &member.address,
            );
            let rendered = match renderer.render(&variables) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(run = %run.id, member = member.id, error = %e, "member skipped");
                    skipped += 1;
                    continue;
                }
            };
            let message = messages::CampaignMessage {
                id: Uuid::now_v7(),
                task_id: Uuid::new_v4().to_string(),
                to: member.address.clone(),
                subject: rendered.subject,
                html_body: rendered.html,
                text_body: rendered.text,
            };
            batch_messages.push(message);
        }
        let recipients = i32::try_from(batch_messages.len()).unwrap_or(i32::MAX);
        messages::insert_campaign_messages(&mut *tx, campaign.id, run.id, &batch_messages).await?;
        // As the API does: one broker message per 50 emails, each email
        // keeping its own task id.
        let emails: Vec<BatchMember> = batch_messages
            .iter()
            .map(|m| BatchMember {
                message_id: m.id,
                task_id: m.task_id.clone(),
            })
            .collect();
        let tasks = send_email_batch_tasks(&emails);
        outbox::enqueue_many(&mut *tx, &bulk, &bulk, &tasks).await?;
        let done = (members.len() as i64) < batch;
        let last = members.last().map_or(run.last_member_id, |m| m.id);
        campaigns::advance_run(
            &mut *tx,
            run.id,
            last,
            recipients,
            suppressed_count,
            skipped,
            done,
        )
        .await?;
        tx.commit().await?;
        if recipients > 0 {
            self.waker.wake();
        }
        metrics::counter!("scheduler_campaign_messages_total").increment(recipients as u64);
        if done {
            log_done(&run);
        }
        Ok(true)
    }
}

fn log_done(run: &Run) {
    tracing::info!(run = %run.id, campaign = %run.campaign_id, "campaign run fanned out");
}

/// The variables a member's email is rendered with: for each declared
/// variable, the member's value, else the campaign's, else (for `email`)
/// the member's address. Extra member variables are ignored.
fn member_variables(
    declared: &[String],
    campaign: &Campaign,
    member: &Map<String, Value>,
    address: &str,
) -> Map<String, Value> {
    declared
        .iter()
        .filter_map(|name| {
            let value = member
                .get(name)
                .or_else(|| campaign.variables.0.get(name))
                .cloned()
                .or_else(|| (name == "email").then(|| Value::String(address.to_string())))?;
            Some((name.clone(), value))
        })
        .collect()
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

/// For a due campaign: the time to fire (if any) and the next run time.
/// On time (within the grace period) the due time fires. Missed times
/// (the scheduler was down) fire once, as the latest of them, with
/// `run_once`, and not at all with `skip`.
pub fn decide(
    campaign: &Campaign,
    schedule: Option<&CronSchedule>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let (Some(due), Some(schedule)) = (campaign.next_run_at, schedule) else {
        return (None, None);
    };
    if now - due <= MISSED_GRACE {
        // On time, or a little late: the times after `due` follow one by
        // one (each fires on a later tick while within the grace period).
        let next = schedule.next_within(due, campaign.starts_at, campaign.ends_at);
        return (Some(due), next);
    }
    let next = schedule.next_within(now, campaign.starts_at, campaign.ends_at);
    if campaign.missed_run_policy != "run_once" {
        return (None, next);
    }
    // The latest missed time (at most a day of steps; beyond that, `due`).
    let mut latest = due;
    for _ in 0..86_400 {
        match schedule.next_after(latest) {
            Some(t) if t <= now => latest = t,
            _ => break,
        }
    }
    (Some(latest), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(cron: &str, due: DateTime<Utc>, policy: &str) -> Campaign {
        Campaign {
            id: Uuid::nil(),
            name: "c".into(),
            template_id: Uuid::nil(),
            list_ids: Vec::new(),
            variables: sqlx::types::Json(Map::new()),
            cron: cron.into(),
            time_zone: "UTC".into(),
            starts_at: None,
            ends_at: None,
            is_active: true,
            missed_run_policy: policy.into(),
            next_run_at: Some(due),
            created_at: due,
            updated_at: due,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn on_time_fires_the_due_time_and_moves_on() {
        let c = campaign("0 * * * *", t("2026-01-01T10:00:00Z"), "skip");
        let s = CronSchedule::parse(&c.cron, &c.time_zone).unwrap();
        let (fire, next) = decide(&c, Some(&s), t("2026-01-01T10:00:01Z"));
        assert_eq!(fire, Some(t("2026-01-01T10:00:00Z")));
        assert_eq!(next, Some(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn a_few_seconds_late_fires_each_time_in_turn() {
        let c = campaign("*/5 * * * * *", t("2026-01-01T10:00:00Z"), "skip");
        let s = CronSchedule::parse(&c.cron, &c.time_zone).unwrap();
        let (fire, next) = decide(&c, Some(&s), t("2026-01-01T10:00:07Z"));
        assert_eq!(fire, Some(t("2026-01-01T10:00:00Z")));
        assert_eq!(next, Some(t("2026-01-01T10:00:05Z")), "10:00:05 not lost");
    }

    #[test]
    fn missed_runs_are_skipped_or_run_once() {
        let now = t("2026-01-01T13:30:00Z");
        let skip = campaign("0 * * * *", t("2026-01-01T10:00:00Z"), "skip");
        let s = CronSchedule::parse(&skip.cron, &skip.time_zone).unwrap();
        assert_eq!(
            decide(&skip, Some(&s), now),
            (None, Some(t("2026-01-01T14:00:00Z")))
        );
        let once = campaign("0 * * * *", t("2026-01-01T10:00:00Z"), "run_once");
        assert_eq!(
            decide(&once, Some(&s), now),
            (
                Some(t("2026-01-01T13:00:00Z")),
                Some(t("2026-01-01T14:00:00Z"))
            )
        );
    }
}
