//! `bounces`: what receiving servers reported about our mail, and what it
//! did: the message marked `bounced` or `complained`, the address
//! suppressed. Reports come from the accounts' mailboxes and from provider
//! webhooks; each is applied once, whoever reads it and however often.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::bounces::{Feedback, Kind};

/// One report about one recipient, as a source delivered it.
pub struct Incoming<'a> {
    /// imap, ses, sendgrid, postmark, mailgun.
    pub source: &'a str,
    /// Unique at its source: the same report read twice is applied once.
    pub source_ref: String,
    /// The account whose mailbox held the report, when it came from one.
    pub account_id: Option<Uuid>,
    /// Our message record, when the report named one.
    pub record_id: Option<Uuid>,
    pub feedback: &'a Feedback,
}

/// When soft bounces suppress an address: `limit` of them within `window`.
#[derive(Debug, Clone, Copy)]
pub struct SoftBouncePolicy {
    pub limit: i64,
    pub window: chrono::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already applied (the same source reference).
    Duplicate,
    /// Recorded, but about no message of ours: nothing else done.
    Unmatched,
    Applied {
        /// bounced, complained or soft; `None` when the message had
        /// already settled otherwise (it stays as it was).
        outcome: Option<&'static str>,
        /// The address now suppressed by this report.
        suppressed: Option<String>,
        /// The account that sent the message, for its rates.
        account_id: Option<Uuid>,
    },
}

#[derive(sqlx::FromRow)]
struct Target {
    id: Uuid,
    to_addrs: Vec<String>,
    cc_addrs: Vec<String>,
    bcc_addrs: Vec<String>,
    account_id: Option<Uuid>,
}

impl Target {
    /// The address the report is about: the one it names when the message
    /// went there (or when the message cannot tell), else the message's
    /// only recipient (a relay rewrote the address, or the report redacted it).
    fn recipient(&self, reported: Option<&str>) -> Option<String> {
        let all: Vec<String> = self
            .to_addrs
            .iter()
            .chain(&self.cc_addrs)
            .chain(&self.bcc_addrs)
            .map(|a| a.to_lowercase())
            .collect();
        match reported {
            Some(r) if all.iter().any(|a| a == r) || all.len() != 1 => Some(r.to_string()),
            _ if all.len() == 1 => all.into_iter().next(),
            _ => None,
        }
    }
}

/// Applies one report, in one transaction: records it (or finds it was
/// already), marks the message, suppresses the address.
pub async fn apply(
    pool: &PgPool,
    incoming: &Incoming<'_>,
    soft: SoftBouncePolicy,
) -> Result<Applied, sqlx::Error> {
    let feedback = incoming.feedback;
    let mut tx = pool.begin().await?;
    // Locked: two reports about one message apply one after the other.
    let target: Option<Target> = match incoming.record_id {
        Some(id) => {
            sqlx::query_as(
                "SELECT id, to_addrs, cc_addrs, bcc_addrs, account_id
                 FROM message_records WHERE id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => None,
    };
    let recipient = match &target {
        Some(t) => t.recipient(feedback.recipient.as_deref()),
        None => feedback.recipient.clone(),
    };
    let account_id = target
        .as_ref()
        .and_then(|t| t.account_id)
        .or(incoming.account_id);
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO bounces (kind, recipient, message_id, account_id, source, source_ref,
                              status_code, diagnostic)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (source, source_ref) DO NOTHING
         RETURNING id",
    )
    .bind(feedback.kind.as_str())
    .bind(&recipient)
    .bind(target.as_ref().map(|t| t.id))
    .bind(account_id)
    .bind(incoming.source)
    .bind(&incoming.source_ref)
    .bind(&feedback.status_code)
    .bind(&feedback.diagnostic)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(bounce_id) = inserted else {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    };
    let Some(target) = target else {
        tx.commit().await?;
        return Ok(Applied::Unmatched);
    };

    let error = describe(feedback);
    let (outcome, reason) = match feedback.kind {
        Kind::Hard => {
            let marked = mark(&mut *tx, target.id, "bounced", &["sent"], &error).await?;
            (marked.then_some("bounced"), Some("bounce"))
        }
        Kind::Complaint => {
            let marked = mark(
                &mut *tx,
                target.id,
                "complained",
                &["sent", "bounced"],
                &error,
            )
            .await?;
            (marked.then_some("complained"), Some("complaint"))
        }
        Kind::Soft => {
            record_soft_bounce(&mut *tx, target.id, incoming, recipient.as_deref()).await?;
            let count = match &recipient {
                Some(r) => soft_bounces_since(&mut *tx, r, Utc::now() - soft.window).await?,
                None => 0,
            };
            (Some("soft"), (count >= soft.limit).then_some("soft_bounce"))
        }
    };
    let mut suppressed = None;
    if let (Some(reason), Some(address)) = (reason, &recipient) {
        if super::suppressions::insert_if_absent(&mut *tx, address, reason, None).await? {
            suppressed = Some(address.clone());
        }
    }
    sqlx::query("UPDATE bounces SET outcome = $2, suppressed = $3 WHERE id = $1")
        .bind(bounce_id)
        .bind(outcome)
        .bind(suppressed.is_some())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Applied::Applied {
        outcome,
        suppressed,
        account_id,
    })
}

/// The message's error text: the status and the remote server's words.
fn describe(feedback: &Feedback) -> String {
    let what = match feedback.kind {
        Kind::Hard => "bounced",
        Kind::Soft => "soft bounce",
        Kind::Complaint => "complaint",
    };
    let detail = [
        feedback.status_code.as_deref(),
        feedback.diagnostic.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    }
}

/// Moves the message to `status` from one of `from`; whether it did. The
/// timeline and webhook triggers record the change.
async fn mark(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    status: &str,
    from: &[&str],
    error: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE message_records SET status = $2, error = $3, updated_at = now()
         WHERE id = $1 AND status = ANY($4)",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .bind(from)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A soft bounce changes no status; its message's timeline still shows it.
async fn record_soft_bounce(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    incoming: &Incoming<'_>,
    recipient: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO message_events (message_id, event, status, detail)
         SELECT id, 'soft_bounced', status, jsonb_strip_nulls(jsonb_build_object(
                    'recipient', $2::text, 'status_code', $3::text,
                    'diagnostic', $4::text, 'source', $5::text))
         FROM message_records WHERE id = $1",
    )
    .bind(id)
    .bind(recipient)
    .bind(&incoming.feedback.status_code)
    .bind(&incoming.feedback.diagnostic)
    .bind(incoming.source)
    .execute(executor)
    .await?;
    Ok(())
}

async fn soft_bounces_since(
    executor: impl PgExecutor<'_>,
    recipient: &str,
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM bounces WHERE recipient = $1 AND kind = 'soft' AND created_at > $2",
    )
    .bind(recipient)
    .bind(since)
    .fetch_one(executor)
    .await
}

/// An account's sends and reports over its last days.
#[derive(Debug, Clone, Copy, Default, PartialEq, sqlx::FromRow)]
pub struct AccountRates {
    pub sent: i64,
    pub hard_bounces: i64,
    pub soft_bounces: i64,
    pub complaints: i64,
}

impl AccountRates {
    /// Hard bounces per send; 0 before the first send.
    pub fn bounce_rate(&self) -> f64 {
        ratio(self.hard_bounces, self.sent)
    }

    pub fn complaint_rate(&self) -> f64 {
        ratio(self.complaints, self.sent)
    }
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Each account's rates over the `days` days up to `today` (in TZ), or
/// the one account `only`. Sends come from the daily counters
/// (`account_send_days` and today's), reports from `bounces`.
pub async fn account_rates(
    executor: impl PgExecutor<'_>,
    today: NaiveDate,
    days: i32,
    only: Option<Uuid>,
) -> Result<HashMap<Uuid, AccountRates>, sqlx::Error> {
    let rows: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT a.id,
                (COALESCE((SELECT sum(d.sent) FROM account_send_days d
                            WHERE d.account_id = a.id AND d.day > $1::date - $2
                              AND d.day <> a.quota_day), 0)
                 + CASE WHEN a.quota_day > $1::date - $2 THEN a.daily_sent_count ELSE 0 END)::bigint,
                count(b.id) FILTER (WHERE b.kind = 'hard'),
                count(b.id) FILTER (WHERE b.kind = 'soft'),
                count(b.id) FILTER (WHERE b.kind = 'complaint')
         FROM email_accounts a
         LEFT JOIN bounces b ON b.account_id = a.id
                            AND b.created_at > now() - make_interval(days => $2)
         WHERE $3::uuid IS NULL OR a.id = $3
         GROUP BY a.id",
    )
    .bind(today)
    .bind(days)
    .bind(only)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, sent, hard_bounces, soft_bounces, complaints)| {
            (
                id,
                AccountRates {
                    sent,
                    hard_bounces,
                    soft_bounces,
                    complaints,
                },
            )
        })
        .collect())
}

/// When an account is taken out of rotation for what it gets back.
#[derive(Debug, Clone, Copy)]
pub struct PausePolicy {
    pub window_days: i32,
    /// Fewer sends than this in the window decide nothing.
    pub min_sent: i64,
    pub max_bounce_rate: f64,
    pub max_complaint_rate: f64,
}

impl PausePolicy {
    /// Why `rates` take an account out of rotation, if they do.
    pub fn reason(&self, rates: &AccountRates) -> Option<String> {
        if rates.sent < self.min_sent {
            return None;
        }
        let days = self.window_days;
        if rates.complaint_rate() > self.max_complaint_rate {
            return Some(format!(
                "complaint rate {:.2}% over {days} days ({} of {} sends) is above {:.2}%",
                rates.complaint_rate() * 100.0,
                rates.complaints,
                rates.sent,
                self.max_complaint_rate * 100.0
            ));
        }
        if rates.bounce_rate() > self.max_bounce_rate {
            return Some(format!(
                "bounce rate {:.2}% over {days} days ({} of {} sends) is above {:.2}%",
                rates.bounce_rate() * 100.0,
                rates.hard_bounces,
                rates.sent,
                self.max_bounce_rate * 100.0
            ));
        }
        None
    }
}

/// Pauses the account when its rates cross the policy's limits; the
/// reason when this call paused it. The `account.paused` webhook event and
/// an audit entry (no actor: the platform did it) record it.
pub async fn pause_if_over(
    pool: &PgPool,
    account_id: Uuid,
    today: NaiveDate,
    policy: PausePolicy,
) -> Result<Option<String>, sqlx::Error> {
    let rates = account_rates(pool, today, policy.window_days, Some(account_id)).await?;
    let Some(reason) = rates.get(&account_id).and_then(|r| policy.reason(r)) else {
        return Ok(None);
    };
    let mut tx = pool.begin().await?;
    let paused = super::changed_any(
        sqlx::query(
            "UPDATE email_accounts SET is_active = false, paused_reason = $2, updated_at = now()
             WHERE id = $1 AND is_active",
        )
        .bind(account_id)
        .bind(&reason),
        &mut *tx,
    )
    .await?;
    if paused {
        super::audit_log::insert(
            &mut *tx,
            &super::audit_log::NewAuditEntry {
                actor_key_id: None,
                action: "email_account.auto_pause",
                target_type: "email_account",
                target_id: account_id.to_string(),
                details: serde_json::json!({ "reason": reason }),
                client_addr: None,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(paused.then_some(reason))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bounce {
    pub id: i64,
    pub kind: String,
    pub recipient: Option<String>,
    pub message_id: Option<Uuid>,
    pub account_id: Option<Uuid>,
    pub source: String,
    pub status_code: Option<String>,
    pub diagnostic: Option<String>,
    pub outcome: Option<String>,
    pub suppressed: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct BounceFilter {
    pub kind: Option<Kind>,
    pub recipient: Option<String>,
    pub account_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    pub source: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Reports older than this id (newest first).
    pub before_id: Option<i64>,
}

/// Reports matching `filter`, newest first.
pub async fn list(
    pool: &PgPool,
    filter: &BounceFilter,
    limit: i64,
) -> Result<Vec<Bounce>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, recipient, message_id, account_id, source, status_code, diagnostic,
                outcome, suppressed, created_at
         FROM bounces
         WHERE ($1::text IS NULL OR kind = $1)
           AND ($2::text IS NULL OR recipient = lower($2))
           AND ($3::uuid IS NULL OR account_id = $3)
           AND ($4::uuid IS NULL OR message_id = $4)
           AND ($5::text IS NULL OR source = $5)
           AND ($6::timestamptz IS NULL OR created_at >= $6)
           AND ($7::timestamptz IS NULL OR created_at < $7)
           AND ($8::bigint IS NULL OR id < $8)
         ORDER BY id DESC LIMIT $9",
    )
    .bind(filter.kind.map(Kind::as_str))
    .bind(&filter.recipient)
    .bind(filter.account_id)
    .bind(filter.message_id)
    .bind(&filter.source)
    .bind(filter.from)
    .bind(filter.until)
    .bind(filter.before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Reports older than `cutoff`, deleted at retention; how many.
pub async fn delete_older_than(
    executor: impl PgExecutor<'_>,
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM bounces WHERE created_at < $1")
        .bind(cutoff)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}
