//! HTTP routes, one module per resource.

pub mod api_keys;
pub mod audit_log;
pub mod auth;
pub mod bounces;
pub mod campaigns;
pub mod dead_letters;
pub mod dkim_keys;
pub mod domain_throttles;
pub mod email_accounts;
pub mod health;
pub mod inbound;
pub mod lists;
pub mod messages;
pub mod periodic_tasks;
pub mod queues;
pub mod suppressions;
pub mod templates;
pub mod timelines;
pub mod unsubscribe;
pub mod webhooks;

use serde::Serialize;
use utoipa::ToSchema;

/// Successful responses are wrapped in `{"data": ...}`, as the Python
/// platform's clients expect (`.data.access_token`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

impl<T> Data<T> {
    pub fn new(data: T) -> axum::Json<Data<T>> {
        axum::Json(Data { data })
    }
}
