//! The sends of a claimed group, each settled as it finishes. Sends that
//! finish about the same time are settled together: one `mark_sent`
//! statement and one Redis round trip for all of them, while the others
//! still run. So a group's statements still serve many emails when sends
//! are fast (a loopback server: the whole group finishes within the
//! linger and is settled at once), and when they are slow (a real server,
//! hundreds of milliseconds each, finishing one by one) no send waits for
//! the group's slowest: its delivery is acknowledged, and its slot taken
//! by the next one, within the linger.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::future::OptionFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use platform::celery::{TaskMessage, TaskState};
use platform::db::attachments::Attachment;
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, Claimed};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::admit::Seat;
use super::attempt::{attempt, limits, Attempt, Extras};
use super::domains;
use super::policy::settle_failure;
use super::settle::{persist, recovered, sent_result, started_result};
use crate::context::Context;
use crate::domain_throttle::Pass;
use crate::outcome::{Outcome, RunError};
use crate::registry::Report;

/// How long a finished send may wait for others to be settled with it.
/// Short against an SMTP transaction on a real server, long against a
/// loopback one (where a whole group finishes within it).
const LINGER: Duration = Duration::from_millis(20);

/// A group's claimed members, ready to send.
pub struct ClaimedGroup {
    pub today: NaiveDate,
    /// The accounts the seats point into.
    pub accounts: Vec<EmailAccount>,
    pub work: Vec<Work>,
}

/// One claimed member.
pub struct Work {
    /// Its index in the group.
    pub i: usize,
    pub claimed: Claimed,
    pub seat: Seat,
    /// What it took from its recipient domains' throttles.
    pub pass: Option<Pass>,
    pub files: Vec<Attachment>,
}

type Settling<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Sends every member concurrently and settles them as they finish,
/// reporting each member's result once.
pub async fn send(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    claimed: ClaimedGroup,
    report: &Report,
) {
    let ClaimedGroup {
        today,
        accounts,
        work,
    } = claimed;
    let accounts = &accounts;
    // Celery's STARTED state, for every claimed task, in one round trip.
    let started: Vec<_> = work
        .iter()
        .map(|w| {
            (
                group[w.i].1.id().to_string(),
                TaskState::Started,
                started_result(&w.claimed.record),
                Vec::new(),
            )
        })
        .collect();
    if let Err(e) = ctx.results.store_many(&started).await {
        tracing::warn!(error = %e, "cannot store task states");
    }

    let mut attempts: FuturesUnordered<_> = work
        .into_iter()
        .map(|mut w| {
            let account = &accounts[w.seat.account];
            let extras = Extras {
                suppressed: w.claimed.suppressed.clone(),
                files: std::mem::take(&mut w.files),
            };
            let limits = limits(ctx, group[w.i].1);
            let span = span(group, &w, account);
            async move {
                let attempt = attempt(ctx, &w.claimed.record, account, extras, limits)
                    .instrument(span)
                    .await;
                (w, attempt)
            }
        })
        .collect();

    // Finished sends not yet settled, and since when the oldest waits.
    let mut ready: Vec<(Work, Attempt)> = Vec::new();
    let mut oldest = Instant::now();
    // One settlement at a time: while it runs, the next one gathers.
    let mut settling: Option<Settling<'_>> = None;
    loop {
        tokio::select! {
            Some(done) = attempts.next(), if !attempts.is_empty() => {
                if ready.is_empty() {
                    oldest = Instant::now();
                }
                ready.push(done);
            }
            _ = OptionFuture::from(settling.as_mut()), if settling.is_some() => {
                settling = None;
            }
            () = tokio::time::sleep_until(oldest + LINGER), if settling.is_none() && !ready.is_empty() => {}
            // Not reached: the loop ends before nothing is left to wait for.
            else => break,
        }
        let due = !ready.is_empty() && (attempts.is_empty() || oldest.elapsed() >= LINGER);
        if settling.is_none() && due {
            let batch = std::mem::take(&mut ready);
            settling = Some(Box::pin(settle(ctx, group, accounts, today, batch, report)));
        }
        if attempts.is_empty() && ready.is_empty() && settling.is_none() {
            break;
        }
    }
}

fn span(group: &[(Uuid, &TaskMessage)], w: &Work, account: &EmailAccount) -> tracing::Span {
    tracing::info_span!(
        "send_email",
        task_id = group[w.i].1.id(),
        message_id = %w.claimed.record.id,
        account = %account.email,
    )
}

/// One sent email, as `messages::mark_sent` records it.
struct Sent {
    i: usize,
    id: Uuid,
    smtp_message_id: String,
    reply: String,
    account: usize,
}

/// Records the outcomes of sends that finished together and reports them.
async fn settle(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    accounts: &[EmailAccount],
    today: NaiveDate,
    batch: Vec<(Work, Attempt)>,
    report: &Report,
) {
    let started = Instant::now();
    let mut sent: Vec<(Sent, Work)> = Vec::new();
    let mut failures = Vec::new();
    let mut passes: Vec<Pass> = Vec::new();
    for (mut w, attempt) in batch {
        // Its place in the account's backlog is free.
        drop(w.seat.pending.take());
        passes.extend(w.pass.take());
        match attempt {
            Attempt::Sent {
                smtp_message_id,
                reply,
            } => sent.push((
                Sent {
                    i: w.i,
                    id: w.claimed.record.id,
                    smtp_message_id,
                    reply,
                    account: w.seat.account,
                },
                w,
            )),
            failed => failures.push((w, failed)),
        }
    }
    domains::release(ctx, passes).await;

    let recorded = record_sent(ctx, sent.iter().map(|(s, _)| s).collect()).await;
    let mut results = Vec::new();
    let mut used = vec![false; accounts.len()];
    for ((s, w), recorded) in sent.iter().zip(&recorded) {
        if recorded.is_err() {
            continue;
        }
        let account = &accounts[s.account];
        let message = group[s.i].1;
        used[s.account] = true;
        results.push((
            message.id().to_string(),
            TaskState::Success,
            sent_result(&w.claimed.record, account, &s.smtp_message_id, &s.reply),
            crate::canvas::children(ctx, message),
        ));
        tracing::info!(task_id = message.id(), message_id = %s.id, account = %account.email, reply = %s.reply, "email sent");
    }
    metrics::counter!("messages_sent_total").increment(results.len() as u64);
    // The results right after the records, so that a caller who sees
    // `sent` finds SUCCESS too; the accounts' recovery can wait.
    if let Err(e) = ctx.results.store_many(&results).await {
        tracing::warn!(error = %e, "cannot store task results");
    }
    for ((s, _), recorded) in sent.iter().zip(recorded) {
        report.ran(s.i, recorded.map(|()| Outcome::Done));
    }
    tracing::debug!(
        sent = results.len(),
        failed = failures.len(),
        record_ms = started.elapsed().as_millis() as u64,
        "sends settled"
    );
    let senders: Vec<&EmailAccount> = accounts
        .iter()
        .zip(used)
        .filter_map(|(account, used)| used.then_some(account))
        .collect();
    // Recorded already: an account left marked failing is cleared by its
    // next success.
    if let Err(e) = recovered(ctx, senders).await {
        tracing::warn!(error = %e, "cannot clear the accounts' failure counts");
    }

    for (w, failed) in failures {
        let account = &accounts[w.seat.account];
        let message = group[w.i].1;
        let settled = async {
            email_accounts::release(&ctx.pool, today, account.id, 1).await?;
            settle_failure(ctx, message, &w.claimed.record, account, failed).await
        }
        .instrument(span(group, &w, account))
        .await;
        report.ran(w.i, settled.map_err(RunError::from));
    }
}

/// Marks the sent emails `sent`, with one statement; should the database
/// refuse it (one email's data, not the database), one by one, so that
/// only the bad one stays unrecorded. Outages are waited out ([`persist`]).
async fn record_sent(ctx: &Context, sent: Vec<&Sent>) -> Vec<Result<(), RunError>> {
    if sent.is_empty() {
        return Vec::new();
    }
    let mark = |sent: &[&Sent]| {
        let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
        let message_ids: Vec<String> = sent.iter().map(|s| s.smtp_message_id.clone()).collect();
        let replies: Vec<String> = sent.iter().map(|s| s.reply.clone()).collect();
        async move { persist(|| messages::mark_sent(&ctx.pool, &ids, &message_ids, &replies)).await }
    };
    match mark(&sent).await {
        Ok(()) => sent.iter().map(|_| Ok(())).collect(),
        Err(e) if sent.len() == 1 => vec![Err(RunError::from(e))],
        Err(e) => {
            tracing::warn!(error = %e, "the database refused a group's outcomes; recording them one by one");
            let mut recorded = Vec::with_capacity(sent.len());
            for s in &sent {
                recorded.push(mark(std::slice::from_ref(s)).await.map_err(RunError::from));
            }
            recorded
        }
    }
}
