//! The failure policy, top to bottom: how an SMTP error is classified
//! ([`classify`]), and what each kind of failure does to the message, its
//! account and its task ([`settle_failure`]): fail for good, retry with
//! capped exponential backoff ([`backoff`]) until `SEND_MAX_RETRIES`, or
//! move to another account and open the failing one's circuit.

use std::time::Duration;

use platform::celery::TaskMessage;
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, MessageRecord};
use rand::Rng;

use super::attempt::Attempt;
use super::settle::{persist, store_failure, store_retry};
use crate::context::Context;
use crate::outcome::Outcome;
use crate::smtp::SendError;

/// How a failed attempt should be treated.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// 5xx for the message (recipient refused, content rejected): final.
    Permanent { reply: String },
    /// The account's fault (authentication refused): try another account.
    Account { reply: String },
    /// No SMTP reply at all (refused, reset, TLS failure, timeout): retry
    /// later, and count against the account's circuit breaker.
    Unreachable { reply: String },
    /// A 4xx reply: retry later.
    Temporary { reply: String },
}

impl Failure {
    pub fn reply(&self) -> &str {
        match self {
            Failure::Permanent { reply }
            | Failure::Account { reply }
            | Failure::Unreachable { reply }
            | Failure::Temporary { reply } => reply,
        }
    }
}

pub fn classify(error: &SendError) -> Failure {
    let reply = error.to_string();
    // Our own connection cap, not the server: no mark against the account.
    if matches!(error, SendError::Busy { .. }) {
        return Failure::Temporary { reply };
    }
    let Some(code) = error.status() else {
        // No SMTP reply at all: connection refused or reset, TLS, timeout.
        return Failure::Unreachable { reply };
    };
    match code {
        // 530 auth required, 534 mechanism too weak, 535 bad credentials, 538 encryption required
        530 | 534 | 535 | 538 | 454 => Failure::Account { reply },
        // 421: the server is closing the channel (overloaded, shutting down).
        421 => Failure::Unreachable { reply },
        400..=499 => Failure::Temporary { reply },
        500..=599 => Failure::Permanent { reply },
        _ => Failure::Temporary { reply },
    }
}

/// Records a failed attempt (its quota already given back) and decides
/// what happens to the task.
pub async fn settle_failure(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    account: &EmailAccount,
    attempt: Attempt,
) -> Result<Outcome, sqlx::Error> {
    match attempt {
        Attempt::Sent { .. } => Ok(Outcome::Done),
        Attempt::Unbuildable(reason) => {
            fail(
                ctx,
                message,
                record,
                FailureKind::Unbuildable,
                &reason,
                None,
            )
            .await
        }
        Attempt::Suppressed(reason) => {
            persist(|| messages::mark_suppressed(&ctx.pool, record.id, &reason)).await?;
            tracing::info!(message_id = %record.id, %reason, "email suppressed");
            store_failure(ctx, message.id(), &reason).await;
            Ok(Outcome::Done)
        }
        Attempt::NoTransport(reply) => {
            account_fault(ctx, message, record, account, &reply, true).await
        }
        Attempt::Failed(Failure::Permanent { reply }) => {
            let reason = format!("rejected by the SMTP server: {reply}");
            fail(
                ctx,
                message,
                record,
                FailureKind::Rejected,
                &reason,
                Some(&reply),
            )
            .await
        }
        Attempt::Failed(Failure::Account { reply }) => {
            account_fault(ctx, message, record, account, &reply, true).await
        }
        Attempt::Failed(Failure::Unreachable { reply }) => {
            email_accounts::record_failure(
                &ctx.pool,
                account.id,
                &reply,
                ctx.settings.breaker,
                false,
            )
            .await?;
            retry_or_fail(ctx, message, record, &reply, Some(&reply)).await
        }
        Attempt::Failed(Failure::Temporary { reply }) => {
            retry_or_fail(ctx, message, record, &reply, Some(&reply)).await
        }
    }
}

/// The account, not the message, is at fault (its password is refused, or
/// it cannot even be set up): open its circuit so the pool stops using it,
/// and put the message straight back for another account, without
/// counting a retry against it.
pub async fn account_fault(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    account: &EmailAccount,
    reply: &str,
    open_now: bool,
) -> Result<Outcome, sqlx::Error> {
    email_accounts::record_failure(&ctx.pool, account.id, reply, ctx.settings.breaker, open_now)
        .await?;
    metrics::counter!("smtp_account_failures_total").increment(1);
    tracing::warn!(account = %account.email, %reply, "SMTP account failed; circuit opened, message moves to another account");
    let reason = format!(
        "account {} failed: {reply}; trying another account",
        account.email
    );
    let delay = Duration::from_secs(1);
    persist(|| messages::mark_retrying(&ctx.pool, record.id, &reason, Some(reply), delay)).await?;
    store_retry(ctx, message.id(), &reason).await;
    Ok(Outcome::Later { delay })
}

pub async fn retry_or_fail(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    reason: &str,
    reply: Option<&str>,
) -> Result<Outcome, sqlx::Error> {
    let retries = message.headers.retries;
    if retries >= ctx.settings.max_retries {
        let reason = format!("gave up after {} attempts: {reason}", retries + 1);
        fail(
            ctx,
            message,
            record,
            FailureKind::RetriesExhausted,
            &reason,
            reply,
        )
        .await?;
        return Ok(Outcome::DeadLetter { reason });
    }
    let delay = backoff(ctx, retries);
    persist(|| messages::mark_retrying(&ctx.pool, record.id, reason, reply, delay)).await?;
    metrics::counter!("email_retries_total").increment(1);
    tracing::info!(message_id = %record.id, retries, retry_in = ?delay, %reason, "temporary failure; will retry");
    store_retry(ctx, message.id(), reason).await;
    Ok(Outcome::Retry { delay })
}

/// Why a message failed for good, as the `reason` label of `messages_failed_total`.
#[derive(Debug, Clone, Copy)]
pub enum FailureKind {
    /// The SMTP server refused it (5xx).
    Rejected,
    /// Temporary failures until the retries ran out.
    RetriesExhausted,
    /// It could not be turned into an email.
    Unbuildable,
    /// A Python producer's arguments broke a rule every email keeps to.
    Invalid,
}

impl FailureKind {
    fn label(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::RetriesExhausted => "retries_exhausted",
            FailureKind::Unbuildable => "unbuildable",
            FailureKind::Invalid => "invalid",
        }
    }
}

pub async fn fail(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    kind: FailureKind,
    reason: &str,
    reply: Option<&str>,
) -> Result<Outcome, sqlx::Error> {
    persist(|| messages::mark_failed(&ctx.pool, record.id, reason, reply)).await?;
    metrics::counter!("messages_failed_total", "reason" => kind.label()).increment(1);
    tracing::warn!(message_id = %record.id, %reason, "email failed");
    store_failure(ctx, message.id(), reason).await;
    Ok(Outcome::Done)
}

/// A task that cannot be run as given (arguments that break a rule, a
/// record that does not exist): it fails for good, at once, never retried
/// (the same arguments would break the same rule), with `reason` as the
/// exception Python sees. `recorded`: a `failed` message record says so,
/// and it counts as a failed message.
pub async fn refuse(ctx: &Context, message: &TaskMessage, reason: &str, recorded: bool) -> Outcome {
    if recorded {
        metrics::counter!("messages_failed_total", "reason" => FailureKind::Invalid.label())
            .increment(1);
    }
    tracing::warn!(task_id = message.id(), %reason, "send_email task refused");
    store_failure(ctx, message.id(), reason).await;
    Outcome::Done
}

/// Capped exponential backoff with full jitter on the upper half.
pub fn backoff(ctx: &Context, retries: u32) -> Duration {
    let base = ctx.settings.retry_backoff.as_secs_f64() * 2f64.powi(retries.min(20) as i32);
    let capped = base.min(ctx.settings.retry_backoff_max.as_secs_f64());
    let jittered = capped * rand::thread_rng().gen_range(0.5..=1.0);
    Duration::from_secs_f64(jittered.max(1.0))
}
