//! `/api/v1/admin/periodic-tasks`: Celery tasks (any task name, args and
//! kwargs) the scheduler publishes on a cron schedule or every n seconds,
//! exactly once per due time, as protocol v2 messages through the outbox.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::periodic_tasks::{self, PeriodicTask, PeriodicTaskContent};
use platform::schedule::{self, CronSchedule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::docs::responses::{
    AdminAccess, BadJson, BadPath, BadPathOrJson, NotFound, PeriodicTaskRefused,
};
use crate::error::{on_unique, ApiError};
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;
use crate::validate;

/// Longest interval: a year.
const MAX_INTERVAL: i32 = 366 * 86_400;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-report", "task": "reports.nightly",
    "kwargs": {"format": "pdf"}, "cron": "0 2 * * *", "time_zone": "Europe/Paris"}))]
pub struct PeriodicTaskRequest {
    /// Unique; 1 to 200 characters (trimmed).
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: String,
    /// The Celery task name, e.g. `notifications.send_email`: 1 to 255
    /// characters, no control characters.
    #[schema(
        max_length = 255,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub task: String,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub kwargs: Map<String, Value>,
    /// The platform's task queue (default) or its bulk queue.
    pub queue: Option<String>,
    /// A cron expression (5 fields, or 6/7 with seconds first); or give
    /// `interval_seconds` instead.
    pub cron: Option<String>,
    /// IANA time zone of `cron`; default UTC.
    pub time_zone: Option<String>,
    /// Every n seconds (1 to 366 days); or give `cron` instead.
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub interval_seconds: Option<i32>,
    #[serde(default = "yes")]
    pub is_active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodicTaskView {
    pub id: Uuid,
    pub name: String,
    pub task: String,
    pub args: Vec<Value>,
    #[schema(value_type = Object)]
    pub kwargs: Map<String, Value>,
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

impl From<PeriodicTask> for PeriodicTaskView {
    fn from(t: PeriodicTask) -> Self {
        PeriodicTaskView {
            id: t.id,
            name: t.name,
            task: t.task,
            args: t.args.0,
            kwargs: t.kwargs.0,
            queue: t.queue,
            cron: t.cron,
            time_zone: t.time_zone,
            interval_seconds: t.interval_seconds,
            is_active: t.is_active,
            next_run_at: t.next_run_at,
            last_run_at: t.last_run_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

fn duplicate() -> ApiError {
    ApiError::conflict(
        "periodic_task_exists",
        "a periodic task with this name already exists",
    )
}

fn content(state: &AppState, req: PeriodicTaskRequest) -> Result<PeriodicTaskContent, ApiError> {
    let name = validate::name(&req.name)?;
    let task = req.task.trim().to_string();
    if task.is_empty() || task.chars().count() > 255 || task.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "task",
            "task must be a name of 1 to 255 characters",
        ));
    }
    // Only queues the platform declares: the outbox publishes with
    // `mandatory`, and a row for a missing queue would hold up the relay.
    let queues = state.settings.queues.consumed();
    let queue = req
        .queue
        .unwrap_or_else(|| state.settings.queues.tasks.clone());
    if !queues.contains(&queue) {
        return Err(ApiError::invalid(
            "unknown_queue",
            "queue",
            format!("queue must be one of {}", queues.join(", ")),
        ));
    }
    let time_zone = req.time_zone.unwrap_or_else(|| "UTC".into());
    schedule::parse_time_zone(&time_zone).map_err(validate::schedule_error)?;
    let now = Utc::now();
    let next = match (&req.cron, req.interval_seconds) {
        (Some(cron), None) => CronSchedule::parse(cron, &time_zone)
            .map_err(validate::schedule_error)?
            .next_after(now),
        (None, Some(seconds)) if (1..=MAX_INTERVAL).contains(&seconds) => {
            Some(now + chrono::Duration::seconds(i64::from(seconds)))
        }
        (None, Some(_)) => {
            return Err(ApiError::validation(
                "interval_seconds",
                format!("interval_seconds must be 1 to {MAX_INTERVAL}"),
            ))
        }
        _ => {
            return Err(ApiError::validation(
                "cron",
                "give exactly one of cron and interval_seconds",
            ))
        }
    };
    Ok(PeriodicTaskContent {
        name,
        task,
        args: req.args,
        kwargs: req.kwargs,
        queue,
        cron: req.cron.map(|c| c.trim().to_string()),
        time_zone,
        interval_seconds: req.interval_seconds,
        is_active: req.is_active,
        next_run_at: next.filter(|_| req.is_active),
    })
}

fn summary(t: &PeriodicTask) -> Value {
    json!({"name": t.name, "task": t.task, "queue": t.queue, "cron": t.cron,
           "interval_seconds": t.interval_seconds, "is_active": t.is_active})
}

/// Creates a periodic task; `next_run_at` is computed.
#[utoipa::path(post, path = "/api/v1/admin/periodic-tasks", tag = "periodic-tasks",
    request_body = PeriodicTaskRequest, security(("bearer" = [])),
    responses((status = 201, body = Data<PeriodicTaskView>), AdminAccess, BadJson, PeriodicTaskRefused))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(req): JsonBody<PeriodicTaskRequest>,
) -> Result<(StatusCode, Json<Data<PeriodicTaskView>>), ApiError> {
    let content = content(&state, req)?;
    let mut tx = state.pool.begin().await?;
    let task = periodic_tasks::insert(&mut *tx, &content)
        .await
        .map_err(on_unique("periodic_tasks_name_key", duplicate))?;
    actor
        .commit(
            tx,
            "periodic_task.create",
            "periodic_task",
            task.id,
            summary(&task),
        )
        .await?;
    Ok((StatusCode::CREATED, Data::new(task.into())))
}

/// Lists periodic tasks by name.
#[utoipa::path(get, path = "/api/v1/admin/periodic-tasks", tag = "periodic-tasks",
    security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<PeriodicTaskView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_admin): Admin,
) -> Result<Json<Data<Vec<PeriodicTaskView>>>, ApiError> {
    let rows = periodic_tasks::list(&state.pool).await?;
    Ok(Data::new(rows.into_iter().map(Into::into).collect()))
}

/// One periodic task.
#[utoipa::path(get, path = "/api/v1/admin/periodic-tasks/{id}", tag = "periodic-tasks",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<PeriodicTaskView>), AdminAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<PeriodicTaskView>>, ApiError> {
    let task = periodic_tasks::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("periodic task"))?;
    Ok(Data::new(task.into()))
}

/// Replaces a periodic task; `next_run_at` is computed afresh.
#[utoipa::path(put, path = "/api/v1/admin/periodic-tasks/{id}", tag = "periodic-tasks",
    request_body = PeriodicTaskRequest, security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<PeriodicTaskView>), AdminAccess, BadPathOrJson, NotFound, PeriodicTaskRefused))]
pub async fn replace(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<PeriodicTaskRequest>,
) -> Result<Json<Data<PeriodicTaskView>>, ApiError> {
    let content = content(&state, req)?;
    let mut tx = state.pool.begin().await?;
    let task = periodic_tasks::replace(&mut *tx, id, &content)
        .await
        .map_err(on_unique("periodic_tasks_name_key", duplicate))?
        .ok_or(ApiError::NotFound("periodic task"))?;
    actor
        .commit(
            tx,
            "periodic_task.update",
            "periodic_task",
            id,
            summary(&task),
        )
        .await?;
    Ok(Data::new(task.into()))
}

/// Deletes a periodic task.
#[utoipa::path(delete, path = "/api/v1/admin/periodic-tasks/{id}", tag = "periodic-tasks",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !periodic_tasks::delete(&mut *tx, id).await? {
        return Err(ApiError::NotFound("periodic task"));
    }
    actor
        .commit(tx, "periodic_task.delete", "periodic_task", id, json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
