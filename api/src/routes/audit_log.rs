//! `GET /api/v1/admin/audit-log`: the trail of administrative changes.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::audit_log::{self, AuditEntry, AuditFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::auth::Admin;
use crate::docs::responses::{AdminAccess, BadPage, BadQuery};
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::pagination::{self, Page};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: i64,
    /// The API key that made the change.
    pub actor_key_id: Option<Uuid>,
    /// e.g. `email_account.create`, `api_key.revoke`, `template.update`, `suppression.delete`
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    /// What changed, without passwords or secrets.
    #[schema(value_type = Object)]
    pub details: Value,
    /// The TCP peer, or the right-most `X-Forwarded-For` address that is not
    /// a trusted proxy (`TRUSTED_PROXIES`) when the peer is one.
    pub client_addr: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        AuditEntryView {
            id: e.id,
            actor_key_id: e.actor_key_id,
            action: e.action,
            target_type: e.target_type,
            target_id: e.target_id,
            details: e.details.0,
            client_addr: e.client_addr,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// API key id of the actor.
    pub actor: Option<Uuid>,
    pub action: Option<String>,
    /// Id of the changed thing.
    pub target: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Audit entries, newest first, filtered and paginated.
#[utoipa::path(get, path = "/api/v1/admin/audit-log", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = Data<Page<AuditEntryView>>), AdminAccess, BadQuery, BadPage))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_principal): Admin,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Json<Data<Page<AuditEntryView>>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let before_id = query
        .cursor
        .as_deref()
        .map(pagination::decode_id)
        .transpose()?;
    let filter = AuditFilter {
        actor_key_id: query.actor,
        action: query.action,
        target_id: query.target,
        from: query.created_after,
        until: query.created_before,
        before_id,
    };
    let rows = audit_log::list(&state.pool, &filter, limit + 1).await?;
    Ok(Data::new(Page::from_rows(rows, limit, |e| {
        pagination::encode_id(e.id)
    })))
}
