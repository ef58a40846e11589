//! The pipeline: send tasks that arrived together, taken through the
//! stages together. Each is prepared on its own (a Python producer's email
//! is recorded first); then quota is reserved and records are claimed
//! with one statement for all. The SMTP transactions then run
//! concurrently over the pooled connections, and each is settled as it
//! finishes, with those that finished about the same time
//! ([`super::sending`]): a slow send does not hold up the others' acks,
//! nor their slots. A single send is a group of one: there is no other
//! path.
//!
//! The record moves `queued → sending → sent|failed` and the delivery is
//! acknowledged only after the outcome is committed. A redelivered or
//! duplicated task finds the record `sending` or final and sends nothing.
//!
//! What remains ambiguous: a worker that dies during the SMTP transaction
//! leaves the record `sending` with no outcome. RabbitMQ redelivers the
//! task; once the worker's liveness lease has lapsed, or the hard time
//! limit has passed (so the first attempt cannot still be running), it is
//! sent again, with the same Message-ID. Only if the worker died between
//! the server's acceptance of DATA and the commit of `sent` (a window of
//! milliseconds) does the recipient get two copies, which carry one
//! Message-ID and are commonly merged by receivers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use platform::celery::TaskMessage;
use platform::db::attachments;
use platform::db::messages::{self, Claimed, MessageStatus};
use uuid::Uuid;

use super::admit::{self, Cause, Seat, Wait};
use super::domains;
use super::policy::refuse;
use super::prepare::{prepare, Prepared};
use super::sending::{self, ClaimedGroup, Work};
use crate::context::Context;
use crate::domain_throttle::Pass;
use crate::outcome::{Outcome, RunError};
use crate::registry::Report;

/// Delivers send tasks that arrived together, reporting each task's
/// result as soon as it is settled.
pub async fn deliver(ctx: &Context, messages: &[&TaskMessage], report: Report) {
    let prepared = join_all(messages.iter().map(|m| prepare(ctx, m))).await;
    let mut group: Vec<(usize, Uuid)> = Vec::new();
    for (i, prepared) in prepared.into_iter().enumerate() {
        match prepared {
            Ok(Prepared::Record(id)) => group.push((i, id)),
            Ok(Prepared::Refused { reason, recorded }) => {
                report.ran(i, Ok(refuse(ctx, messages[i], &reason, recorded).await));
            }
            Err(e) => report.ran(i, Err(RunError::from(e))),
        }
    }
    let indices: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
    let members: Vec<(Uuid, &TaskMessage)> =
        group.iter().map(|(i, id)| (*id, messages[*i])).collect();
    deliver_records(ctx, &members, &report.subset(&indices)).await;
}

/// Runs the group's stages; when the database refuses a statement for the
/// group before anything was sent (one message's data, not the
/// database), each message goes its own way, so that the bad one fails
/// alone.
async fn deliver_records(ctx: &Context, members: &[(Uuid, &TaskMessage)], report: &Report) {
    if members.is_empty() {
        return;
    }
    match stages(ctx, members, report).await {
        Ok(()) => {}
        Err(e) if members.len() > 1 && !platform::db::is_transient(&e) => {
            tracing::warn!(error = %e, "the database refused a group; running its tasks one by one");
            join_all(members.iter().enumerate().map(|(i, member)| {
                let report = report.subset(&[i]);
                async move {
                    if let Err(e) = stages(ctx, std::slice::from_ref(member), &report).await {
                        report.ran(0, Err(RunError::from(e)));
                    }
                }
            }))
            .await;
        }
        Err(e) => {
            if platform::db::is_transient(&e) {
                tracing::warn!(error = %e, "database unavailable; the tasks go back to the queue");
            }
            let error = RunError::from(e);
            for i in 0..members.len() {
                report.ran(i, Err(error.clone()));
            }
        }
    }
}

/// Admit and claim; then, if that went through, attempt and settle.
/// Returns an error only from the first two, before any member is
/// reported (the caller reports them all); from then on each member is
/// reported as it is settled.
async fn stages(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    report: &Report,
) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let mut outcomes: Vec<Option<Outcome>> = group.iter().map(|_| None).collect();
    // The same record twice in one group (a task published twice): the
    // first copy carries it, the others are acknowledged as duplicates.
    let mut seen = HashSet::new();
    let mut unique: Vec<usize> = Vec::new();
    for (i, (id, _)) in group.iter().enumerate() {
        if seen.insert(*id) {
            unique.push(i);
        } else {
            outcomes[i] = Some(Outcome::Done);
        }
    }

    // The recipient domains' throttles first: a send its domain holds
    // back takes no quota and waits, and the group's other sends go on.
    let domains::DomainGate { mut passes, held } = domains::admit(ctx, group, &unique).await?;
    let claimed = admitted(ctx, group, &unique, &mut passes, held, &mut outcomes).await;
    // Places taken for sends that were not made (an error on the way).
    domains::give_back(ctx, passes.into_values().collect()).await;
    let claimed = claimed?;

    let sending: HashSet<usize> = claimed
        .iter()
        .flat_map(|c| c.work.iter().map(|w| w.i))
        .collect();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        if !sending.contains(&i) {
            report.ran(i, Ok(outcome.unwrap_or(Outcome::Done)));
        }
    }
    report.sending();
    if let Some(claimed) = claimed {
        tracing::debug!(
            group = group.len(),
            sending = claimed.work.len(),
            prepare_ms = started.elapsed().as_millis() as u64,
            "group claimed"
        );
        sending::send(ctx, group, claimed, report).await;
    }
    Ok(())
}

/// The stages after the domains' throttles: quota and claim. `passes`
/// holds what each admitted member took from its domains; a claimed
/// member's goes with it. The claimed members, if any.
async fn admitted(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    unique: &[usize],
    passes: &mut HashMap<usize, Pass>,
    held: Vec<(usize, Wait)>,
    outcomes: &mut [Option<Outcome>],
) -> Result<Option<ClaimedGroup>, sqlx::Error> {
    let candidates: Vec<usize> = unique
        .iter()
        .copied()
        .filter(|i| !held.iter().any(|(h, _)| h == i))
        .collect();
    // Quota before the claim (which names the account). A seat the claim
    // does not use (a redelivered message already sent, one another
    // delivery holds, one cancelled) is given back.
    let today = platform::today(&ctx.settings);
    let admit::Admission {
        accounts,
        seats,
        wait,
    } = admit::reserve(ctx, today, candidates.len()).await?;
    let seated: Vec<(usize, Seat)> = candidates.iter().copied().zip(seats).collect();
    let unseated = &candidates[seated.len()..];
    let mut waiting: Vec<(usize, Wait)> = held;
    if !unseated.is_empty() {
        let wait = wait.unwrap_or_else(|| Wait {
            delay: ctx.settings.quota_wait,
            reason: "quota: waiting for an SMTP account with quota left".into(),
            cause: Cause::Quota,
        });
        waiting.extend(unseated.iter().map(|&i| (i, wait.clone())));
    }
    // A claim older than the hard time limit belongs to a worker that died
    // mid-send, whatever its lease says; younger ones may still be in flight.
    let hard_limit = ctx.settings.task_time_limit + Duration::from_secs(5);
    let stale_before = Utc::now() - chrono::Duration::from_std(hard_limit).unwrap_or_default();
    let mut claimed: HashMap<Uuid, Claimed> = if seated.is_empty() {
        HashMap::new()
    } else {
        let account = |seat: &Seat| &accounts[seat.account];
        messages::claim(
            &ctx.pool,
            &seated.iter().map(|(i, _)| group[*i].0).collect::<Vec<_>>(),
            &seated
                .iter()
                .map(|(_, s)| account(s).id)
                .collect::<Vec<_>>(),
            &seated
                .iter()
                .map(|(_, s)| account(s).email.clone())
                .collect::<Vec<_>>(),
            stale_before,
            ctx.liveness.id(),
        )
        .await?
        .into_iter()
        .map(|c| (c.record.id, c))
        .collect()
    };
    let mut work: Vec<Work> = Vec::new();
    let mut spare: Vec<Seat> = Vec::new();
    let mut unclaimed: Vec<usize> = Vec::new();
    for (i, seat) in seated {
        match claimed.remove(&group[i].0) {
            Some(claimed) => work.push(Work {
                i,
                // Taken from `passes` once nothing more can fail here, so
                // that an error gives every place back.
                pass: None,
                claimed,
                seat,
                files: Vec::new(),
            }),
            None => {
                spare.push(seat);
                unclaimed.push(i);
            }
        }
    }
    admit::give_back(ctx, today, &accounts, spare).await?;
    // The domain places of sends that will not be made now, at once.
    let unused: Vec<Pass> = unclaimed
        .iter()
        .chain(unseated)
        .filter_map(|i| passes.remove(i))
        .collect();
    domains::give_back(ctx, unused).await;
    if !unclaimed.is_empty() || !waiting.is_empty() {
        not_sent(ctx, group, &unclaimed, &waiting, stale_before, outcomes).await?;
    }
    if work.is_empty() {
        return Ok(None);
    }

    for w in work.iter().filter(|w| w.claimed.reclaimed) {
        tracing::warn!(message_id = %w.claimed.record.id, "the worker that was sending it is gone or passed the hard time limit; sending again with the same Message-ID");
        metrics::counter!("emails_interrupted_total").increment(1);
    }
    // Attachments are read only for the messages that have some.
    let with_files: Vec<Uuid> = work
        .iter()
        .filter(|w| w.claimed.has_attachments)
        .map(|w| w.claimed.record.id)
        .collect();
    if !with_files.is_empty() {
        let mut files = attachments::for_messages(&ctx.pool, &with_files).await?;
        for w in &mut work {
            w.files = files.remove(&w.claimed.record.id).unwrap_or_default();
        }
    }
    for w in &mut work {
        w.pass = passes.remove(&w.i);
    }
    Ok(Some(ClaimedGroup {
        today,
        accounts,
        work,
    }))
}

/// The outcomes of members that were not claimed (`unclaimed`: seated,
/// but their record was not claimable) or cannot be sent now (`waiting`:
/// no account could take them, or their domain holds them back; each with
/// its wait), from their records' state.
async fn not_sent(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    unclaimed: &[usize],
    waiting_for: &[(usize, Wait)],
    stale_before: DateTime<Utc>,
    outcomes: &mut [Option<Outcome>],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = unclaimed
        .iter()
        .chain(waiting_for.iter().map(|(i, _)| i))
        .map(|i| group[*i].0)
        .collect();
    let records: HashMap<Uuid, messages::MessageRecord> = messages::get_many(&ctx.pool, &ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut waiting: Vec<(usize, &Wait)> = Vec::new();
    for (&i, wait) in unclaimed
        .iter()
        .map(|i| (i, None))
        .chain(waiting_for.iter().map(|(i, w)| (i, Some(w))))
    {
        let (id, message) = group[i];
        let Some(record) = records.get(&id) else {
            let reason = format!("message {id} does not exist");
            outcomes[i] = Some(refuse(ctx, message, &reason, false).await);
            continue;
        };
        outcomes[i] = Some(match (record.status(), wait) {
            (MessageStatus::Sending, _) => {
                let since = record.sending_at.unwrap_or(record.updated_at);
                let lease = if since >= stale_before {
                    messages::claimant_lease(&ctx.pool, record).await?
                } else {
                    None
                };
                match (lease, wait) {
                    // Its claimant is alive and may still be sending: look
                    // again once its lease could have lapsed (or the hard
                    // time limit passed).
                    (Some(left), _) => {
                        let limit = (since - stale_before).to_std().unwrap_or_default();
                        Outcome::Later {
                            delay: limit.min(left) + Duration::from_secs(1),
                        }
                    }
                    // Abandoned, but it cannot be sent now.
                    (None, Some(wait)) => {
                        waiting.push((i, wait));
                        continue;
                    }
                    // Abandoned since the claim a moment ago: look again soon.
                    (None, _) => Outcome::Later {
                        delay: Duration::from_secs(1),
                    },
                }
            }
            (MessageStatus::Queued, Some(wait)) => {
                waiting.push((i, wait));
                continue;
            }
            // Handled by an earlier delivery of this task (or by another
            // delivery just now), or cancelled, suppressed, scheduled.
            _ => Outcome::Done,
        });
    }
    if waiting.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = waiting.iter().map(|(i, _)| group[*i].0).collect();
    let reasons: Vec<String> = waiting.iter().map(|(_, w)| w.reason.clone()).collect();
    let delays: Vec<Duration> = waiting.iter().map(|(_, w)| w.delay).collect();
    messages::note_waiting(&ctx.pool, &ids, &reasons, &delays).await?;
    for (i, wait) in waiting {
        count_wait(wait);
        if matches!(wait.cause, Cause::Domain { .. }) {
            // A throttled domain's backlog comes back often: not info.
            tracing::debug!(task_id = group[i].1.id(), message_id = %group[i].0, retry_in = ?wait.delay, why = %wait.reason, "message waits");
        } else {
            tracing::info!(task_id = group[i].1.id(), message_id = %group[i].0, retry_in = ?wait.delay, why = %wait.reason, "message waits");
        }
        outcomes[i] = Some(Outcome::Later { delay: wait.delay });
    }
    Ok(())
}

/// Counts a wait by what it waits for.
fn count_wait(wait: &Wait) {
    match &wait.cause {
        Cause::Quota | Cause::AccountThrottle => {
            metrics::counter!("emails_waiting_for_quota_total").increment(1);
        }
        Cause::Domain { domain, limit } => {
            metrics::counter!("emails_waiting_for_domain_total",
                "domain" => domain.clone(), "limit" => limit.label())
            .increment(1);
            metrics::histogram!("domain_throttle_wait_seconds", "domain" => domain.clone())
                .record(wait.delay.as_secs_f64());
        }
        Cause::DomainUnavailable => {
            metrics::counter!("emails_waiting_for_domain_total",
                "domain" => "", "limit" => "unavailable")
            .increment(1);
        }
    }
}
