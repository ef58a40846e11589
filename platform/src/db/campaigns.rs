//! `campaigns` and `campaign_runs`: scheduled mailings to lists.
//!
//! Firing is exactly once per scheduled time: the run row is inserted (unique
//! on campaign and time) in the same transaction that moves the campaign's
//! `next_run_at` on, under the campaign's row lock. The fan-out keeps its
//! cursor (`last_member_id`) on the run row and advances it in the same
//! transaction as the batch's message records and outbox rows.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::mail::unsubscribe::Scope;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Campaign {
    pub id: Uuid,
    pub name: String,
    pub template_id: Uuid,
    pub list_ids: Vec<Uuid>,
    pub variables: sqlx::types::Json<Map<String, Value>>,
    pub cron: String,
    pub time_zone: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub is_active: bool,
    pub missed_run_policy: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What its messages' unsubscribe links leave: `list` (its lists) or
    /// `global` (all mail).
    pub unsubscribe_scope: String,
}

impl Campaign {
    pub fn unsubscribe_scope(&self) -> Scope {
        Scope::parse(&self.unsubscribe_scope).unwrap_or(Scope::List)
    }
}

/// A campaign's settings, as created or replaced (`next_run_at` computed
/// by the caller).
#[derive(Debug, Clone)]
pub struct CampaignContent {
    pub name: String,
    pub template_id: Uuid,
    pub list_ids: Vec<Uuid>,
    pub variables: Map<String, Value>,
    pub cron: String,
    pub time_zone: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub is_active: bool,
    pub missed_run_policy: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub unsubscribe_scope: Scope,
}

type CampaignQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, Campaign, PgArguments>;

pub async fn insert(
    executor: impl PgExecutor<'_>,
    c: &CampaignContent,
) -> Result<Campaign, sqlx::Error> {
    let query = sqlx::query_as(
        "INSERT INTO campaigns (id, name, template_id, list_ids, variables, cron, time_zone,
            starts_at, ends_at, is_active, missed_run_policy, next_run_at, unsubscribe_scope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING *",
    );
    bind_content(query.bind(Uuid::now_v7()), c)
        .fetch_one(executor)
        .await
}

pub async fn replace(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    c: &CampaignContent,
) -> Result<Option<Campaign>, sqlx::Error> {
    let query = sqlx::query_as(
        "UPDATE campaigns SET name = $2, template_id = $3, list_ids = $4, variables = $5,
            cron = $6, time_zone = $7, starts_at = $8, ends_at = $9, is_active = $10,
            missed_run_policy = $11, next_run_at = $12, unsubscribe_scope = $13,
            updated_at = now()
         WHERE id = $1 RETURNING *",
    );
    bind_content(query.bind(id), c)
        .fetch_optional(executor)
        .await
}

/// Binds a campaign's settings as `$2` to `$13`, after its id.
fn bind_content<'q>(query: CampaignQuery<'q>, c: &'q CampaignContent) -> CampaignQuery<'q> {
    query
        .bind(&c.name)
        .bind(c.template_id)
        .bind(&c.list_ids)
        .bind(sqlx::types::Json(&c.variables))
        .bind(&c.cron)
        .bind(&c.time_zone)
        .bind(c.starts_at)
        .bind(c.ends_at)
        .bind(c.is_active)
        .bind(&c.missed_run_policy)
        .bind(c.next_run_at)
        .bind(c.unsubscribe_scope.as_str())
}

#[tracing::instrument(level = "debug", skip_all, fields(campaign = %id))]
pub async fn get(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Campaign>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<Campaign>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM campaigns ORDER BY created_at DESC LIMIT 1000")
        .fetch_all(executor)
        .await
}

pub async fn delete(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let statement = sqlx::query("DELETE FROM campaigns WHERE id = $1").bind(id);
    super::changed_any(statement, executor).await
}

/// Active campaigns whose `next_run_at` has come, locked (others skipped).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_due(tx: &mut PgConnection, limit: i64) -> Result<Vec<Campaign>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM campaigns WHERE is_active AND next_run_at <= now()
          ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn set_next_run(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE campaigns SET next_run_at = $2 WHERE id = $1")
        .bind(id)
        .bind(next_run_at)
        .execute(executor)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub id: Uuid,
    pub campaign_id: Uuid,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub status: String,
    pub last_member_id: i64,
    pub recipients: i32,
    pub suppressed: i32,
    pub skipped: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Records a run; `None` when one for this campaign and time exists.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_run(
    executor: impl PgExecutor<'_>,
    campaign_id: Uuid,
    scheduled_for: DateTime<Utc>,
    trigger: &str,
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO campaign_runs (id, campaign_id, scheduled_for, trigger)
         VALUES ($1, $2, $3, $4) ON CONFLICT (campaign_id, scheduled_for) DO NOTHING RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(campaign_id)
    .bind(scheduled_for)
    .bind(trigger)
    .fetch_optional(executor)
    .await
}

/// The oldest running run no other scheduler is fanning out, locked.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_running(tx: &mut PgConnection) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM campaign_runs WHERE status = 'running'
          ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(tx)
    .await
}

/// Records a fan-out batch's progress; `done` completes the run.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn advance_run(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    last_member_id: i64,
    recipients: i32,
    suppressed: i32,
    skipped: i32,
    done: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaign_runs SET last_member_id = $2, recipients = recipients + $3,
            suppressed = suppressed + $4, skipped = skipped + $5,
            status = CASE WHEN $6 THEN 'completed' ELSE status END,
            finished_at = CASE WHEN $6 THEN now() END
         WHERE id = $1",
    )
    .bind(id)
    .bind(last_member_id)
    .bind(recipients)
    .bind(suppressed)
    .bind(skipped)
    .bind(done)
    .execute(executor)
    .await?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn fail_run(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaign_runs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(executor)
    .await?;
    Ok(())
}

/// A campaign's runs, newest first.
pub async fn runs(
    executor: impl PgExecutor<'_>,
    campaign_id: Uuid,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM campaign_runs WHERE campaign_id = $1 ORDER BY scheduled_for DESC LIMIT $2",
    )
    .bind(campaign_id)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Message counts of runs by status: (run id, status, count).
pub async fn run_message_counts(
    executor: impl PgExecutor<'_>,
    run_ids: &[Uuid],
) -> Result<Vec<(Uuid, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT campaign_run_id, status, count(*) FROM message_records
          WHERE campaign_run_id = ANY($1) GROUP BY 1, 2",
    )
    .bind(run_ids)
    .fetch_all(executor)
    .await
}
