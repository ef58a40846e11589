//! The grouped driver: many plain sends (API-published, due, `queued`) that
//! arrived together, each stage done once for the whole group instead of
//! once per message: load and claim, reserve quota, record `sent`, store
//! the results; the SMTP sends run concurrently over the pooled
//! connections. Anything that is not the plain case (a record not
//! `queued`, quota running out, an account with its own throttles) is
//! handed back to the single driver, and failed sends are settled by the
//! same policy, so the guarantees are the same.

use std::collections::HashMap;

use futures_util::future::join_all;
use platform::celery::{TaskMessage, TaskState};
use platform::db::attachments;
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, Claimed, MessageRecord};
use tracing::Instrument;
use uuid::Uuid;

use super::admit;
use super::attempt::{attempt, Attempt, Extras};
use super::policy::settle_failure;
use super::settle::{persist, recovered, sent_result, started_result};
use crate::context::Context;
use crate::outcome::Outcome;

/// Outcomes by position in `group`; `None` sends that message down the
/// single path.
pub async fn run(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
) -> Result<Vec<Option<Outcome>>, sqlx::Error> {
    let started = std::time::Instant::now();
    let mut outcomes: Vec<Option<Outcome>> = (0..group.len()).map(|_| None).collect();
    // The same task twice in one group (published twice): the first copy
    // carries it, the others are acknowledged as duplicates.
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<usize> = Vec::new();
    for (i, (id, _)) in group.iter().enumerate() {
        if seen.insert(*id) {
            unique.push(i);
        } else {
            outcomes[i] = Some(Outcome::Done);
        }
    }

    // Quota for as many as possible, best accounts first. Reserved before
    // the claim (which needs the account), and given back for whatever
    // the claim does not take: a redelivered message already sent, one held
    // by another delivery, a cancelled one (the single path settles those).
    let today = platform::today(&ctx.settings);
    let reservations = admit::reserve_many(ctx, today, unique.len() as i32).await?;
    let mut assigned: Vec<(usize, usize)> = Vec::new(); // (group index, reservation index)
    let mut slots = reservations
        .iter()
        .enumerate()
        .flat_map(|(r, res)| std::iter::repeat_n(r, res.granted.max(0) as usize));
    for &i in &unique {
        match slots.next() {
            Some(r) => assigned.push((i, r)),
            None => break,
        }
    }
    if assigned.is_empty() {
        return Ok(outcomes);
    }

    let claim_ids: Vec<Uuid> = assigned.iter().map(|(i, _)| group[*i].0).collect();
    let claim_accounts: Vec<Uuid> = assigned
        .iter()
        .map(|(_, r)| reservations[*r].account.id)
        .collect();
    let claim_emails: Vec<String> = assigned
        .iter()
        .map(|(_, r)| reservations[*r].account.email.clone())
        .collect();
    let claimed: HashMap<Uuid, Claimed> = messages::claim_many(
        &ctx.pool,
        &claim_ids,
        &claim_accounts,
        &claim_emails,
        ctx.liveness.id(),
    )
    .await?
    .into_iter()
    .map(|c| (c.record.id, c))
    .collect();

    // Quota reserved for messages the claim did not take goes back.
    let mut unused: HashMap<Uuid, i32> = HashMap::new();
    for (i, r) in &assigned {
        if !claimed.contains_key(&group[*i].0) {
            *unused.entry(reservations[*r].account.id).or_default() += 1;
        }
    }
    // Reserved but never assigned (more quota than messages, which cannot
    // happen as asked, but keep the books right).
    let granted: i32 = reservations.iter().map(|r| r.granted).sum();
    if granted as usize > assigned.len() {
        if let Some(last) = reservations.last() {
            *unused.entry(last.account.id).or_default() += granted - assigned.len() as i32;
        }
    }
    for (account, count) in unused {
        email_accounts::release_many(&ctx.pool, today, account, count).await?;
    }

    let work: Vec<(usize, &Claimed, &EmailAccount)> = assigned
        .iter()
        .filter_map(|(i, r)| {
            claimed
                .get(&group[*i].0)
                .map(|c| (*i, c, &reservations[*r].account))
        })
        .collect();
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
    let extras: Vec<Extras> = work
        .iter()
        .map(|(_, c, _)| Extras {
            suppressed: c.suppressed.clone(),
            files: files.remove(&c.record.id).unwrap_or_default(),
        })
        .collect();
    let work: Vec<(usize, &MessageRecord, &EmailAccount)> = work
        .into_iter()
        .map(|(i, c, account)| (i, &c.record, account))
        .collect();
    // Celery's STARTED state, for every claimed task, in one round trip.
    let started_states: Vec<_> = work
        .iter()
        .map(|(i, rec, _)| {
            (
                group[*i].1.id().to_string(),
                TaskState::Started,
                started_result(rec),
            )
        })
        .collect();
    if let Err(e) = ctx.results.store_many(&started_states).await {
        tracing::warn!(error = %e, "cannot store task states");
    }
    let prepared = started.elapsed();
    let attempts = join_all(work.iter().zip(extras).map(|((i, rec, account), extras)| {
        let span = tracing::info_span!(
            "send_email",
            task_id = group[*i].1.id(),
            message_id = %rec.id,
            account = %account.email,
        );
        attempt(ctx, rec, account, extras).instrument(span)
    }))
    .await;
    let smtp_done = started.elapsed();

    let mut sent_ids = Vec::new();
    let mut sent_message_ids = Vec::new();
    let mut sent_replies = Vec::new();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for ((i, record, account), attempt) in work.into_iter().zip(attempts) {
        match attempt {
            Attempt::Sent {
                smtp_message_id,
                reply,
            } => {
                results.push((
                    group[i].1.id().to_string(),
                    TaskState::Success,
                    sent_result(record, account, &smtp_message_id, &reply),
                ));
                sent_ids.push(record.id);
                sent_message_ids.push(smtp_message_id);
                sent_replies.push(reply);
                outcomes[i] = Some(Outcome::Done);
            }
            failed => failures.push((i, record, account, failed)),
        }
    }
    persist(|| messages::mark_sent_many(&ctx.pool, &sent_ids, &sent_message_ids, &sent_replies))
        .await?;
    metrics::counter!("messages_sent_total").increment(sent_ids.len() as u64);
    tracing::debug!(
        group = group.len(),
        sent = sent_ids.len(),
        prepare_ms = prepared.as_millis() as u64,
        smtp_ms = (smtp_done - prepared).as_millis() as u64,
        record_ms = (started.elapsed() - smtp_done).as_millis() as u64,
        "group sent"
    );
    let used: Vec<&EmailAccount> = reservations
        .iter()
        .filter(|r| claim_accounts.contains(&r.account.id))
        .map(|r| &r.account)
        .collect();
    if let Err(e) = ctx.results.store_many(&results).await {
        tracing::warn!(error = %e, "cannot store task results");
    }
    recovered(ctx, used).await?;

    for (i, record, account, failed) in failures {
        email_accounts::release(&ctx.pool, today, account.id).await?;
        outcomes[i] = Some(settle_failure(ctx, group[i].1, record, account, failed).await?);
    }
    Ok(outcomes)
}
