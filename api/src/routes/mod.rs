//! HTTP routes, one module per resource.

pub mod auth;
pub mod dead_letters;
pub mod email_accounts;
pub mod health;
pub mod messages;

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
