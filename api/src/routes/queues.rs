//! `GET /api/v1/admin/queues`: depth and consumers of the platform's queues,
//! read with passive declarations (which create nothing).

use axum::extract::State;
use axum::Json;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;
use utoipa::ToSchema;

use super::Data;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// `tasks` or `dead_letter`.
    pub role: &'static str,
    /// False when the queue has not been declared yet (no worker started).
    pub exists: bool,
    /// Ready messages.
    pub messages: u32,
    pub consumers: u32,
}

/// Depth and consumer count of the task queue and its dead-letter queue.
#[utoipa::path(get, path = "/api/v1/admin/queues", tag = "queues", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<QueueView>>),
        (status = 401, body = ErrorBody, description = "`missing_token`, `invalid_token`, `token_expired`, `key_revoked`"),
        (status = 403, body = ErrorBody, description = "`insufficient_scope`: not an admin key"),
        (status = 429, body = ErrorBody, description = "`rate_limited`"),
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
    let queues = [
        (state.settings.queues.tasks.clone(), "tasks"),
        (state.settings.queues.dead_letter(), "dead_letter"),
    ];
    let mut views = Vec::new();
    for (name, role) in queues {
        // A failed passive declare closes the channel: one channel per queue.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let declared = channel
            .queue_declare(
                &name,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        views.push(match declared {
            Ok(q) => QueueView {
                name,
                role,
                exists: true,
                messages: q.message_count(),
                consumers: q.consumer_count(),
            },
            Err(_) => QueueView {
                name,
                role,
                exists: false,
                messages: 0,
                consumers: 0,
            },
        });
    }
    platform::broker::close(&connection, 200, "queue listing done").await;
    Ok(Data::new(views))
}
