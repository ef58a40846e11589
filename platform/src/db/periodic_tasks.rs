//! `periodic_tasks` and `periodic_task_runs`: Celery tasks the scheduler
//! publishes on a cron schedule or an interval. Each due time is recorded
//! (unique on task and time) in the transaction that writes the task's
//! outbox row, so it is published once however many schedulers run.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PeriodicTask {
    pub id: Uuid,
    pub name: String,
    pub task: String,
    pub args: sqlx::types::Json<Vec<Value>>,
    pub kwargs: sqlx::types::Json<Map<String, Value>>,
    pub queue: String,
    pub cron: Option<String>,
    pub time_zone: String,
    pub interval_seconds: Option<i32>,
    pub is_active: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct PeriodicTaskContent {
    pub name: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub queue: String,
    pub cron: Option<String>,
    pub time_zone: String,
    pub interval_seconds: Option<i32>,
    pub is_active: bool,
    pub next_run_at: Option<DateTime<Utc>>,
}

type TaskQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, PeriodicTask, PgArguments>;

pub async fn insert(
    executor: impl PgExecutor<'_>,
    c: &PeriodicTaskContent,
) -> Result<PeriodicTask, sqlx::Error> {
    let query = sqlx::query_as(
        "INSERT INTO periodic_tasks (id, name, task, args, kwargs, queue, cron, time_zone,
            interval_seconds, is_active, next_run_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
    );
    bind_content(query.bind(Uuid::now_v7()), c)
        .fetch_one(executor)
        .await
}

pub async fn replace(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    c: &PeriodicTaskContent,
) -> Result<Option<PeriodicTask>, sqlx::Error> {
    let query = sqlx::query_as(
        "UPDATE periodic_tasks SET name = $2, task = $3, args = $4, kwargs = $5, queue = $6,
            cron = $7, time_zone = $8, interval_seconds = $9, is_active = $10,
            next_run_at = $11, updated_at = now()
         WHERE id = $1 RETURNING *",
    );
    bind_content(query.bind(id), c)
        .fetch_optional(executor)
        .await
}

/// Binds a task's settings as `$2` to `$11`, after its id.
fn bind_content<'q>(query: TaskQuery<'q>, c: &'q PeriodicTaskContent) -> TaskQuery<'q> {
    query
        .bind(&c.name)
        .bind(&c.task)
        .bind(sqlx::types::Json(&c.args))
        .bind(sqlx::types::Json(&c.kwargs))
        .bind(&c.queue)
        .bind(&c.cron)
        .bind(&c.time_zone)
        .bind(c.interval_seconds)
        .bind(c.is_active)
        .bind(c.next_run_at)
}

pub async fn get(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<PeriodicTask>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM periodic_tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<PeriodicTask>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM periodic_tasks ORDER BY name LIMIT 1000")
        .fetch_all(executor)
        .await
}

pub async fn delete(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let statement = sqlx::query("DELETE FROM periodic_tasks WHERE id = $1").bind(id);
    super::changed_any(statement, executor).await
}

/// Active tasks whose `next_run_at` has come, locked (others skipped).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_due(tx: &mut PgConnection, limit: i64) -> Result<Vec<PeriodicTask>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM periodic_tasks WHERE is_active AND next_run_at <= now()
          ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Records a publication; `false` when this time was already published.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_run(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    scheduled_for: DateTime<Utc>,
    task_id: &str,
) -> Result<bool, sqlx::Error> {
    let statement = sqlx::query(
        "INSERT INTO periodic_task_runs (periodic_task_id, scheduled_for, task_id)
         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(scheduled_for)
    .bind(task_id);
    super::changed_any(statement, executor).await
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn advance(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    ran_at: Option<DateTime<Utc>>,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE periodic_tasks SET next_run_at = $3, last_run_at = COALESCE($2, last_run_at)
         WHERE id = $1",
    )
    .bind(id)
    .bind(ran_at)
    .bind(next_run_at)
    .execute(executor)
    .await?;
    Ok(())
}
