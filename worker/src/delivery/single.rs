//! The single driver: one message through every stage, handling every
//! case (a record still `sending` under a live or lapsed claim, throttled
//! accounts, quota exhausted, every kind of failure).
//!
//! The record moves `queued → sending → sent|failed` and the delivery is
//! acknowledged only after the outcome is committed. A redelivered or
//! duplicated task finds the record `sending` or final and sends nothing.
//!
//! What remains ambiguous: a worker that dies during the SMTP transaction
//! leaves the record `sending` with no outcome. RabbitMQ redelivers the
//! task; once the hard time limit has passed (so the first attempt cannot
//! still be running) it is sent again, with the same Message-ID. Only if
//! the worker died between the server's acceptance of DATA and the commit
//! of `sent` (a window of milliseconds) does the recipient get two copies,
//! which carry one Message-ID and are commonly merged by receivers.

use std::time::Duration;

use chrono::Utc;
use platform::celery::{TaskMessage, TaskState};
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, MessageRecord, MessageStatus};

use super::admit::{release_slot, reserve_admitted};
use super::attempt::{attempt, extras, Attempt};
use super::policy::{refuse, settle_failure};
use super::prepare::{load_or_record, Prepared};
use super::settle::{persist, recovered, sent_result, started_result, store};
use crate::context::Context;
use crate::outcome::Outcome;

pub async fn run(ctx: &Context, message: &TaskMessage) -> Result<Outcome, sqlx::Error> {
    let record = match load_or_record(ctx, message).await? {
        Prepared::Record(record) => *record,
        Prepared::Refused { reason, recorded } => {
            return Ok(refuse(ctx, message, &reason, recorded).await)
        }
    };
    tracing::Span::current().record("message_id", tracing::field::display(record.id));
    // A message left `sending` longer than the hard time limit belongs to a
    // worker that died mid-send; younger ones may still be in flight.
    let hard_limit = ctx.settings.task_time_limit + Duration::from_secs(5);
    let stale_before = Utc::now() - chrono::Duration::from_std(hard_limit).unwrap_or_default();
    match record.status() {
        MessageStatus::Queued => {}
        MessageStatus::Sending => {
            let started = record.sending_at.unwrap_or(record.updated_at);
            if started >= stale_before {
                if let Some(left) = messages::claimant_lease(&ctx.pool, &record).await? {
                    // Its claimant is alive and may still be sending: look
                    // again once its lease could have lapsed (or the hard
                    // time limit passed).
                    let wait = (started - stale_before).to_std().unwrap_or_default();
                    return Ok(Outcome::Later {
                        delay: wait.min(left) + Duration::from_secs(1),
                    });
                }
                tracing::warn!(message_id = %record.id, claimant = ?record.claimed_by, "the worker that was sending it is gone; sending again with the same Message-ID");
            } else {
                tracing::warn!(message_id = %record.id, "previous attempt passed the hard time limit; sending again with the same Message-ID");
            }
            metrics::counter!("emails_interrupted_total").increment(1);
        }
        // Handled by an earlier delivery of this task, or cancelled/suppressed.
        _ => return Ok(Outcome::Done),
    }

    let today = platform::today(&ctx.settings);
    let (account, slot) = match reserve_admitted(ctx, today).await? {
        Ok(reserved) => reserved,
        Err((wait, why)) => {
            messages::note_waiting(&ctx.pool, record.id, why, wait).await?;
            metrics::counter!("emails_waiting_for_quota_total").increment(1);
            tracing::info!(message_id = %record.id, retry_in = ?wait, why, "message waits");
            return Ok(Outcome::Later { delay: wait });
        }
    };
    tracing::Span::current().record("account", account.email.as_str());
    let claimed = messages::claim(
        &ctx.pool,
        record.id,
        account.id,
        &account.email,
        stale_before,
        ctx.liveness.id(),
    )
    .await?;
    let Some(record) = claimed else {
        // Another delivery of the same task claimed it first.
        email_accounts::release(&ctx.pool, today, account.id).await?;
        release_slot(ctx, slot).await;
        return Ok(Outcome::Done);
    };
    let outcome = send(ctx, message, &record, &account).await;
    release_slot(ctx, slot).await;
    outcome
}

pub async fn send(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    account: &EmailAccount,
) -> Result<Outcome, sqlx::Error> {
    let extras = extras(ctx, &[record]).await?.pop();
    let Some(extras) = extras else {
        return Ok(Outcome::Done);
    };
    store(
        ctx,
        message.id(),
        TaskState::Started,
        started_result(record),
    )
    .await;
    match attempt(ctx, record, account, extras).await {
        Attempt::Sent {
            smtp_message_id,
            reply,
        } => {
            persist(|| messages::mark_sent(&ctx.pool, record.id, &smtp_message_id, &reply)).await?;
            // The result right after the record, so that a caller who sees
            // `sent` finds SUCCESS too; the account's recovery can wait.
            let result = sent_result(record, account, &smtp_message_id, &reply);
            store(ctx, message.id(), TaskState::Success, result).await;
            metrics::counter!("messages_sent_total").increment(1);
            tracing::info!(message_id = %record.id, account = %account.email, %reply, "email sent");
            recovered(ctx, [account]).await?;
            Ok(Outcome::Done)
        }
        failed => {
            email_accounts::release(&ctx.pool, platform::today(&ctx.settings), account.id).await?;
            settle_failure(ctx, message, record, account, failed).await
        }
    }
}
