//! `/api/v1/lists`: mailing lists and their members, the audiences of
//! campaigns (admin). Members are added (or their variables replaced) in
//! bulk: a JSON array of up to 100,000 entries, each address validated,
//! lower-cased and de-duplicated; invalid entries are reported by index.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::lists::{self, MailingList, Member};
use platform::mail::EmailAddress;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::docs::responses::{
    AdminAccess, BadJson, BadPath, BadPathOrJson, BadPathOrQuery, NotFound,
};
use crate::error::{on_unique, ApiError, ErrorBody, ErrorDetail};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::state::AppState;
use crate::validate;

/// Most members in one import request.
pub const MAX_IMPORT: usize = 100_000;
/// Rows per INSERT statement of an import.
const CHUNK: usize = 5_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "newsletter", "description": "Monthly news"}))]
pub struct ListRequest {
    /// Unique; 1 to 200 characters (trimmed).
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: String,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<MailingList> for ListView {
    fn from(l: MailingList) -> Self {
        ListView {
            id: l.id,
            name: l.name,
            description: l.description,
            member_count: l.member_count,
            created_at: l.created_at,
            updated_at: l.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    /// An email address; one that is not is refused by index in the answer.
    pub address: String,
    /// Per-member template variables (override the campaign's).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedMember {
    pub index: usize,
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// Addresses new to the list.
    pub added: u64,
    /// Addresses already on it (their variables replaced).
    pub updated: u64,
    /// Entries repeating an earlier entry of this request (ignored).
    pub duplicates: usize,
    pub rejected: Vec<RejectedMember>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: i64,
    pub address: String,
    #[schema(value_type = Object)]
    pub variables: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    /// When the member left through an unsubscribe link (campaigns skip it).
    pub unsubscribed_at: Option<DateTime<Utc>>,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        MemberView {
            id: m.id,
            address: m.address,
            variables: m.variables.0,
            created_at: m.created_at,
            unsubscribed_at: m.unsubscribed_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// Members after this member id (the last id of the previous page).
    pub after: Option<i64>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn duplicate() -> ApiError {
    ApiError::conflict("list_exists", "a list with this name already exists")
}

/// Creates a mailing list.
#[utoipa::path(post, path = "/api/v1/lists", tag = "campaigns", request_body = ListRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Data<ListView>), AdminAccess, BadJson,
        (status = 409, body = ErrorBody, description = "`list_exists`"),
        (status = 422, body = ErrorBody, description = "`validation_error` (with `field`), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(req): JsonBody<ListRequest>,
) -> Result<(StatusCode, Json<Data<ListView>>), ApiError> {
    let name = validate::name(&req.name)?;
    let mut tx = state.pool.begin().await?;
    let list = lists::insert(&mut *tx, &name, req.description.as_deref())
        .await
        .map_err(on_unique("mailing_lists_name_key", duplicate))?;
    actor
        .commit(
            tx,
            "list.create",
            "list",
            list.id,
            json!({"name": list.name}),
        )
        .await?;
    Ok((StatusCode::CREATED, Data::new(list.into())))
}

/// Lists mailing lists by name, with their member counts.
#[utoipa::path(get, path = "/api/v1/lists", tag = "campaigns", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<ListView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_admin): Admin,
) -> Result<Json<Data<Vec<ListView>>>, ApiError> {
    let rows = lists::list(&state.pool).await?;
    Ok(Data::new(rows.into_iter().map(Into::into).collect()))
}

/// One mailing list.
#[utoipa::path(get, path = "/api/v1/lists/{id}", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<ListView>), AdminAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<ListView>>, ApiError> {
    let list = lists::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("list"))?;
    Ok(Data::new(list.into()))
}

/// Deletes a mailing list and its members.
#[utoipa::path(delete, path = "/api/v1/lists/{id}", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !lists::delete(&mut *tx, id).await? {
        return Err(ApiError::NotFound("list"));
    }
    actor
        .commit(tx, "list.delete", "list", id, json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds members to a list (or replaces the variables of those already on
/// it): a JSON array of 1 to 100,000 `{address, variables}`. Addresses are
/// validated and lower-cased; a repeated address counts once; invalid
/// entries are reported by index and the valid ones are still added.
#[utoipa::path(post, path = "/api/v1/lists/{id}/members", tag = "campaigns",
    request_body = crate::docs::schemas::MemberImport, security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<ImportResult>), AdminAccess, BadPathOrJson, NotFound,
        (status = 422, body = ErrorBody, description = "`import_too_large` (over 100,000), `validation_error` (empty), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn add_members(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(entries): JsonBody<Vec<MemberInput>>,
) -> Result<Json<Data<ImportResult>>, ApiError> {
    if entries.is_empty() {
        return Err(ApiError::validation("members", "give at least one member"));
    }
    if entries.len() > MAX_IMPORT {
        return Err(ApiError::Validation {
            code: "import_too_large",
            field: None,
            message: format!("at most {MAX_IMPORT} members per request"),
        });
    }
    let mut seen = HashSet::with_capacity(entries.len());
    let mut addresses = Vec::with_capacity(entries.len());
    let mut variables = Vec::with_capacity(entries.len());
    let mut rejected = Vec::new();
    let mut duplicates = 0;
    for (index, entry) in entries.into_iter().enumerate() {
        match EmailAddress::parse(&entry.address) {
            Ok(address) => {
                let address = address.as_str().to_lowercase();
                if seen.insert(address.clone()) {
                    addresses.push(address);
                    variables.push(Value::Object(entry.variables));
                } else {
                    duplicates += 1;
                }
            }
            Err(e) => rejected.push(RejectedMember {
                index,
                error: ErrorDetail {
                    code: "validation_error".into(),
                    message: e.to_string(),
                    field: Some(format!("[{index}].address")),
                },
            }),
        }
    }
    let mut tx = state.pool.begin().await?;
    if lists::get(&mut *tx, id).await?.is_none() {
        return Err(ApiError::NotFound("list"));
    }
    let mut added = 0;
    for (a, v) in addresses.chunks(CHUNK).zip(variables.chunks(CHUNK)) {
        added += lists::upsert_members(&mut *tx, id, a, v).await?;
    }
    let updated = addresses.len() as u64 - added;
    actor
        .commit(
            tx,
            "list.members.add",
            "list",
            id,
            json!({"added": added, "updated": updated, "rejected": rejected.len()}),
        )
        .await?;
    Ok(Data::new(ImportResult {
        added,
        updated,
        duplicates,
        rejected,
    }))
}

/// A list's members in the order they were added.
#[utoipa::path(get, path = "/api/v1/lists/{id}/members", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path), MembersQuery),
    responses((status = 200, body = Data<Vec<MemberView>>), AdminAccess, BadPathOrQuery, NotFound,
        (status = 422, body = ErrorBody, description = "`validation_error` (limit)")))]
pub async fn members(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    PathParam(id): PathParam<Uuid>,
    QueryParams(query): QueryParams<MembersQuery>,
) -> Result<Json<Data<Vec<MemberView>>>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            "limit must be between 1 and 1000",
        ));
    }
    if lists::get(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("list"));
    }
    let rows = lists::members(&state.pool, id, query.after.unwrap_or(0), limit).await?;
    Ok(Data::new(rows.into_iter().map(Into::into).collect()))
}

/// Removes one member from a list.
#[utoipa::path(delete, path = "/api/v1/lists/{id}/members/{address}", tag = "campaigns",
    security(("bearer" = [])), params(("id" = Uuid, Path), ("address" = String, Path)),
    responses((status = 204, description = "Removed"), AdminAccess, BadPath, NotFound))]
pub async fn remove_member(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam((id, address)): PathParam<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !lists::remove_member(&mut *tx, id, &address).await? {
        return Err(ApiError::NotFound("member"));
    }
    actor
        .commit(
            tx,
            "list.members.remove",
            "list",
            id,
            json!({"address": address}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
