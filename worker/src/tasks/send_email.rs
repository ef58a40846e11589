//! `notifications.send_email`: one email through the account pool.
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
use platform::db::attachments::{self, Attachment};
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, MessageRecord, MessageStatus, NewMessage};
use platform::db::suppressions;
use platform::mail::{compose, EmailAddress, Envelope};
use platform::tasks::SendEmailKwargs;
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use crate::context::Context;
use crate::delivery::{self, Failure};
use crate::outcome::Outcome;
use crate::pool::Lease;

/// Exception type Python sees in `AsyncResult.get()` for a failed send.
const EXC_TYPE: &str = "EmailDeliveryError";

pub async fn run(ctx: &Context, message: &TaskMessage) -> Result<Outcome, sqlx::Error> {
    let record = match load_or_record(ctx, message).await? {
        Ok(record) => record,
        Err(reason) => {
            tracing::warn!(task_id = message.id(), %reason, "send_email task refused");
            store_failure(ctx, message.id(), &reason).await;
            return Ok(Outcome::Done);
        }
    };
    // A message left `sending` longer than the hard time limit belongs to a
    // worker that died mid-send; younger ones may still be in flight.
    let lease = ctx.settings.task_time_limit + Duration::from_secs(5);
    let stale_before = Utc::now() - chrono::Duration::from_std(lease).unwrap_or_default();
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
    let (account, lease) = match reserve_admitted(ctx, today).await? {
        Ok(reserved) => reserved,
        Err((wait, why)) => {
            messages::note_waiting(&ctx.pool, record.id, why, wait).await?;
            metrics::counter!("emails_waiting_for_quota_total").increment(1);
            tracing::info!(message_id = %record.id, retry_in = ?wait, why, "message waits");
            return Ok(Outcome::Later { delay: wait });
        }
    };
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
        release_lease(ctx, lease).await;
        return Ok(Outcome::Done);
    };
    let outcome = send(ctx, message, &record, &account).await;
    release_lease(ctx, lease).await;
    outcome
}

/// Reserves quota on the best account whose own throttles (rate per
/// minute, connection cap) admit one more send now. `Err((wait, why))`
/// when no account can take the message yet.
async fn reserve_admitted(
    ctx: &Context,
    today: chrono::NaiveDate,
) -> Result<Result<(EmailAccount, Option<Lease>), (Duration, &'static str)>, sqlx::Error> {
    let mut throttled: Vec<Uuid> = Vec::new();
    let mut soonest: Option<Duration> = None;
    loop {
        let Some(account) = email_accounts::reserve(&ctx.pool, today, &throttled).await? else {
            return Ok(Err(match soonest {
                Some(wait) => (
                    wait,
                    "waiting for an SMTP account's rate or connection limit",
                ),
                None => (
                    ctx.settings.quota_wait,
                    "waiting for an SMTP account with quota left",
                ),
            }));
        };
        match admit(ctx, &account).await {
            Ok(lease) => {
                let shared = match &ctx.shared_quota {
                    Some(shared) => shared.take(&account.email, 1).await == 1,
                    None => true,
                };
                if shared {
                    return Ok(Ok((account, lease)));
                }
                // The Python platform used the rest of the day's quota.
                email_accounts::release(&ctx.pool, today, account.id).await?;
                release_lease(ctx, lease).await;
                throttled.push(account.id);
            }
            Err(wait) => {
                email_accounts::release(&ctx.pool, today, account.id).await?;
                throttled.push(account.id);
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
        }
    }
}

/// Applies the account's throttles; `Err(wait)` when it must wait. When
/// Redis cannot be asked, a throttled account is held back rather than
/// risk passing its provider's limits.
async fn admit(ctx: &Context, account: &EmailAccount) -> Result<Option<Lease>, Duration> {
    let unavailable = |e: crate::pool::ThrottleError| {
        tracing::warn!(account = %account.email, error = %e, "throttle unavailable; holding the account back");
        Duration::from_secs(5)
    };
    if let Some(limit) = account.rate_limit_per_minute {
        if let Some(wait) = ctx
            .throttle
            .admit(account.id, limit as u32)
            .await
            .map_err(unavailable)?
        {
            return Err(wait);
        }
    }
    if let Some(max) = account.max_connections {
        let lease_for = ctx.settings.task_time_limit;
        return match ctx
            .throttle
            .lease(account.id, max as u32, lease_for)
            .await
            .map_err(unavailable)?
        {
            Some(lease) => Ok(Some(lease)),
            None => Err(Duration::from_secs(1)),
        };
    }
    Ok(None)
}

async fn release_lease(ctx: &Context, lease: Option<Lease>) {
    if let Some(lease) = lease {
        if let Err(e) = ctx.throttle.release(lease).await {
            tracing::warn!(error = %e, "cannot release a connection slot; it expires by itself");
        }
    }
}

async fn send(
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
            if account.consecutive_failures > 0 || account.circuit_open_until.is_some() {
                email_accounts::record_success(&ctx.pool, account.id).await?;
            }
            metrics::counter!("messages_sent_total").increment(1);
            tracing::info!(message_id = %record.id, account = %account.email, %reply, "email sent");
            let result = sent_result(record, account, &smtp_message_id, &reply);
            store(ctx, message.id(), TaskState::Success, result).await;
            Ok(Outcome::Done)
        }
        failed => {
            email_accounts::release(&ctx.pool, platform::today(&ctx.settings), account.id).await?;
            settle_failure(ctx, message, record, account, failed).await
        }
    }
}

/// One SMTP attempt for a claimed message, before anything is recorded.
pub(super) enum Attempt {
    Sent {
        smtp_message_id: String,
        reply: String,
    },
    /// The message cannot be turned into an email.
    Unbuildable(String),
    /// A recipient is on the suppression list: the message is not sent.
    Suppressed(String),
    /// The account's transport cannot be set up (e.g. its password does not decrypt).
    NoTransport(String),
    Failed(Failure),
}

/// What sending needs besides the record, read for a whole batch at once.
pub(super) struct Extras {
    /// A recipient put on the suppression list after the message was accepted.
    pub suppressed: Option<String>,
    pub files: Vec<Attachment>,
}

pub(super) async fn extras(
    ctx: &Context,
    records: &[&MessageRecord],
) -> Result<Vec<Extras>, sqlx::Error> {
    let recipients = |r: &MessageRecord| [&r.to_addrs[..], &r.cc_addrs, &r.bcc_addrs].concat();
    let everyone: Vec<String> = records.iter().flat_map(|r| recipients(r)).collect();
    let suppressed = suppressions::suppressed_among(&ctx.pool, &everyone).await?;
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let mut files = attachments::for_messages(&ctx.pool, &ids).await?;
    Ok(records
        .iter()
        .map(|r| Extras {
            suppressed: recipients(r)
                .into_iter()
                .find(|a| suppressed.contains(&a.to_lowercase())),
            files: files.remove(&r.id).unwrap_or_default(),
        })
        .collect())
}

pub(super) async fn attempt(
    ctx: &Context,
    record: &MessageRecord,
    account: &EmailAccount,
    extras: Extras,
) -> Attempt {
    if let Some(address) = extras.suppressed {
        return Attempt::Suppressed(format!("recipient {address} is on the suppression list"));
    }
    let envelope = Envelope {
        record_id: record.id,
        from_email: &account.email,
        from_name: record.from_name.as_deref().unwrap_or(&account.display_name),
        to: &record.to_addrs,
        cc: &record.cc_addrs,
        bcc: &record.bcc_addrs,
        reply_to: record.reply_to.as_deref(),
    };
    let composed = match compose(
        &envelope,
        &record.subject,
        &record.html_body,
        record.text_body.as_deref(),
        &extras.files,
    ) {
        Ok(c) => c,
        Err(e) => return Attempt::Unbuildable(format!("cannot build the email: {e}")),
    };
    let transport = match ctx.transports.get(account) {
        Ok(t) => t,
        Err(e) => return Attempt::NoTransport(e.to_string()),
    };
    match delivery::deliver(
        &ctx.transports,
        account,
        &transport,
        composed.message,
        ctx.settings.task_soft_time_limit,
    )
    .await
    {
        Ok(reply) => Attempt::Sent {
            smtp_message_id: composed.message_id,
            reply,
        },
        Err(failure) => Attempt::Failed(failure),
    }
}

/// What Celery shows for a task that has started (its `result` field).
pub(super) fn started_result(record: &MessageRecord) -> serde_json::Value {
    json!({"message_id": record.id, "pid": std::process::id()})
}

/// The Celery result of a sent email.
pub(super) fn sent_result(
    record: &MessageRecord,
    account: &EmailAccount,
    smtp_message_id: &str,
    reply: &str,
) -> serde_json::Value {
    json!({
        "message_id": record.id,
        "status": "sent",
        "account": account.email,
        "smtp_message_id": smtp_message_id,
        "smtp_response": reply,
    })
}

/// Records a failed attempt (its quota already given back) and decides
/// what happens to the task.
pub(super) async fn settle_failure(
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
async fn account_fault(
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
    store(
        ctx,
        message.id(),
        TaskState::Retry,
        json!({"exc_type": EXC_TYPE, "exc_message": [reason], "exc_module": "builtins"}),
    )
    .await;
    Ok(Outcome::Later { delay })
}

/// Finds the record the task refers to, or records the email a Python
/// producer passed directly. `Ok(Err(reason))` means the task's arguments
/// are unusable.
async fn load_or_record(
    ctx: &Context,
    message: &TaskMessage,
) -> Result<Result<MessageRecord, String>, sqlx::Error> {
    let kwargs: SendEmailKwargs =
        match serde_json::from_value(serde_json::Value::Object(message.kwargs.clone())) {
            Ok(k) => k,
            Err(e) => return Ok(Err(format!("invalid arguments: {e}"))),
        };
    if let Some(id) = kwargs.message_id {
        return Ok(messages::get(&ctx.pool, id)
            .await?
            .ok_or_else(|| format!("message {id} does not exist")));
    }
    let new = match new_message_from_kwargs(message.id(), kwargs) {
        Ok(n) => n,
        Err(reason) => return Ok(Err(reason)),
    };
    Ok(Ok(messages::insert_for_task(&ctx.pool, &new).await?))
}

fn new_message_from_kwargs(task_id: &str, kwargs: SendEmailKwargs) -> Result<NewMessage, String> {
    let addresses = |list: Option<platform::tasks::Recipients>| -> Result<Vec<String>, String> {
        list.map(|l| l.into_vec())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                EmailAddress::parse(a)
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string())
            })
            .collect()
    };
    let to = addresses(kwargs.to)?;
    if to.is_empty() {
        return Err("`to` is required (or `message_id`)".into());
    }
    let subject = kwargs.subject.unwrap_or_default();
    if subject.chars().any(char::is_control) {
        return Err("subject must not contain control characters".into());
    }
    let content = kwargs
        .content
        .filter(|c| !c.trim().is_empty())
        .ok_or("`content` is required")?;
    Ok(NewMessage {
        id: Uuid::now_v7(),
        task_id: task_id.to_string(),
        api_key_id: None,
        to,
        cc: addresses(kwargs.cc)?,
        bcc: addresses(kwargs.bcc)?,
        reply_to: kwargs
            .reply_to
            .map(|r| {
                EmailAddress::parse(&r)
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string())
            })
            .transpose()?,
        from_name: kwargs
            .from_name
            .filter(|n| !n.chars().any(char::is_control)),
        subject,
        html_body: content,
        text_body: kwargs.text,
    })
}

async fn retry_or_fail(
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
    store(
        ctx,
        message.id(),
        TaskState::Retry,
        json!({"exc_type": EXC_TYPE, "exc_message": [reason], "exc_module": "builtins"}),
    )
    .await;
    Ok(Outcome::Retry { delay })
}

/// Why a message failed for good, as the `reason` label of `messages_failed_total`.
#[derive(Debug, Clone, Copy)]
enum FailureKind {
    /// The SMTP server refused it (5xx).
    Rejected,
    /// Temporary failures until the retries ran out.
    RetriesExhausted,
    /// It could not be turned into an email.
    Unbuildable,
}

impl FailureKind {
    fn label(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::RetriesExhausted => "retries_exhausted",
            FailureKind::Unbuildable => "unbuildable",
        }
    }
}

async fn fail(
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

/// Capped exponential backoff with full jitter on the upper half.
fn backoff(ctx: &Context, retries: u32) -> Duration {
    let base = ctx.settings.retry_backoff.as_secs_f64() * 2f64.powi(retries.min(20) as i32);
    let capped = base.min(ctx.settings.retry_backoff_max.as_secs_f64());
    let jittered = capped * rand::thread_rng().gen_range(0.5..=1.0);
    Duration::from_secs_f64(jittered.max(1.0))
}

/// Outcome writes after an SMTP transaction are retried until they succeed,
/// however long the database is away: the email is out (or refused), and
/// giving up would send the delivery back to the queue with the record
/// still `sending`, to be sent again once its claim looks abandoned. The
/// delivery stays unacknowledged meanwhile. Only an error in the data
/// itself, which no retry can cure, is returned.
pub(super) async fn persist<F, Fut>(write: F) -> Result<(), sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if platform::db::is_transient(&e) => {
                // Every attempt at first, then every tenth.
                if attempts < 8 || attempts.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempts, retry_in = ?delay, "cannot record the outcome yet");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The Celery result is a convenience for Python callers; PostgreSQL holds
/// the truth, so a Redis failure is logged and does not block the ack.
async fn store(ctx: &Context, task_id: &str, state: TaskState, result: serde_json::Value) {
    if let Err(e) = ctx.results.store(task_id, state, result).await {
        tracing::warn!(task_id, error = %e, "cannot store the task result");
    }
}

async fn store_failure(ctx: &Context, task_id: &str, reason: &str) {
    if let Err(e) = ctx.results.store_failure(task_id, EXC_TYPE, reason).await {
        tracing::warn!(task_id, error = %e, "cannot store the task result");
    }
}
