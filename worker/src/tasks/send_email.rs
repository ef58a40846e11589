//! `notifications.send_email`: one email through the account pool.
//!
//! The record moves `queued → sending → sent|failed` and the delivery is
//! acknowledged only after the outcome is committed. What remains
//! ambiguous: if the worker dies after the SMTP server accepted the message
//! but before `sent` is committed, the record stays `sending`; a later
//! delivery of the same task finds it there and, once the time limit has
//! passed, marks it failed as "outcome unknown" rather than risk sending a
//! second copy.

use std::time::Duration;

use chrono::Utc;
use platform::celery::{TaskMessage, TaskState};
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::{self, MessageRecord, MessageStatus, NewMessage};
use platform::db::{attachments, suppressions};
use platform::mail::{compose, EmailAddress, Envelope};
use platform::tasks::SendEmailKwargs;
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use crate::context::Context;
use crate::delivery::{self, Failure};
use crate::outcome::Outcome;

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
    match record.status() {
        MessageStatus::Queued => {}
        MessageStatus::Sending => return interrupted(ctx, &record).await,
        // Handled by an earlier delivery of this task, or cancelled/suppressed.
        _ => return Ok(Outcome::Done),
    }

    let today = platform::today(&ctx.settings);
    let Some(account) = email_accounts::reserve(&ctx.pool, today).await? else {
        let wait = ctx.settings.quota_wait;
        messages::note_waiting(
            &ctx.pool,
            record.id,
            "waiting for an SMTP account with quota left",
        )
        .await?;
        metrics::counter!("emails_waiting_for_quota_total").increment(1);
        tracing::info!(message_id = %record.id, retry_in = ?wait, "no SMTP account has quota left; message waits");
        return Ok(Outcome::Later { delay: wait });
    };
    let Some(record) = messages::claim(&ctx.pool, record.id, account.id, &account.email).await?
    else {
        // Another delivery of the same task claimed it first.
        email_accounts::release(&ctx.pool, today, account.id).await?;
        return Ok(Outcome::Done);
    };
    // A suppression added after the message was accepted still holds.
    let recipients = [&record.to_addrs[..], &record.cc_addrs, &record.bcc_addrs].concat();
    if let Some(address) = suppressions::first_suppressed(&ctx.pool, &recipients).await? {
        email_accounts::release(&ctx.pool, today, account.id).await?;
        let reason = format!("recipient {address} is on the suppression list");
        messages::mark_suppressed(&ctx.pool, record.id, &reason).await?;
        store_failure(ctx, message.id(), &reason).await;
        return Ok(Outcome::Done);
    }
    send(ctx, message, &record, &account).await
}

async fn send(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    account: &EmailAccount,
) -> Result<Outcome, sqlx::Error> {
    let today = platform::today(&ctx.settings);
    let envelope = Envelope {
        from_email: &account.email,
        from_name: record.from_name.as_deref().unwrap_or(&account.display_name),
        to: &record.to_addrs,
        cc: &record.cc_addrs,
        bcc: &record.bcc_addrs,
        reply_to: record.reply_to.as_deref(),
    };
    let files = attachments::for_message(&ctx.pool, record.id).await?;
    let composed = match compose(
        &envelope,
        &record.subject,
        &record.html_body,
        record.text_body.as_deref(),
        &files,
    ) {
        Ok(c) => c,
        Err(e) => {
            email_accounts::release(&ctx.pool, today, account.id).await?;
            return fail(
                ctx,
                message,
                record,
                &format!("cannot build the email: {e}"),
                None,
            )
            .await;
        }
    };
    let transport = match ctx.transports.get(account) {
        Ok(t) => t,
        Err(e) => {
            let reason = e.to_string();
            email_accounts::release(&ctx.pool, today, account.id).await?;
            email_accounts::record_error(&ctx.pool, account.id, &reason).await?;
            return retry_or_fail(ctx, message, record, &reason, None).await;
        }
    };

    let limit = ctx.settings.task_soft_time_limit;
    match delivery::deliver(&transport, composed.message, limit).await {
        Ok(reply) => {
            persist(|| messages::mark_sent(&ctx.pool, record.id, &composed.message_id, &reply))
                .await?;
            metrics::counter!("emails_sent_total").increment(1);
            tracing::info!(message_id = %record.id, account = %account.email, %reply, "email sent");
            let result = json!({
                "message_id": record.id,
                "status": "sent",
                "account": account.email,
                "smtp_message_id": composed.message_id,
                "smtp_response": reply,
            });
            store(ctx, message.id(), TaskState::Success, result).await;
            Ok(Outcome::Done)
        }
        Err(failure) => {
            email_accounts::release(&ctx.pool, today, account.id).await?;
            match &failure {
                Failure::Permanent { reply } => {
                    fail(
                        ctx,
                        message,
                        record,
                        &format!("rejected by the SMTP server: {reply}"),
                        Some(reply),
                    )
                    .await
                }
                Failure::Account { reply } => {
                    email_accounts::record_error(&ctx.pool, account.id, reply).await?;
                    tracing::warn!(account = %account.email, %reply, "SMTP account refused");
                    retry_or_fail(ctx, message, record, reply, Some(reply)).await
                }
                Failure::Temporary { reply } => {
                    retry_or_fail(ctx, message, record, reply, Some(failure.reply())).await
                }
            }
        }
    }
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

/// A delivery found the message `sending`: another worker has it, or one
/// died mid-send. Wait out the time limit, then give up without resending.
async fn interrupted(ctx: &Context, record: &MessageRecord) -> Result<Outcome, sqlx::Error> {
    let started = record.sending_at.unwrap_or(record.updated_at);
    let lease = ctx.settings.task_time_limit + Duration::from_secs(30);
    let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
    if elapsed < lease {
        return Ok(Outcome::Later {
            delay: lease - elapsed + Duration::from_secs(1),
        });
    }
    let reason = "delivery outcome unknown: the worker stopped during the SMTP transaction; not resent to avoid a duplicate";
    messages::mark_failed(&ctx.pool, record.id, reason, None).await?;
    store_failure(ctx, &record.task_id, reason).await;
    Ok(Outcome::Done)
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
        return fail(ctx, message, record, &reason, reply).await;
    }
    persist(|| messages::mark_retrying(&ctx.pool, record.id, reason, reply)).await?;
    let delay = backoff(ctx, retries);
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

async fn fail(
    ctx: &Context,
    message: &TaskMessage,
    record: &MessageRecord,
    reason: &str,
    reply: Option<&str>,
) -> Result<Outcome, sqlx::Error> {
    persist(|| messages::mark_failed(&ctx.pool, record.id, reason, reply)).await?;
    metrics::counter!("emails_failed_total").increment(1);
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

/// Outcome writes after an SMTP transaction are retried for a while: giving
/// up would leave an accepted email looking unsent.
async fn persist<F, Fut>(write: F) -> Result<(), sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if attempts < 8 => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot record the outcome yet");
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
