//! `message_records`: one row per email, from acceptance to its outcome.
//!
//! Status moves `queued → sending → sent | failed`, and back from `sending`
//! to `queued` only for a retry. The `queued → sending` claim is a
//! conditional UPDATE, so of two deliveries of the same task (a redelivery,
//! or a message the outbox published twice) only one ever reaches SMTP.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::mail::unsubscribe::Scope;

/// The sender's own labels on a message (`metadata` on a send), echoed in
/// the message and its webhook events; [`crate::mail::rules::metadata`]
/// bounds them.
pub type Metadata = BTreeMap<String, String>;

/// The states of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Scheduled,
    Queued,
    Sending,
    Sent,
    Failed,
    Suppressed,
    Cancelled,
    /// Sent, then reported undeliverable by the receiving side (a hard bounce).
    Bounced,
    /// Sent, then reported as unwanted by its recipient (an abuse report).
    Complained,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Scheduled => "scheduled",
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Suppressed => "suppressed",
            MessageStatus::Cancelled => "cancelled",
            MessageStatus::Bounced => "bounced",
            MessageStatus::Complained => "complained",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            MessageStatus::Scheduled,
            MessageStatus::Queued,
            MessageStatus::Sending,
            MessageStatus::Sent,
            MessageStatus::Failed,
            MessageStatus::Suppressed,
            MessageStatus::Cancelled,
            MessageStatus::Bounced,
            MessageStatus::Complained,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageStatus::Sent
                | MessageStatus::Failed
                | MessageStatus::Suppressed
                | MessageStatus::Cancelled
                | MessageStatus::Bounced
                | MessageStatus::Complained
        )
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRecord {
    pub id: Uuid,
    pub task_id: String,
    pub api_key_id: Option<Uuid>,
    pub status: String,
    pub to_addrs: Vec<String>,
    pub cc_addrs: Vec<String>,
    pub bcc_addrs: Vec<String>,
    pub reply_to: Option<String>,
    pub from_name: Option<String>,
    pub subject: String,
    pub html_body: String,
    pub text_body: Option<String>,
    pub account_id: Option<Uuid>,
    pub account_email: Option<String>,
    pub smtp_message_id: Option<String>,
    pub smtp_response: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub send_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub queued_at: Option<DateTime<Utc>>,
    pub sending_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(default)]
    pub campaign_id: Option<Uuid>,
    #[sqlx(default)]
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The worker (by its lease id) that last claimed it.
    #[sqlx(default)]
    pub claimed_by: Option<String>,
    /// When a `queued` record's broker message is next expected back.
    #[sqlx(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// How often the reconciler has published it again.
    #[sqlx(default)]
    pub republished: i32,
    #[sqlx(default)]
    pub metadata: Option<sqlx::types::Json<Metadata>>,
    /// `list` or `global`: the message carries a one-click unsubscribe
    /// link of that scope (NULL: none).
    #[sqlx(default)]
    pub unsubscribe_scope: Option<String>,
}

impl MessageRecord {
    pub fn status(&self) -> MessageStatus {
        MessageStatus::parse(&self.status).unwrap_or(MessageStatus::Failed)
    }
}

/// An email as accepted, before it is recorded.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub task_id: String,
    pub api_key_id: Option<Uuid>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    pub from_name: Option<String>,
    pub subject: String,
    pub html_body: String,
    pub text_body: Option<String>,
    pub metadata: Option<Metadata>,
    /// A one-click unsubscribe link of this scope goes with it.
    pub unsubscribe_scope: Option<Scope>,
}

/// A message record as first written: every column a writer may set.
/// Columns left `None` take their defaults: `created_at` and `updated_at`
/// now, `queued_at` now for a `queued` row, `attempts` 0, the rest NULL.
#[derive(Debug, Clone, Serialize)]
pub struct NewRecord<'a> {
    pub id: Uuid,
    pub task_id: &'a str,
    pub status: MessageStatus,
    pub to_addrs: &'a [String],
    pub cc_addrs: &'a [String],
    pub bcc_addrs: &'a [String],
    pub subject: &'a str,
    pub html_body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_body: Option<&'a str>,
    /// Why it is not (or not yet) sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_run_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe_scope: Option<Scope>,
}

impl<'a> NewRecord<'a> {
    /// A row in `status` to `to_addrs`, every other column its default.
    pub fn new(
        id: Uuid,
        task_id: &'a str,
        status: MessageStatus,
        to_addrs: &'a [String],
        subject: &'a str,
        html_body: &'a str,
    ) -> Self {
        NewRecord {
            id,
            task_id,
            status,
            to_addrs,
            cc_addrs: &[],
            bcc_addrs: &[],
            subject,
            html_body,
            api_key_id: None,
            reply_to: None,
            from_name: None,
            text_body: None,
            error: None,
            send_at: None,
            campaign_id: None,
            campaign_run_id: None,
            account_id: None,
            account_email: None,
            attempts: None,
            created_at: None,
            queued_at: None,
            sent_at: None,
            failed_at: None,
            updated_at: None,
            metadata: None,
            unsubscribe_scope: None,
        }
    }

    /// `new` as a record in `status`.
    pub fn of(new: &'a NewMessage, status: MessageStatus) -> Self {
        NewRecord {
            cc_addrs: &new.cc,
            bcc_addrs: &new.bcc,
            api_key_id: new.api_key_id,
            reply_to: new.reply_to.as_deref(),
            from_name: new.from_name.as_deref(),
            text_body: new.text_body.as_deref(),
            metadata: new.metadata.as_ref(),
            unsubscribe_scope: new.unsubscribe_scope,
            ..Self::new(
                new.id,
                &new.task_id,
                status,
                &new.to,
                &new.subject,
                &new.html_body,
            )
        }
    }
}

macro_rules! insert_records_sql {
    () => {
        "INSERT INTO message_records (id, task_id, api_key_id, status, error, to_addrs, cc_addrs,
            bcc_addrs, reply_to, from_name, subject, html_body, text_body, send_at, campaign_id,
            campaign_run_id, account_id, account_email, attempts, created_at, queued_at, sent_at,
            failed_at, updated_at, metadata, unsubscribe_scope)
         SELECT id, task_id, api_key_id, status, error, to_addrs, cc_addrs, bcc_addrs, reply_to,
            from_name, subject, html_body, text_body, send_at, campaign_id, campaign_run_id,
            account_id, account_email, COALESCE(attempts, 0), COALESCE(created_at, now()),
            COALESCE(queued_at, CASE WHEN status = 'queued' THEN now() END), sent_at, failed_at,
            COALESCE(updated_at, now()), metadata, unsubscribe_scope
         FROM jsonb_to_recordset($1) AS x(id uuid, task_id text, api_key_id uuid, status text,
            error text, to_addrs text[], cc_addrs text[], bcc_addrs text[], reply_to text,
            from_name text, subject text, html_body text, text_body text, send_at timestamptz,
            campaign_id uuid, campaign_run_id uuid, account_id uuid, account_email text,
            attempts integer, created_at timestamptz, queued_at timestamptz, sent_at timestamptz,
            failed_at timestamptz, updated_at timestamptz, metadata jsonb,
            unsubscribe_scope text)"
    };
}
/// The one statement that writes message records: the rows ([`NewRecord`]s
/// as a JSON array) are `$1`, so any number of them take one statement.
/// The API's group commit runs it inside its own statement, beside the
/// outbox rows; everything else through [`insert_records`].
pub const INSERT_RECORDS: &str = insert_records_sql!();

/// What [`insert_records`] does with a row whose task id is already recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskIdTaken {
    /// The statement fails (a fresh task id cannot be taken).
    Fail,
    /// The row is left out and the recorded one kept (a redelivered task,
    /// an import run again).
    Keep,
}

/// Writes `rows` in one statement; returns how many were written.
#[tracing::instrument(level = "debug", skip_all, fields(rows = rows.len()))]
pub async fn insert_records(
    executor: impl PgExecutor<'_>,
    rows: &[NewRecord<'_>],
    taken: TaskIdTaken,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sql = match taken {
        TaskIdTaken::Fail => INSERT_RECORDS,
        TaskIdTaken::Keep => concat!(insert_records_sql!(), " ON CONFLICT (task_id) DO NOTHING"),
    };
    let done = sqlx::query(sql)
        .bind(sqlx::types::Json(rows))
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// Records `new` as `queued`.
pub async fn insert(executor: impl PgExecutor<'_>, new: &NewMessage) -> Result<(), sqlx::Error> {
    let row = NewRecord::of(new, MessageStatus::Queued);
    insert_records(executor, &[row], TaskIdTaken::Fail).await?;
    Ok(())
}

/// Records a message that arrived as a task without a record (a Python
/// producer calling `send_task` directly). A redelivery finds the row the
/// first delivery wrote.
#[tracing::instrument(level = "debug", skip_all, fields(task_id = %new.task_id))]
pub async fn insert_for_task(
    pool: &PgPool,
    new: &NewMessage,
) -> Result<MessageRecord, sqlx::Error> {
    let row = NewRecord::of(new, MessageStatus::Queued);
    insert_records(pool, &[row], TaskIdTaken::Keep).await?;
    sqlx::query_as("SELECT * FROM message_records WHERE task_id = $1")
        .bind(&new.task_id)
        .fetch_one(pool)
        .await
}

/// Records, `failed` with `error`, a message that arrived as a task without
/// a record and broke a rule; a redelivery leaves the first row as it is.
#[tracing::instrument(level = "debug", skip_all, fields(task_id = %new.task_id))]
pub async fn insert_failed_for_task(
    pool: &PgPool,
    new: &NewMessage,
    error: &str,
) -> Result<(), sqlx::Error> {
    let row = NewRecord {
        error: Some(error),
        failed_at: Some(Utc::now()),
        ..NewRecord::of(new, MessageStatus::Failed)
    };
    insert_records(pool, &[row], TaskIdTaken::Keep).await?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all, fields(message_id = %id))]
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<MessageRecord>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM message_records WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Whether the worker that claimed a `sending` record still holds a live
/// lease, and for how long (`None`: it is gone). A claim that names no
/// worker (made before leases existed) counts as live: only the hard time
/// limit says it is abandoned.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %record.id))]
pub async fn claimant_lease(
    pool: &PgPool,
    record: &MessageRecord,
) -> Result<Option<std::time::Duration>, sqlx::Error> {
    match &record.claimed_by {
        Some(worker) => crate::db::worker_leases::remaining(pool, worker).await,
        None => Ok(Some(std::time::Duration::MAX)),
    }
}

/// Final failure. Also accepts a queued message (one that could not even be
/// attempted, such as an undeliverable address).
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %id))]
pub async fn mark_failed(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    smtp_response: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE message_records SET status = 'failed', error = $2,
            smtp_response = COALESCE($3, smtp_response), failed_at = now(), updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'sending')",
    )
    .bind(id)
    .bind(error)
    .bind(smtp_response)
    .execute(pool)
    .await?;
    Ok(())
}

/// A temporary failure: the message goes back to `queued` for a retry,
/// due back from the broker after `due_in`.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %id))]
pub async fn mark_retrying(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    smtp_response: Option<&str>,
    due_in: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE message_records SET status = 'queued', error = $2,
            smtp_response = COALESCE($3, smtp_response),
            due_at = now() + make_interval(secs => $4), updated_at = now()
         WHERE id = $1 AND status = 'sending'",
    )
    .bind(id)
    .bind(error)
    .bind(smtp_response)
    .bind(due_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Notes why queued messages are waiting (for quota, a throttle) and when
/// each is due back, without changing their status: one reason and delay
/// per id, in one statement.
#[tracing::instrument(level = "debug", skip_all, fields(count = ids.len()))]
pub async fn note_waiting(
    pool: &PgPool,
    ids: &[Uuid],
    reasons: &[String],
    due_in: &[std::time::Duration],
) -> Result<(), sqlx::Error> {
    let seconds: Vec<f64> = due_in.iter().map(|d| d.as_secs_f64()).collect();
    sqlx::query(
        "UPDATE message_records m SET error = w.reason,
            due_at = now() + make_interval(secs => w.secs), updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::float8[]) AS w(id, reason, secs)
         WHERE m.id = w.id AND m.status = 'queued'",
    )
    .bind(ids)
    .bind(reasons)
    .bind(&seconds)
    .execute(pool)
    .await?;
    Ok(())
}

/// The recipients (to, cc and bcc) of the records among `ids` that may
/// still be sent (`queued`, or `sending` under a claim that may have
/// lapsed), for the recipient domains' throttles.
#[tracing::instrument(level = "debug", skip_all, fields(count = ids.len()))]
pub async fn recipients(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Vec<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, to_addrs || cc_addrs || bcc_addrs FROM message_records
         WHERE id = ANY($1) AND status IN ('queued', 'sending')",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Puts a failed message back in the queue (an operator requeued its dead
/// letter).
pub async fn requeue_failed(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE message_records SET status = 'queued', failed_at = NULL, updated_at = now()
         WHERE id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(level = "debug", skip_all, fields(count = ids.len()))]
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<MessageRecord>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM message_records WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// A record [`claim`] claimed, with what sending it needs to know
/// besides, read in the same statement.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    #[sqlx(flatten)]
    pub record: MessageRecord,
    /// The first (alphabetically) recipient now on the suppression list.
    pub suppressed: Option<String>,
    pub has_attachments: bool,
    /// It was `sending` under a claim that lapsed: its first attempt's
    /// outcome is unknown.
    pub reclaimed: bool,
}

/// The record `id`, locked against other changes until the end of the
/// transaction (but not against rows that reference it, such as its
/// timeline's), so an event recorded beside it sees its current status.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %id))]
pub async fn get_locked(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<MessageRecord>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM message_records WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Claims messages for sending, each through its account, on behalf of the
/// worker `claimant` (its lease id): queued ones, and ones left `sending`
/// by a worker that died (their outcome unknown: each is sent again with
/// the same Message-ID, which lets receivers drop a duplicate). A worker
/// counts as dead once its lease has lapsed, or, whatever its lease says,
/// once the claim is older than `stale_before` (the hard time limit).
/// Returns those claimed, each with its suppression and attachment checks;
/// a message held by another delivery, final, or missing is left out.
#[tracing::instrument(level = "debug", skip_all, fields(count = ids.len()))]
pub async fn claim(
    pool: &PgPool,
    ids: &[Uuid],
    account_ids: &[Uuid],
    account_emails: &[String],
    stale_before: DateTime<Utc>,
    claimant: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // `was` is the row as it stood before (RETURNING shows the new one);
    // it only tells a reclaim from a first claim. The WHERE clause reads
    // `m`, which PostgreSQL re-checks after waiting for a concurrent writer.
    sqlx::query_as(
        "UPDATE message_records m SET status = 'sending', attempts = m.attempts + 1, sending_at = now(),
            account_id = c.account_id, account_email = c.account_email, claimed_by = $5,
            due_at = NULL, updated_at = now()
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]) AS c(id, account_id, account_email)
         JOIN message_records was ON was.id = c.id
         WHERE m.id = c.id AND (m.status = 'queued' OR (m.status = 'sending' AND (m.sending_at < $4
            OR (m.claimed_by IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM worker_leases l
                 WHERE l.worker_id = m.claimed_by AND l.expires_at > now())))))
         RETURNING m.*,
            (SELECT s.address FROM suppressions s
             WHERE s.address = ANY(SELECT lower(a)
                                   FROM unnest(m.to_addrs || m.cc_addrs || m.bcc_addrs) AS a)
             ORDER BY s.address LIMIT 1) AS suppressed,
            EXISTS (SELECT 1 FROM message_attachments f WHERE f.message_id = m.id) AS has_attachments,
            was.status = 'sending' AS reclaimed",
    )
    .bind(ids)
    .bind(account_ids)
    .bind(account_emails)
    .bind(stale_before)
    .bind(claimant)
    .fetch_all(pool)
    .await
}

/// Records messages sent, each with its Message-ID and the server's reply.
#[tracing::instrument(level = "debug", skip_all, fields(count = ids.len()))]
pub async fn mark_sent(
    pool: &PgPool,
    ids: &[Uuid],
    smtp_message_ids: &[String],
    smtp_responses: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE message_records m SET status = 'sent', smtp_message_id = s.message_id,
            smtp_response = s.response, error = NULL, sent_at = now(), updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS s(id, message_id, response)
         WHERE m.id = s.id AND m.status = 'sending'",
    )
    .bind(ids)
    .bind(smtp_message_ids)
    .bind(smtp_responses)
    .execute(pool)
    .await?;
    Ok(())
}

/// How an accepted message starts: `queued` (with an outbox row),
/// `scheduled` (released later by the scheduler), or `suppressed` (a
/// recipient is on the suppression list; never sent).
#[derive(Debug, Clone)]
pub struct Acceptance {
    pub status: MessageStatus,
    pub send_at: Option<DateTime<Utc>>,
    pub campaign_id: Option<Uuid>,
    /// Why a message is not sent (for `suppressed`).
    pub error: Option<String>,
}

/// Records a message accepted by the API in the state `acceptance` says.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %new.id, task_id = %new.task_id))]
pub async fn insert_accepted(
    executor: impl PgExecutor<'_>,
    new: &NewMessage,
    acceptance: &Acceptance,
) -> Result<(), sqlx::Error> {
    let row = NewRecord {
        send_at: acceptance.send_at,
        campaign_id: acceptance.campaign_id,
        error: acceptance.error.as_deref(),
        ..NewRecord::of(new, acceptance.status)
    };
    insert_records(executor, &[row], TaskIdTaken::Fail).await?;
    Ok(())
}

/// Cancels a message that is still `scheduled` or `queued`. The worker's
/// claim is the conditional UPDATE `queued → sending`, so of a cancel and a
/// claim racing, exactly one wins. `owner` restricts to one API key's messages.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %id))]
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<MessageRecord>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE message_records SET status = 'cancelled', cancelled_at = now(), updated_at = now()
         WHERE id = $1 AND status IN ('scheduled', 'queued')
           AND ($2::uuid IS NULL OR api_key_id = $2)
         RETURNING *",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await
}

/// Cancels the record of a task that will not run (revoked or expired),
/// with `reason` as its error, if it is still waiting: by its record id
/// (an API-published send) or else by the task id (a Python producer's,
/// recorded under it). Returns whether a record was cancelled.
#[tracing::instrument(level = "debug", skip(pool, reason))]
pub async fn cancel_task(
    pool: &PgPool,
    record: Option<Uuid>,
    task_id: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let by = if record.is_some() {
        "id = $1"
    } else {
        "task_id = $2"
    };
    let done = sqlx::query(&format!(
        "UPDATE message_records SET status = 'cancelled', cancelled_at = now(), error = $3,
            updated_at = now()
         WHERE {by} AND status IN ('scheduled', 'queued')"
    ))
    .bind(record)
    .bind(task_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The worker found a recipient on the suppression list after claiming the
/// message: it is not sent.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %id))]
pub async fn mark_suppressed(pool: &PgPool, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE message_records SET status = 'suppressed', error = $2, updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'sending')",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Filters of a message listing; `None` means any.
#[derive(Debug, Default, Clone)]
pub struct MessageFilter {
    pub api_key_id: Option<Uuid>,
    pub status: Option<MessageStatus>,
    /// Matches any of to, cc and bcc, case-insensitively.
    pub recipient: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_until: Option<DateTime<Utc>>,
    pub campaign_id: Option<Uuid>,
    /// Keyset position: rows strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

/// Messages newest first, ordered by (created_at, id) descending.
pub async fn list(
    pool: &PgPool,
    filter: &MessageFilter,
    limit: i64,
) -> Result<Vec<MessageRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM message_records
         WHERE ($1::uuid IS NULL OR api_key_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR EXISTS (
                 SELECT 1 FROM unnest(to_addrs || cc_addrs || bcc_addrs) AS a WHERE lower(a) = lower($3)))
           AND ($4::timestamptz IS NULL OR created_at >= $4)
           AND ($5::timestamptz IS NULL OR created_at < $5)
           AND ($6::uuid IS NULL OR campaign_id = $6)
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
         ORDER BY created_at DESC, id DESC
         LIMIT $9",
    )
    .bind(filter.api_key_id)
    .bind(filter.status.map(MessageStatus::as_str))
    .bind(&filter.recipient)
    .bind(filter.created_from)
    .bind(filter.created_until)
    .bind(filter.campaign_id)
    .bind(filter.before.map(|b| b.0))
    .bind(filter.before.map(|b| b.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DailyCount {
    pub day: chrono::NaiveDate,
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountCount {
    pub account_id: Option<Uuid>,
    pub account_email: Option<String>,
    pub status: String,
    pub count: i64,
}

/// Counts per day (in `tz`) and status, and per account and status, of
/// messages created in [from, until).
pub async fn stats(
    pool: &PgPool,
    api_key_id: Option<Uuid>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    tz: &str,
) -> Result<(Vec<DailyCount>, Vec<AccountCount>), sqlx::Error> {
    let daily = sqlx::query_as(
        "SELECT (created_at AT TIME ZONE $4)::date AS day, status, count(*) AS count
         FROM message_records
         WHERE ($1::uuid IS NULL OR api_key_id = $1) AND created_at >= $2 AND created_at < $3
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(api_key_id)
    .bind(from)
    .bind(until)
    .bind(tz)
    .fetch_all(pool)
    .await?;
    let accounts = sqlx::query_as(
        "SELECT account_id, max(account_email) AS account_email, status, count(*) AS count
         FROM message_records
         WHERE ($1::uuid IS NULL OR api_key_id = $1) AND created_at >= $2 AND created_at < $3
         GROUP BY account_id, status ORDER BY account_id NULLS FIRST, status",
    )
    .bind(api_key_id)
    .bind(from)
    .bind(until)
    .fetch_all(pool)
    .await?;
    Ok((daily, accounts))
}

/// A `scheduled` message the scheduler has just set `queued`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Released {
    pub id: Uuid,
    pub task_id: String,
    pub send_at: Option<DateTime<Utc>>,
}

/// Sets the `limit` earliest due `scheduled` messages (`send_at <=
/// now()`) `queued`, in `tx`. Rows another scheduler has locked are
/// skipped (their turn is the other's), and a message cancelled before
/// the lock is taken no longer matches the
/// status condition, so each message is released at most once; the caller
/// writes the outbox rows in the same transaction.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn release_due(
    tx: &mut sqlx::PgConnection,
    limit: i64,
) -> Result<Vec<Released>, sqlx::Error> {
    sqlx::query_as(
        // The due ones from `live_messages` (V21), then their records
        // locked: only message rows are ever locked first.
        "WITH due AS (
             SELECT id FROM message_records
              WHERE id = ANY (ARRAY(SELECT id FROM live_messages
                                     WHERE release_at <= now()
                                     ORDER BY release_at LIMIT $1))
                AND status = 'scheduled'
                FOR UPDATE SKIP LOCKED)
         UPDATE message_records m
            SET status = 'queued', queued_at = now(), updated_at = now()
           FROM due
          WHERE m.id = due.id AND m.status = 'scheduled'
         RETURNING m.id, m.task_id, m.send_at",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// A message waiting for its time (`celery inspect scheduled`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Waiting {
    pub id: Uuid,
    pub task_id: String,
    /// When it is due: a `scheduled` message's `send_at`, a waiting or
    /// retrying one's `due_at`.
    pub eta: DateTime<Utc>,
    /// A campaign's (it travels on the bulk queue).
    pub bulk: bool,
}

/// Up to `limit` messages waiting for their time, soonest first:
/// `scheduled` ones (held here until their `send_at`) and `queued` ones
/// due back later (a retry or a wait, held in the delay ladder).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn waiting(pool: &PgPool, limit: i64) -> Result<Vec<Waiting>, sqlx::Error> {
    sqlx::query_as(
        "(SELECT id, task_id, send_at AS eta, campaign_run_id IS NOT NULL AS bulk
            FROM message_records
           WHERE id = ANY (ARRAY(SELECT id FROM live_messages
                                  WHERE release_at IS NOT NULL
                                  ORDER BY release_at LIMIT $1))
             AND status = 'scheduled')
         UNION ALL
         (SELECT id, task_id, due_at AS eta, campaign_run_id IS NOT NULL AS bulk
            FROM message_records
           WHERE id = ANY (ARRAY(SELECT id FROM live_messages WHERE release_at IS NULL))
             AND status = 'queued' AND due_at > now()
           ORDER BY due_at LIMIT $1)
         ORDER BY eta LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The earliest `send_at` of a `scheduled` message, if any.
pub async fn next_scheduled(
    executor: impl PgExecutor<'_>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(release_at) FROM live_messages")
        .fetch_one(executor)
        .await
}

/// A campaign email to one recipient, rendered.
#[derive(Debug, Clone)]
pub struct CampaignMessage {
    pub id: Uuid,
    pub task_id: String,
    pub to: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: Option<String>,
}

/// Records a batch of a campaign run's messages `queued`, in one statement
/// (their outbox rows are written by the caller in the same transaction),
/// each with an unsubscribe link of the campaign's `unsubscribe`.
#[tracing::instrument(level = "debug", skip_all, fields(campaign = %campaign_id, run = %run_id, count = batch.len()))]
pub async fn insert_campaign_messages(
    executor: impl PgExecutor<'_>,
    campaign_id: Uuid,
    run_id: Uuid,
    unsubscribe: Scope,
    batch: &[CampaignMessage],
) -> Result<(), sqlx::Error> {
    let rows: Vec<NewRecord<'_>> = batch
        .iter()
        .map(|m| NewRecord {
            text_body: m.text_body.as_deref(),
            campaign_id: Some(campaign_id),
            campaign_run_id: Some(run_id),
            unsubscribe_scope: Some(unsubscribe),
            ..NewRecord::new(
                m.id,
                &m.task_id,
                MessageStatus::Queued,
                std::slice::from_ref(&m.to),
                &m.subject,
                &m.html_body,
            )
        })
        .collect();
    insert_records(executor, &rows, TaskIdTaken::Fail).await?;
    Ok(())
}

/// A record the reconciler publishes again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stray {
    pub id: Uuid,
    pub task_id: String,
    /// A campaign's message: it goes back to the bulk queue.
    pub bulk: bool,
}

/// Which of the consumed queues hold no ready messages.
#[derive(Debug, Clone, Copy)]
pub struct IdleQueues {
    pub tasks: bool,
    pub bulk: bool,
}

/// Finds up to `limit` records whose broker message must be gone, and
/// notes in `tx` that they are published again (the caller writes their
/// outbox rows in the same transaction): `queued` ones left more than
/// `after` past their due time, and `sending` ones as long, whose claimant's
/// lease has lapsed or whose claim is older than `stale_before` (the hard
/// time limit); only those bound for a queue that `idle` says holds no
/// ready messages (one that does is still draining a backlog). Each is then
/// due at once, and is not picked again before twice as long has passed as
/// the last time (at most 64 times `after`): a record that was only slow
/// gains a few copies, not one per pass. The longest-forgotten come first.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn take_strays(
    tx: &mut sqlx::PgConnection,
    after: std::time::Duration,
    stale_before: DateTime<Utc>,
    idle: IdleQueues,
    limit: i64,
) -> Result<Vec<Stray>, sqlx::Error> {
    if !idle.tasks && !idle.bulk {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "WITH stray AS (
             SELECT id FROM message_records m
              WHERE id = ANY (ARRAY(SELECT id FROM live_messages WHERE release_at IS NULL))
                AND status IN ('queued', 'sending')
                AND COALESCE(due_at, updated_at)
                    < now() - make_interval(secs => $1 * power(2, least(republished, 6)))
                AND (status = 'queued' OR sending_at < $2 OR (m.claimed_by IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM worker_leases l
                                      WHERE l.worker_id = m.claimed_by AND l.expires_at > now())))
                AND CASE WHEN campaign_run_id IS NULL THEN $4 ELSE $5 END
              ORDER BY COALESCE(due_at, updated_at) LIMIT $3
                FOR UPDATE SKIP LOCKED)
         UPDATE message_records m SET due_at = now(), republished = republished + 1
           FROM stray WHERE m.id = stray.id
         RETURNING m.id, m.task_id, m.campaign_run_id IS NOT NULL AS bulk",
    )
    .bind(after.as_secs_f64())
    .bind(stale_before)
    .bind(limit)
    .bind(idle.tasks)
    .bind(idle.bulk)
    .fetch_all(tx)
    .await
}

/// Final message records carried over from the Python platform, as
/// parallel columns (one statement per batch).
#[derive(Default)]
pub struct ImportedMessages {
    pub task_ids: Vec<String>,
    pub api_key_ids: Vec<Option<Uuid>>,
    /// `sent` or `failed`.
    pub statuses: Vec<String>,
    /// Comma-separated recipients, as the Python platform stored them.
    pub recipients: Vec<String>,
    pub subjects: Vec<String>,
    pub bodies: Vec<String>,
    pub account_ids: Vec<Option<Uuid>>,
    pub account_emails: Vec<Option<String>>,
    pub errors: Vec<Option<String>>,
    pub attempts: Vec<i32>,
    pub created_at: Vec<DateTime<Utc>>,
    /// When it was sent or failed.
    pub finished_at: Vec<Option<DateTime<Utc>>>,
}

impl ImportedMessages {
    pub fn len(&self) -> usize {
        self.task_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.task_ids.is_empty()
    }
}

/// Inserts imported records; a task id already recorded (an earlier run, or
/// a task our worker already handled) is kept as it is. Returns how many
/// were inserted.
#[tracing::instrument(level = "debug", skip_all, fields(count = batch.len()))]
pub async fn insert_imported(
    executor: impl PgExecutor<'_>,
    batch: &ImportedMessages,
) -> Result<u64, sqlx::Error> {
    // The Python platform's recipients, comma-separated, one address each.
    let recipients: Vec<Vec<String>> = batch
        .recipients
        .iter()
        .map(|list| {
            list.split(',')
                .map(|a| a.trim_matches(' '))
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect();
    let rows: Vec<NewRecord<'_>> = (0..batch.len())
        .map(|i| {
            let status = MessageStatus::parse(&batch.statuses[i]).unwrap_or(MessageStatus::Failed);
            let finished = batch.finished_at[i];
            NewRecord {
                api_key_id: batch.api_key_ids[i],
                error: batch.errors[i].as_deref(),
                account_id: batch.account_ids[i],
                account_email: batch.account_emails[i].as_deref(),
                attempts: Some(batch.attempts[i]),
                created_at: Some(batch.created_at[i]),
                queued_at: Some(batch.created_at[i]),
                sent_at: finished.filter(|_| status == MessageStatus::Sent),
                failed_at: finished.filter(|_| status == MessageStatus::Failed),
                updated_at: Some(finished.unwrap_or(batch.created_at[i])),
                ..NewRecord::new(
                    Uuid::now_v7(),
                    &batch.task_ids[i],
                    status,
                    &recipients[i],
                    &batch.subjects[i],
                    &batch.bodies[i],
                )
            }
        })
        .collect();
    insert_records(executor, &rows, TaskIdTaken::Keep).await
}

/// Sends per time bucket since `since` (`bucket`: `minute` or `hour`,
/// PostgreSQL's `date_trunc` unit): accepted, sent, failed and bounced
/// counts, optionally of one key's messages (`owner`).
pub async fn per_bucket(
    pool: &PgPool,
    since: DateTime<Utc>,
    bucket: Bucket,
    owner: Option<Uuid>,
) -> Result<Vec<(DateTime<Utc>, String, i64)>, sqlx::Error> {
    // A message sent or failed in the window was accepted at most a day
    // before it (retries and quota waits included): the creation index
    // bounds the scan.
    sqlx::query_as(
        "WITH m AS (SELECT id, created_at, sent_at, failed_at FROM message_records
                     WHERE created_at >= $1 - interval '1 day'
                       AND ($2::uuid IS NULL OR api_key_id = $2))
         SELECT at, kind, count(*) FROM (
             SELECT date_trunc($3, created_at) AS at, 'accepted' AS kind
               FROM m WHERE created_at >= $1
             UNION ALL
             SELECT date_trunc($3, sent_at), 'sent' FROM m WHERE sent_at >= $1
             UNION ALL
             SELECT date_trunc($3, failed_at), 'failed' FROM m WHERE failed_at >= $1
             UNION ALL
             SELECT date_trunc($3, b.created_at), 'bounced' FROM bounces b
              WHERE b.created_at >= $1
                AND ($2::uuid IS NULL OR b.message_id IN (SELECT id FROM m))
         ) x GROUP BY 1, 2 ORDER BY 1",
    )
    .bind(since)
    .bind(owner)
    .bind(bucket.unit())
    .fetch_all(pool)
    .await
}

/// The width of [`per_bucket`]'s buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
}

impl Bucket {
    fn unit(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
        }
    }
}
