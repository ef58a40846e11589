//! Group commit for accepted sends.
//!
//! Every accepted send must be durable (its record and its outbox row
//! committed) before the API answers 202. Committing each request on its
//! own costs a WAL flush per request; instead, concurrent requests hand
//! their rows to a few writer tasks that insert whatever has gathered in
//! one statement and one commit, then answer every waiting request. Under
//! load, batches grow by themselves; alone, a request waits for nothing.

use std::sync::Arc;

use platform::celery::TaskMessage;
use platform::db::messages::NewMessage;
use platform::outbox::OutboxWaker;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::ApiError;

/// Largest batch one statement writes.
const MAX_BATCH: usize = 500;
/// Writer tasks: several, so one batch's commit overlaps the next one's gathering.
const WRITERS: usize = 3;

struct Pending {
    message: NewMessage,
    task: TaskMessage,
    done: oneshot::Sender<Result<(), String>>,
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
                loop {
                    let batch = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match receiver.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    let result = write(&pool, &task_queue, &batch)
                        .await
                        .map_err(|e| e.to_string());
                    if result.is_ok() {
                        waker.wake();
                        metrics::histogram!("ingest_batch_size").record(batch.len() as f64);
                    }
                    for pending in batch {
                        let _ = pending.done.send(result.clone());
                    }
                }
            });
        }
        Ingest { queue }
    }

    /// Records the message and its task; returns once both are committed.
    pub async fn submit(&self, message: NewMessage, task: TaskMessage) -> Result<(), ApiError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending {
                message,
                task,
                done,
            })
            .await
            .map_err(|_| ApiError::Unavailable("the API is shutting down".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Unavailable(format!(
                "cannot record the message: {e}"
            ))),
            Err(_) => Err(ApiError::Unavailable("the API is shutting down".into())),
        }
    }
}

/// One statement: records and outbox rows of the whole batch, so they
/// commit together or not at all.
async fn write(pool: &PgPool, task_queue: &str, batch: &[Pending]) -> Result<(), sqlx::Error> {
    let messages: Vec<Value> = batch
        .iter()
        .map(|p| {
            let m = &p.message;
            json!({
                "id": m.id, "task_id": m.task_id, "api_key_id": m.api_key_id,
                "to_addrs": m.to, "cc_addrs": m.cc, "bcc_addrs": m.bcc,
                "reply_to": m.reply_to, "from_name": m.from_name, "subject": m.subject,
                "html_body": m.html_body, "text_body": m.text_body,
            })
        })
        .collect();
    let tasks: Vec<Value> = batch
        .iter()
        .map(|p| {
            json!({
                "task_id": p.task.id(),
                "headers": p.task.headers_json(),
                "body": String::from_utf8_lossy(&p.task.body()),
                "priority": p.task.priority,
            })
        })
        .collect();
    sqlx::query(
        "WITH m AS (
            INSERT INTO message_records (id, task_id, api_key_id, status, to_addrs, cc_addrs, bcc_addrs,
                reply_to, from_name, subject, html_body, text_body, queued_at)
            SELECT id, task_id, api_key_id, 'queued', to_addrs, cc_addrs, bcc_addrs,
                reply_to, from_name, subject, html_body, text_body, now()
            FROM jsonb_to_recordset($1) AS x(id uuid, task_id text, api_key_id uuid, to_addrs text[],
                cc_addrs text[], bcc_addrs text[], reply_to text, from_name text, subject text,
                html_body text, text_body text)
            RETURNING 1
         )
         INSERT INTO outbox (task_id, exchange, routing_key, headers, body, priority)
         SELECT task_id, $3, $3, headers, convert_to(body, 'UTF8'), priority
         FROM jsonb_to_recordset($2) AS t(task_id text, headers jsonb, body text, priority smallint)",
    )
    .bind(Value::Array(messages))
    .bind(Value::Array(tasks))
    .bind(task_queue)
    .execute(pool)
    .await?;
    Ok(())
}
