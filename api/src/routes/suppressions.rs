//! `/api/v1/suppressions`: addresses that must never receive mail. A send
//! to one is recorded as `suppressed` and not enqueued, and the worker checks
//! again right before SMTP. Every change is in the audit log.
//!
//! The list is one for the whole platform: an address suppressed by any key
//! is suppressed for all. Adding takes `send`; listing takes `read` and shows
//! a non-admin key only the addresses it added (admins see all); removing an
//! address sends mail to it again, so it takes `admin`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::suppressions::{self, Suppression};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::Data;
use crate::audit::{AdminActor, SendActor};
use crate::auth::{Principal, Scope};
use crate::docs::responses::{
    AdminAccess, BadJson, BadPage, BadPath, BadQuery, InvalidFields, NotFound, ReadAccess,
    SendAccess,
};
use crate::error::{on_unique, ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::pagination::{self, Page};
use crate::state::AppState;
use crate::validate;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"address": "user@example.com", "reason": "unsubscribed"}))]
pub struct SuppressionRequest {
    #[schema(value_type = crate::docs::schemas::Address)]
    pub address: String,
    /// Why (e.g. `unsubscribed`, `hard_bounce`); at most 500 characters,
    /// no control characters.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionView {
    /// Lower-cased.
    pub address: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

impl From<Suppression> for SuppressionView {
    fn from(s: Suppression) -> Self {
        SuppressionView {
            address: s.address,
            reason: s.reason,
            created_at: s.created_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSuppressionsQuery {
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    /// Only addresses containing this text (any case); at most 320
    /// characters.
    pub address: Option<String>,
}

/// Suppressed addresses, in address order: all of them for an admin key,
/// those the calling key added otherwise; `address` narrows them to those
/// containing it.
#[utoipa::path(get, path = "/api/v1/suppressions", tag = "suppressions", security(("bearer" = [])),
    params(ListSuppressionsQuery),
    responses((status = 200, body = Data<Page<SuppressionView>>), ReadAccess, BadQuery, BadPage))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<ListSuppressionsQuery>,
) -> Result<Json<Data<Page<SuppressionView>>>, ApiError> {
    principal.require_or(Scope::Read, &[Scope::Admin])?;
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    let containing = match query.address.as_deref().map(str::trim) {
        Some(text) if text.chars().count() > 320 => {
            return Err(ApiError::validation(
                "address",
                "address must be at most 320 characters",
            ))
        }
        Some(text) if !text.is_empty() => Some(text),
        _ => None,
    };
    let rows = suppressions::list(
        &state.pool,
        principal.owner_filter(),
        containing,
        after.as_deref(),
        limit + 1,
    )
    .await?;
    Ok(Data::new(Page::from_rows(rows, limit, |s| {
        pagination::encode(&s.address)
    })))
}

/// Adds an address to the suppression list.
#[utoipa::path(post, path = "/api/v1/suppressions", tag = "suppressions", security(("bearer" = [])),
    request_body = SuppressionRequest,
    responses((status = 201, body = Data<SuppressionView>), SendAccess, BadJson,
        (status = 409, body = ErrorBody, description = "`already_suppressed`"), InvalidFields))]
pub async fn create(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    JsonBody(req): JsonBody<SuppressionRequest>,
) -> Result<(StatusCode, Json<Data<SuppressionView>>), ApiError> {
    let address = validate::email("address", &req.address)?;
    let reason = validate::header_text("reason", &req.reason, false, 500)?;
    let mut tx = state.pool.begin().await?;
    let row = suppressions::insert(&mut *tx, address.as_str(), &reason, actor.principal.key_id)
        .await
        .map_err(on_unique("suppressions_pkey", || {
            ApiError::conflict("already_suppressed", "this address is already suppressed")
        }))?;
    actor
        .commit(
            tx,
            "suppression.create",
            "suppression",
            &row.address,
            json!({"reason": reason}),
        )
        .await?;
    Ok((StatusCode::CREATED, Data::new(row.into())))
}

/// Removes an address from the suppression list (admin keys only: mail
/// then reaches an address that unsubscribed or bounced).
#[utoipa::path(delete, path = "/api/v1/suppressions/{address}", tag = "suppressions", security(("bearer" = [])),
    params(("address" = String, Path, description = "The address (any case)")),
    responses((status = 204, description = "Removed"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(address): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !suppressions::delete(&mut *tx, &address).await? {
        return Err(ApiError::NotFound("suppression"));
    }
    actor
        .commit(
            tx,
            "suppression.delete",
            "suppression",
            address.to_lowercase(),
            json!({}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
