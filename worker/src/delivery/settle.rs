//! Recording what happened: outcome writes that outlast a database outage
//! ([`persist`]), and the Celery results Python callers read (`STARTED`,
//! `SUCCESS` with the send's details, `FAILURE`).

use std::time::Duration;

use platform::celery::TaskState;
use platform::db::email_accounts::{self, EmailAccount};
use platform::db::messages::MessageRecord;
use serde_json::json;

use crate::context::Context;

/// Exception type Python sees in `AsyncResult.get()` for a failed send.
pub const EXC_TYPE: &str = "EmailDeliveryError";

/// Outcome writes after an SMTP transaction are retried until they succeed,
/// however long the database is away: the email is out (or refused), and
/// giving up would send the delivery back to the queue with the record
/// still `sending`, to be sent again once its claim looks abandoned. The
/// delivery stays unacknowledged meanwhile. Only an error in the data
/// itself, which no retry can cure, is returned.
pub async fn persist<F, Fut>(write: F) -> Result<(), sqlx::Error>
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
pub async fn store(ctx: &Context, task_id: &str, state: TaskState, result: serde_json::Value) {
    if let Err(e) = ctx.results.store(task_id, state, result).await {
        tracing::warn!(task_id, error = %e, "cannot store the task result");
    }
}

pub async fn store_failure(ctx: &Context, task_id: &str, reason: &str) {
    if let Err(e) = ctx.results.store_failure(task_id, EXC_TYPE, reason).await {
        tracing::warn!(task_id, error = %e, "cannot store the task result");
    }
}

/// What Celery shows for a task that has started (its `result` field).
pub fn started_result(record: &MessageRecord) -> serde_json::Value {
    json!({"message_id": record.id, "pid": std::process::id()})
}

/// The Celery result of a sent email.
pub fn sent_result(
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

/// Accounts that just sent, closing the circuit of those that had failed.
pub async fn recovered<'a>(
    ctx: &Context,
    accounts: impl IntoIterator<Item = &'a EmailAccount>,
) -> Result<(), sqlx::Error> {
    for account in accounts {
        if account.consecutive_failures > 0 || account.circuit_open_until.is_some() {
            email_accounts::record_success(&ctx.pool, account.id).await?;
        }
    }
    Ok(())
}

/// Celery's RETRY state, with the reason as Python sees the exception.
pub async fn store_retry(ctx: &Context, task_id: &str, reason: &str) {
    let result = json!({"exc_type": EXC_TYPE, "exc_message": [reason], "exc_module": "builtins"});
    store(ctx, task_id, TaskState::Retry, result).await;
}
