//! Campaigns: fires each campaign whose time has come (its cron schedule
//! in its time zone, with its missed-run policy) by recording a run, and
//! fans running runs out to the bulk queue, a batch of members per
//! transaction.
//!
//! Firing inserts the run row (unique on campaign and scheduled time) under
//! the campaign's row lock in the transaction that moves `next_run_at` on,
//! and each fan-out batch locks its run row and advances the run's cursor
//! in the transaction that records the batch's messages and outbox rows. A
//! run interrupted by a crash goes on from its cursor under the next
//! leader.

use chrono::{DateTime, Utc};
use platform::db::campaigns::{self, Campaign, Run};
use platform::db::{lists, messages, suppressions, templates};
use platform::schedule::CronSchedule;
use platform::templating::{self, Sources};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{enqueue_sends, Duties, FIRE_BATCH, MISSED_GRACE};

impl Duties {
    /// Records a run for each campaign whose time has come and moves its
    /// `next_run_at` on, in one transaction.
    #[tracing::instrument(level = "debug", skip_all)]
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
    #[tracing::instrument(level = "debug", skip_all,
        fields(run = tracing::field::Empty, campaign = tracing::field::Empty))]
    pub async fn fan_out_batch(&self) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let Some(run) = campaigns::lock_running(&mut tx).await? else {
            return Ok(false);
        };
        let span = tracing::Span::current();
        span.record("run", tracing::field::display(run.id));
        span.record("campaign", tracing::field::display(run.campaign_id));
        let Some(campaign) = campaigns::get(&mut *tx, run.campaign_id).await? else {
            campaigns::fail_run(&mut *tx, run.id, "the campaign was deleted").await?;
            tx.commit().await?;
            return Ok(true);
        };
        let Some(template) = templates::get(&mut *tx, campaign.template_id, None).await? else {
            campaigns::fail_run(&mut *tx, run.id, "the campaign's template was deleted").await?;
            tx.commit().await?;
            return Ok(true);
        };
        let batch = self.scheduler.campaign_batch;
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
            let (id, task_id) = (Uuid::now_v7(), Uuid::new_v4().to_string());
            // Each email's own span: what is logged of it names it.
            let email =
                tracing::debug_span!("campaign_email", message_id = %id, task_id = %task_id);
            let variables = member_variables(
                &template.variables,
                &campaign,
                &member.variables.0,
                &member.address,
            );
            let rendered = match email.in_scope(|| renderer.render(&variables)) {
                Ok(r) => r,
                Err(e) if e.is_limit() => {
                    // The template itself runs away (its loops or output):
                    // every member would meet it, so the run fails, named.
                    let reason = format!("the template exceeds a rendering limit: {e}");
                    tracing::warn!(run = %run.id, %reason, "campaign run failed");
                    campaigns::fail_run(&mut *tx, run.id, &reason).await?;
                    tx.commit().await?;
                    return Ok(true);
                }
                Err(e) => {
                    email.in_scope(|| {
                        tracing::debug!(run = %run.id, member = member.id, error = %e, "member skipped")
                    });
                    skipped += 1;
                    continue;
                }
            };
            email.in_scope(|| tracing::debug!(member = member.id, "campaign email rendered"));
            let message = messages::CampaignMessage {
                id,
                task_id,
                to: member.address.clone(),
                subject: rendered.subject,
                html_body: rendered.html,
                text_body: rendered.text,
            };
            batch_messages.push(message);
        }
        let recipients = i32::try_from(batch_messages.len()).unwrap_or(i32::MAX);
        messages::insert_campaign_messages(
            &mut *tx,
            campaign.id,
            run.id,
            campaign.unsubscribe_scope(),
            &batch_messages,
        )
        .await?;
        let emails = batch_messages.iter().map(|m| (m.id, m.task_id.as_str()));
        enqueue_sends(&mut tx, &bulk, emails).await?;
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
            unsubscribe_scope: "list".into(),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// When every campaign of these tests is due.
    const DUE: &str = "2026-01-01T10:00:00Z";

    /// What `decide` makes at `now` of a campaign on `cron` due at [`DUE`].
    fn decided(
        cron: &str,
        policy: &str,
        now: &str,
    ) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let c = campaign(cron, t(DUE), policy);
        let s = CronSchedule::parse(&c.cron, &c.time_zone).unwrap();
        decide(&c, Some(&s), t(now))
    }

    #[test]
    fn on_time_fires_the_due_time_and_moves_on() {
        let (fire, next) = decided("0 * * * *", "skip", "2026-01-01T10:00:01Z");
        assert_eq!(fire, Some(t("2026-01-01T10:00:00Z")));
        assert_eq!(next, Some(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn a_few_seconds_late_fires_each_time_in_turn() {
        let (fire, next) = decided("*/5 * * * * *", "skip", "2026-01-01T10:00:07Z");
        assert_eq!(fire, Some(t("2026-01-01T10:00:00Z")));
        assert_eq!(next, Some(t("2026-01-01T10:00:05Z")), "10:00:05 not lost");
    }

    #[test]
    fn missed_runs_are_skipped_or_run_once() {
        let now = "2026-01-01T13:30:00Z";
        assert_eq!(
            decided("0 * * * *", "skip", now),
            (None, Some(t("2026-01-01T14:00:00Z")))
        );
        assert_eq!(
            decided("0 * * * *", "run_once", now),
            (
                Some(t("2026-01-01T13:00:00Z")),
                Some(t("2026-01-01T14:00:00Z"))
            )
        );
    }
}
