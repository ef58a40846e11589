//! `/api/v1/admin/dead-letters`: what the worker gave up on, and requeueing.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::{dead_letters, messages, outbox};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::docs::responses::{AdminAccess, BadPath, NotFound};
use crate::error::{ApiError, ErrorBody};
use crate::extract::PathParam;
use crate::state::AppState;

const MAX_PAGE: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Return dead letters older than this id (the last id of the previous page).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: i64,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub message_id: Option<Uuid>,
    pub reason: String,
    pub content_type: Option<String>,
    pub retries: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub requeued_at: Option<DateTime<Utc>>,
}

impl From<dead_letters::DeadLetter> for DeadLetterView {
    fn from(d: dead_letters::DeadLetter) -> Self {
        DeadLetterView {
            retries: d.headers.0.get("retries").and_then(Value::as_i64),
            id: d.id,
            task_id: d.task_id,
            task_name: d.task_name,
            message_id: d.message_id,
            reason: d.reason,
            content_type: d.content_type,
            created_at: d.created_at,
            requeued_at: d.requeued_at,
        }
    }
}

/// Lists dead letters, newest first.
#[utoipa::path(get, path = "/api/v1/admin/dead-letters", tag = "dead-letters", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = Data<Vec<DeadLetterView>>), AdminAccess,
        (status = 422, body = ErrorBody, description = "`invalid_query`")))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Data<Vec<DeadLetterView>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::Validation {
        code: "invalid_query",
        field: None,
        message: e.body_text(),
    })?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let rows = dead_letters::list(&state.pool, query.before, limit).await?;
    Ok(Data::new(rows.into_iter().map(Into::into).collect()))
}

/// Publishes a dead letter's task again with its retry count reset; a
/// failed message record goes back to `queued`.
#[utoipa::path(post, path = "/api/v1/admin/dead-letters/{id}/requeue", tag = "dead-letters",
    security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = Data<DeadLetterView>), AdminAccess, BadPath, NotFound,
        (status = 409, body = ErrorBody, description = "`already_requeued`"),
        (status = 422, body = ErrorBody, description = "`not_requeueable`: not a decodable Celery task")))]
pub async fn requeue(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<i64>,
) -> Result<Json<Data<DeadLetterView>>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let dead = dead_letters::lock(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    if dead.requeued_at.is_some() {
        return Err(ApiError::Conflict {
            code: "already_requeued",
            message: "this dead letter was already requeued".into(),
        });
    }
    let (Some(task_id), Some(_)) = (&dead.task_id, &dead.task_name) else {
        return Err(ApiError::Validation {
            code: "not_requeueable",
            field: None,
            message: format!("not a decodable Celery task message: {}", dead.reason),
        });
    };
    let mut headers = dead.headers.0.clone();
    headers.insert("retries".into(), Value::from(0));
    headers.remove("eta");
    headers.remove("x-notify-dead-letter-reason");
    let queue = &state.settings.queues.tasks;
    outbox::enqueue_raw(&mut *tx, task_id, queue, queue, &headers, &dead.body, None).await?;
    if let Some(message_id) = dead.message_id {
        messages::requeue_failed(&mut *tx, message_id).await?;
    }
    dead_letters::mark_requeued(&mut *tx, id).await?;
    actor
        .commit(
            tx,
            "dead_letter.requeue",
            "dead_letter",
            id,
            json!({"task_id": task_id, "task_name": dead.task_name, "message_id": dead.message_id}),
        )
        .await?;
    state.outbox.wake();
    tracing::info!(dead_letter = id, actor = %actor.principal.key_id, "dead letter requeued");
    let mut view = DeadLetterView::from(dead);
    view.requeued_at = Some(Utc::now());
    Ok(Data::new(view))
}
