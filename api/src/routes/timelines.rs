//! `GET /api/v1/messages/{id}/events`: everything that happened to a
//! message, so "why did this email not arrive?" is one call.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::message_events::{self, MessageEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Data;
use crate::auth::Principal;
use crate::docs::responses::{BadPage, BadPathOrQuery, NotFound, ReadAccess};
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::pagination::{self, Page};
use crate::routes::messages;
use crate::state::AppState;

/// One change of a message.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": 3, "event": "claimed", "status": "sending",
    "detail": {"worker": "worker-1a2b", "account": "noreply@example.com", "attempt": 1, "reclaimed": false},
    "at": "2026-12-02T09:00:01.250Z"}))]
pub struct TimelineEvent {
    /// Increases along the timeline.
    pub id: i64,
    /// `accepted` (recorded; `status` says as what), `released` (a scheduled
    /// send became due), `claimed` (a worker took it: `worker`, `account`,
    /// `attempt`, `reclaimed` when the previous claimant died), `waiting`
    /// (no account could take it: `reason`, `due_at`), `republished` (the
    /// reconciler published its task again), `retry_scheduled` (a temporary
    /// failure: `smtp_response`, `error`, `due_at`), `requeued` (a dead
    /// letter sent back), `sent` (`smtp_response`, `smtp_message_id`),
    /// `failed`, `suppressed` or `cancelled` (`error`).
    pub event: String,
    /// The message's status after the change.
    pub status: String,
    #[schema(value_type = Object)]
    pub detail: Value,
    pub at: DateTime<Utc>,
}

impl From<MessageEvent> for TimelineEvent {
    fn from(e: MessageEvent) -> Self {
        TimelineEvent {
            id: e.id,
            event: e.event,
            status: e.status,
            detail: e.detail.0,
            at: e.created_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The message's timeline, oldest first: every change of state with its
/// time and detail (which worker and account took it, the SMTP replies,
/// when a retry is due). Kept as long as the message is.
#[utoipa::path(get, path = "/api/v1/messages/{id}/events", tag = "messages",
    security(("bearer" = [])), params(("id" = Uuid, Path), TimelineQuery),
    responses((status = 200, body = Data<Page<TimelineEvent>>), ReadAccess, BadPathOrQuery,
        BadPage, NotFound))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
    QueryParams(query): QueryParams<TimelineQuery>,
) -> Result<Json<Data<Page<TimelineEvent>>>, ApiError> {
    principal.require_read()?;
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode_id)
        .transpose()?;
    messages::find(&state, id, principal.owner_filter()).await?;
    let rows = message_events::list(&state.pool, id, after, limit + 1).await?;
    Ok(Data::new(Page::from_rows(rows, limit, |e| {
        pagination::encode_id(e.id)
    })))
}
