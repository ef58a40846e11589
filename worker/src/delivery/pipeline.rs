//! The pipeline: send tasks that arrived together, taken through the
//! stages together. Each is prepared on its own (a Python producer's email
//! is recorded first); then quota is reserved, records are claimed and
//! successes recorded with one statement for all, while the SMTP
//! transactions run concurrently over the pooled connections. A single
//! send is a group of one: there is no other path.
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
use platform::celery::{TaskMessage, TaskState};
use platform::db::attachments;
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, Claimed, MessageStatus};
use tracing::Instrument;
use uuid::Uuid;

use super::admit::{self, Cause, Seat, Wait};
use super::attempt::{attempt, limits, Attempt, Extras};
use super::domains;
use super::policy::{refuse, settle_failure};
use super::prepare::{prepare, Prepared};
use super::settle::{persist, recovered, sent_result, started_result};
use crate::context::Context;
use crate::domain_throttle::Pass;
use crate::outcome::{Outcome, Ran, RunError};

/// Delivers send tasks that arrived together; one result per task, in
/// order.
pub async fn deliver(ctx: &Context, messages: &[&TaskMessage]) -> Vec<Ran> {
    let mut ran: Vec<Option<Ran>> = messages.iter().map(|_| None).collect();
    let prepared = join_all(messages.iter().map(|m| prepare(ctx, m))).await;
    let mut group: Vec<(usize, Uuid)> = Vec::new();
    for (i, prepared) in prepared.into_iter().enumerate() {
        match prepared {
            Ok(Prepared::Record(id)) => group.push((i, id)),
            Ok(Prepared::Refused { reason, recorded }) => {
                ran[i] = Some(Ok(refuse(ctx, messages[i], &reason, recorded).await));
            }
            Err(e) => ran[i] = Some(Err(RunError::from(e))),
        }
    }
    let members: Vec<(Uuid, &TaskMessage)> =
        group.iter().map(|(i, id)| (*id, messages[*i])).collect();
    for ((i, _), outcome) in group.iter().zip(deliver_records(ctx, &members).await) {
        ran[*i] = Some(outcome);
    }
    ran.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RunError::Unavailable("no result".into()))))
        .collect()
}

/// Runs the group's stages; when the database refuses a statement for the
/// group (one message's data, not the database), each message goes its own
/// way, so that the bad one fails alone.
async fn deliver_records(ctx: &Context, members: &[(Uuid, &TaskMessage)]) -> Vec<Ran> {
    if members.is_empty() {
        return Vec::new();
    }
    match stages(ctx, members).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if members.len() > 1 && !platform::db::is_transient(&e) => {
            tracing::warn!(error = %e, "the database refused a group; running its tasks one by one");
            join_all(members.iter().map(|member| async move {
                match stages(ctx, std::slice::from_ref(member)).await {
                    Ok(mut outcome) => Ok(outcome.remove(0)),
                    Err(e) => Err(RunError::from(e)),
                }
            }))
            .await
        }
        Err(e) => {
            if platform::db::is_transient(&e) {
                tracing::warn!(error = %e, "database unavailable; the tasks go back to the queue");
            }
            let error = RunError::from(e);
            members.iter().map(|_| Err(error.clone())).collect()
        }
    }
}

/// Admit, claim, attempt, settle: one outcome per member, in order.
async fn stages(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
) -> Result<Vec<Outcome>, sqlx::Error> {
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
    let result = admitted(ctx, group, &unique, &mut passes, held, outcomes, started).await;
    // Places taken for sends that were not made (an error on the way).
    domains::give_back(ctx, passes.into_values().collect()).await;
    result
}

/// The stages after the domains' throttles: quota, claim, attempt,
/// settle. `passes` holds what each admitted member took from its
/// domains; it is released (or given back) as the member is done with.
async fn admitted(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    unique: &[usize],
    passes: &mut HashMap<usize, Pass>,
    held: Vec<(usize, Wait)>,
    mut outcomes: Vec<Option<Outcome>>,
    started: Instant,
) -> Result<Vec<Outcome>, sqlx::Error> {
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
    let mut work: Vec<(usize, Claimed, Seat)> = Vec::new();
    let mut spare: Vec<Seat> = Vec::new();
    let mut unclaimed: Vec<usize> = Vec::new();
    for (i, seat) in seated {
        match claimed.remove(&group[i].0) {
            Some(c) => work.push((i, c, seat)),
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
        not_sent(
            ctx,
            group,
            &unclaimed,
            &waiting,
            stale_before,
            &mut outcomes,
        )
        .await?;
    }
    if work.is_empty() {
        return Ok(finished(outcomes));
    }

    for (_, c, _) in work.iter().filter(|(_, c, _)| c.reclaimed) {
        tracing::warn!(message_id = %c.record.id, "the worker that was sending it is gone or passed the hard time limit; sending again with the same Message-ID");
        metrics::counter!("emails_interrupted_total").increment(1);
    }
    // Attachments are read only for the messages that have some.
    let with_files: Vec<Uuid> = work
        .iter()
        .filter(|(_, c, _)| c.has_attachments)
        .map(|(_, c, _)| c.record.id)
        .collect();
    let mut files = if with_files.is_empty() {
        HashMap::new()
    } else {
        attachments::for_messages(&ctx.pool, &with_files).await?
    };
    // Celery's STARTED state, for every claimed task, in one round trip.
    let started_states: Vec<_> = work
        .iter()
        .map(|(i, c, _)| {
            (
                group[*i].1.id().to_string(),
                TaskState::Started,
                started_result(&c.record),
                Vec::new(),
            )
        })
        .collect();
    if let Err(e) = ctx.results.store_many(&started_states).await {
        tracing::warn!(error = %e, "cannot store task states");
    }
    let prepared = started.elapsed();
    let span = |i: usize, c: &Claimed, account: &EmailAccount| {
        tracing::info_span!(
            "send_email",
            task_id = group[i].1.id(),
            message_id = %c.record.id,
            account = %account.email,
        )
    };
    let attempts = join_all(work.iter().map(|(i, c, seat)| {
        let account = &accounts[seat.account];
        let extras = Extras {
            suppressed: c.suppressed.clone(),
            files: files.remove(&c.record.id).unwrap_or_default(),
        };
        let limits = limits(ctx, group[*i].1);
        attempt(ctx, &c.record, account, extras, limits).instrument(span(*i, c, account))
    }))
    .await;
    let smtp_done = started.elapsed();

    let mut sent = Sent::default();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut used: Vec<bool> = vec![false; accounts.len()];
    let mut finished_passes: Vec<Pass> = Vec::new();
    for ((i, c, seat), attempt) in work.into_iter().zip(attempts) {
        drop(seat.pending);
        finished_passes.extend(passes.remove(&i));
        let account = &accounts[seat.account];
        match attempt {
            Attempt::Sent {
                smtp_message_id,
                reply,
            } => {
                used[seat.account] = true;
                results.push((
                    group[i].1.id().to_string(),
                    TaskState::Success,
                    sent_result(&c.record, account, &smtp_message_id, &reply),
                    crate::canvas::children(ctx, group[i].1),
                ));
                tracing::info!(task_id = group[i].1.id(), message_id = %c.record.id, account = %account.email, %reply, "email sent");
                sent.ids.push(c.record.id);
                sent.message_ids.push(smtp_message_id);
                sent.replies.push(reply);
                outcomes[i] = Some(Outcome::Done);
            }
            failed => failures.push((i, c, seat.account, failed)),
        }
    }
    domains::release(ctx, finished_passes).await;
    if !sent.ids.is_empty() {
        persist(|| messages::mark_sent(&ctx.pool, &sent.ids, &sent.message_ids, &sent.replies))
            .await?;
    }
    metrics::counter!("messages_sent_total").increment(sent.ids.len() as u64);
    tracing::debug!(
        group = group.len(),
        sent = sent.ids.len(),
        prepare_ms = prepared.as_millis() as u64,
        smtp_ms = (smtp_done - prepared).as_millis() as u64,
        record_ms = (started.elapsed() - smtp_done).as_millis() as u64,
        "group sent"
    );
    // The results right after the records, so that a caller who sees
    // `sent` finds SUCCESS too; the accounts' recovery can wait.
    if let Err(e) = ctx.results.store_many(&results).await {
        tracing::warn!(error = %e, "cannot store task results");
    }
    let senders: Vec<&EmailAccount> = accounts
        .iter()
        .zip(used)
        .filter_map(|(account, used)| used.then_some(account))
        .collect();
    recovered(ctx, senders).await?;

    for (i, c, account, failed) in failures {
        let account = &accounts[account];
        email_accounts::release(&ctx.pool, today, account.id, 1).await?;
        let outcome = settle_failure(ctx, group[i].1, &c.record, account, failed)
            .instrument(span(i, &c, account))
            .await?;
        outcomes[i] = Some(outcome);
    }
    Ok(finished(outcomes))
}

/// What was sent, as `messages::mark_sent` takes it.
#[derive(Default)]
struct Sent {
    ids: Vec<Uuid>,
    message_ids: Vec<String>,
    replies: Vec<String>,
}

fn finished(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Done))
        .collect()
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
