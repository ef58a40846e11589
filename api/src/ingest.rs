//! Group commit for accepted sends.
//!
//! Every accepted send must be durable (its record and its outbox row
//! committed) before the API answers 202. Committing each request on its
//! own costs a WAL flush per request; instead, concurrent requests hand
//! their rows to a few writer tasks that insert whatever has gathered in
//! one statement and one commit, then answer every waiting request. Under
//! load, batches grow by themselves; alone, a request waits for nothing.
//!
//! The batch is also checked against the suppression list in one query,
//! and its queued messages travel to the worker as `send_email_batch`
//! tasks of up to 50 emails each (see `platform::tasks`), so the broker
//! and the outbox handle one message per batch, not one per email.

use std::sync::{Arc, LazyLock};

use platform::db::messages::{MessageStatus, NewMessage, NewRecord, INSERT_RECORDS};
use platform::db::suppressions;
use platform::outbox::OutboxWaker;
use platform::tasks::{send_email_batch_tasks, BatchMember};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::ApiError;

/// Largest batch one statement writes.
const MAX_BATCH: usize = 500;
/// Most bytes of text one statement carries: the batch travels as one
/// `jsonb` value, which PostgreSQL caps at 256 MiB, and JSON escaping can
/// grow text sixfold. A message larger than this alone is written alone.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Writer tasks: several, so one batch's commit overlaps the next one's gathering.
const WRITERS: usize = 3;

struct Pending {
    message: NewMessage,
    done: oneshot::Sender<Result<MessageStatus, Refusal>>,
}

impl Pending {
    /// Roughly what the message weighs in the batch's statement.
    fn bytes(&self) -> usize {
        let m = &self.message;
        m.subject.len()
            + m.html_body.len()
            + m.text_body.as_ref().map_or(0, String::len)
            + recipients(m).map(String::len).sum::<usize>()
            + 512
    }
}

/// Why a message was not recorded.
#[derive(Debug, Clone)]
enum Refusal {
    /// The database is unreachable or overloaded: try again later (503).
    Unavailable,
    /// The database refused this message's own data (422).
    Unstorable(String),
}

#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Pending>,
}

impl Ingest {
    pub fn start(pool: PgPool, task_queue: String, waker: OutboxWaker) -> Self {
        let (queue, receiver) = mpsc::channel::<Pending>(MAX_BATCH * WRITERS * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WRITERS {
            let receiver = receiver.clone();
            let pool = pool.clone();
            let task_queue = task_queue.clone();
            let waker = waker.clone();
            tokio::spawn(async move {
                // What did not fit the last batch starts the next one.
                let mut carried: Option<Pending> = None;
                loop {
                    let batch = match carried.take() {
                        // Written alone: gathering more would mean waiting
                        // for the receiver, which another writer may hold
                        // until the next send arrives.
                        Some(p) => vec![p],
                        None => {
                            let mut receiver = receiver.lock().await;
                            let Some(first) = receiver.recv().await else {
                                return;
                            };
                            let mut bytes = first.bytes();
                            let mut batch = vec![first];
                            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                                match receiver.try_recv() {
                                    Ok(p) if bytes + p.bytes() > MAX_BATCH_BYTES => {
                                        carried = Some(p);
                                        break;
                                    }
                                    Ok(p) => {
                                        bytes += p.bytes();
                                        batch.push(p);
                                    }
                                    Err(_) => break,
                                }
                            }
                            batch
                        }
                    };
                    let written = write_or_split(&pool, &task_queue, &batch).await;
                    if written.iter().any(Result::is_ok) {
                        waker.wake();
                    }
                    metrics::histogram!("ingest_batch_size").record(batch.len() as f64);
                    for (pending, result) in batch.into_iter().zip(written) {
                        let _ = pending.done.send(result);
                    }
                }
            });
        }
        Ingest { queue }
    }

    /// Records the message and (unless a recipient is suppressed) its task;
    /// returns the recorded status once both are committed.
    #[tracing::instrument(name = "ingest", level = "debug", skip_all,
        fields(message_id = %message.id, task_id = %message.task_id))]
    pub async fn submit(&self, message: NewMessage) -> Result<MessageStatus, ApiError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { message, done })
            .await
            .map_err(|_| ApiError::Unavailable("the API is shutting down".into()))?;
        match wait.await {
            Ok(Ok(status)) => {
                tracing::debug!(status = status.as_str(), "email recorded");
                Ok(status)
            }
            Ok(Err(Refusal::Unavailable)) => Err(ApiError::Unavailable(
                "cannot record the message: the database is unavailable; try again".into(),
            )),
            Ok(Err(Refusal::Unstorable(why))) => Err(ApiError::Validation {
                code: "unstorable_message",
                field: None,
                message: format!("the message cannot be stored: it holds {why}"),
            }),
            Err(_) => Err(ApiError::Unavailable("the API is shutting down".into())),
        }
    }
}

/// Writes the batch in one statement; if the database refuses its data,
/// writes each message on its own, so one bad message fails only itself and
/// never the other clients' sends that share its batch.
#[tracing::instrument(level = "debug", skip_all, fields(size = batch.len()))]
async fn write_or_split(
    pool: &PgPool,
    task_queue: &str,
    batch: &[Pending],
) -> Vec<Result<MessageStatus, Refusal>> {
    let refusal = |e: &sqlx::Error| {
        if platform::db::is_transient(e) {
            tracing::warn!(error = %e, "cannot record accepted messages");
            Refusal::Unavailable
        } else {
            tracing::warn!(error = %e, "the database refused a message");
            Refusal::Unstorable(platform::db::describe(e))
        }
    };
    match write(pool, task_queue, batch).await {
        Ok(statuses) => statuses.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 || platform::db::is_transient(&e) => {
            let refused = refusal(&e);
            batch.iter().map(|_| Err(refused.clone())).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "group commit refused; writing its messages one by one");
            metrics::counter!("ingest_batch_splits_total").increment(1);
            let mut results = Vec::with_capacity(batch.len());
            for pending in batch {
                results.push(
                    match write(pool, task_queue, std::slice::from_ref(pending)).await {
                        Ok(mut statuses) => Ok(statuses.pop().unwrap_or(MessageStatus::Queued)),
                        Err(e) => Err(refusal(&e)),
                    },
                );
            }
            results
        }
    }
}

/// Every recipient of `message`: to, cc, then bcc.
pub(crate) fn recipients(message: &NewMessage) -> impl Iterator<Item = &String> {
    message.to.iter().chain(&message.cc).chain(&message.bcc)
}

/// The error recorded on a message not sent because of `address`.
pub(crate) fn suppressed_error(address: &str) -> String {
    suppressions::reason(address)
}

/// The records (`messages::INSERT_RECORDS`, `$1`) and the outbox rows, in
/// one statement.
static WRITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH m AS ({INSERT_RECORDS} RETURNING 1)
         INSERT INTO outbox (task_id, exchange, routing_key, headers, body, priority)
         SELECT task_id, $3, $3, headers, convert_to(body, 'UTF8'), priority
         FROM jsonb_to_recordset($2) AS t(task_id text, headers jsonb, body text, priority smallint)"
    )
});

/// Two statements for the whole batch: which recipients are suppressed,
/// then the records and the outbox rows (one `send_email_batch` task per
/// [`BATCH_MEMBERS`] queued messages), which commit together or not at all.
#[tracing::instrument(name = "group_commit", level = "debug", skip_all, fields(size = batch.len()))]
async fn write(
    pool: &PgPool,
    task_queue: &str,
    batch: &[Pending],
) -> Result<Vec<MessageStatus>, sqlx::Error> {
    let addresses: Vec<String> = batch
        .iter()
        .flat_map(|p| recipients(&p.message).cloned())
        .collect();
    let suppressed = suppressions::suppressed_among(pool, &addresses).await?;
    let mut statuses = Vec::with_capacity(batch.len());
    let mut members = Vec::with_capacity(batch.len());
    let errors: Vec<Option<String>> = batch
        .iter()
        .map(|p| {
            let m = &p.message;
            let blocked = suppressions::first_of(recipients(m), &suppressed);
            statuses.push(if blocked.is_some() {
                MessageStatus::Suppressed
            } else {
                members.push(BatchMember {
                    message_id: m.id,
                    task_id: m.task_id.clone(),
                });
                MessageStatus::Queued
            });
            blocked.map(|address| suppressed_error(&address))
        })
        .collect();
    let rows: Vec<NewRecord<'_>> = batch
        .iter()
        .zip(&statuses)
        .zip(&errors)
        .map(|((p, status), error)| NewRecord {
            error: error.as_deref(),
            ..NewRecord::of(&p.message, *status)
        })
        .collect();
    let tasks: Vec<Value> = send_email_batch_tasks(&members)
        .iter()
        .map(|task| {
            json!({
                "task_id": task.id(),
                "headers": task.headers_json(),
                "body": String::from_utf8_lossy(&task.body()),
                "priority": task.priority,
            })
        })
        .collect();
    sqlx::query(&WRITE)
        .bind(sqlx::types::Json(&rows))
        .bind(Value::Array(tasks))
        .bind(task_queue)
        .execute(pool)
        .await?;
    Ok(statuses)
}
