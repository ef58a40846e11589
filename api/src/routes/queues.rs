//! `GET /api/v1/admin/queues`: depth and consumers of the platform's queues,
//! read with passive declarations (which create nothing).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::Data;
use crate::auth::Admin;
use crate::docs::responses::AdminAccess;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// `tasks`, `dead_letter`, `bulk`, `extra` (a queue of
    /// `CELERY_EXTRA_QUEUES`, e.g. the Python platform's), or `delay` (a
    /// rung of a delay ladder; listed only while it holds messages).
    pub role: &'static str,
    /// False when the queue has not been declared yet (no worker started).
    pub exists: bool,
    /// Ready messages.
    pub messages: u32,
    pub consumers: u32,
}

/// Depth and consumer count of the task queue, its dead-letter queue, the
/// bulk queue, and the delay-ladder rungs that hold messages (retries,
/// waits for quota or a throttle, ETAs).
#[utoipa::path(get, path = "/api/v1/admin/queues", tag = "queues", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<QueueView>>), AdminAccess,
        (status = 503, body = ErrorBody, description = "`service_unavailable`: RabbitMQ unreachable")))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_principal): Admin,
) -> Result<Json<Data<Vec<QueueView>>>, ApiError> {
    let unavailable = |e: String| ApiError::Unavailable(format!("RabbitMQ: {e}"));
    let connection = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        platform::broker::connect(&state.settings, "notify-api-queues"),
    )
    .await
    .map_err(|_| unavailable("no answer within 5 s".into()))?
    .map_err(|e| unavailable(e.to_string()))?;
    let names = &state.settings.queues;
    let mut queues = vec![
        (names.tasks.clone(), "tasks"),
        (names.dead_letter(), "dead_letter"),
        (names.bulk(), "bulk"),
    ];
    queues.extend(names.extra.iter().map(|q| (q.clone(), "extra")));
    for target in names.consumed() {
        queues.extend(names.ladder(&target).into_iter().map(|(_, q)| (q, "delay")));
    }
    let mut views = Vec::new();
    for (name, role) in queues {
        let found = platform::broker::inspect_queue(&connection, &name)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let (exists, messages, consumers) = found.map_or((false, 0, 0), |(m, c)| (true, m, c));
        if role == "delay" && messages == 0 {
            continue;
        }
        views.push(QueueView {
            name,
            role,
            exists,
            messages,
            consumers,
        });
    }
    platform::broker::close(&connection, 200, "queue listing done").await;
    Ok(Data::new(views))
}
