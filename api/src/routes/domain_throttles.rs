//! `/api/v1/admin/domain-throttles`: limits on mail to one recipient
//! domain (admin scope), held by the workers across all of them. A domain
//! is matched exactly and case-insensitively: a throttle on `gmail.com`
//! covers neither `googlemail.com` nor `mail.gmail.com`. Workers read the
//! settings every few seconds (`DOMAIN_THROTTLE_CACHE_SECONDS`), so a
//! change takes effect within that time. Every change is in the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::domain_throttles::{self, DomainThrottle, Limits, LimitsPatch, DOMAIN_TAKEN};
use platform::mail::domain::Domain;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::Data;
use crate::audit::{Actor, AdminActor};
use crate::auth::Admin;
use crate::docs::responses::{
    AdminAccess, BadJson, BadPath, BadPathOrJson, InvalidFields, NotFound,
};
use crate::error::{on_unique, ApiError, ErrorBody};
use crate::extract::{self, JsonBody, PathParam};
use crate::state::AppState;
use crate::validate;

/// Highest rate: 10,000 sends a second.
const MAX_RATE: i64 = 600_000;
const MAX_CONNECTIONS: i64 = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"domain": "gmail.com", "rate_limit_per_minute": 600, "max_connections": 10}))]
pub struct CreateDomainThrottle {
    /// The recipient domain, matched exactly and case-insensitively
    /// (internationalised names in their `xn--` form).
    #[schema(
        max_length = 253,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    )]
    pub domain: String,
    /// Sends per minute to the domain, across all workers, spread evenly
    /// (at most a second's worth at once). Absent: no rate limit.
    #[schema(minimum = 1, maximum = 600_000)]
    pub rate_limit_per_minute: Option<i64>,
    /// SMTP transactions carrying mail for the domain at once, across all
    /// workers. Absent: no cap.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<i64>,
}

/// A throttle's limits, replacing the ones it has (absent: no limit).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"rate_limit_per_minute": 600, "max_connections": 10}))]
pub struct ReplaceDomainThrottle {
    #[schema(minimum = 1, maximum = 600_000)]
    pub rate_limit_per_minute: Option<i64>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<i64>,
}

/// Absent fields keep their value; 0 removes a limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"rate_limit_per_minute": 300}))]
pub struct UpdateDomainThrottle {
    #[schema(minimum = 0, maximum = 600_000)]
    pub rate_limit_per_minute: Option<i64>,
    #[schema(minimum = 0, maximum = 1000)]
    pub max_connections: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DomainThrottleView {
    /// Lower-cased.
    pub domain: String,
    /// `null`: no rate limit.
    pub rate_limit_per_minute: Option<i32>,
    /// `null`: no cap.
    pub max_connections: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<DomainThrottle> for DomainThrottleView {
    fn from(t: DomainThrottle) -> Self {
        DomainThrottleView {
            domain: t.domain,
            rate_limit_per_minute: t.rate_limit_per_minute,
            max_connections: t.max_connections,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// The domain a path names (any case).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DomainPath {
    /// The recipient domain, in any case.
    #[param(
        max_length = 253,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    )]
    pub domain: String,
}

/// A body that must be a JSON object: serde would also read a struct from
/// an array of its fields (`[null, null]`), which the schema refuses.
type Object = serde_json::Map<String, serde_json::Value>;

fn from_object<T: serde::de::DeserializeOwned>(body: Object) -> Result<T, ApiError> {
    serde_json::from_value(serde_json::Value::Object(body)).map_err(extract::invalid_body)
}

/// A domain in a request body: 422 `validation_error` naming `domain`.
fn body_domain(raw: &str) -> Result<Domain, ApiError> {
    Domain::parse(raw).map_err(|e| ApiError::validation("domain", e.to_string()))
}

/// A domain in the path: 400 `invalid_path`, as other malformed paths.
fn path_domain(raw: &str) -> Result<Domain, ApiError> {
    Domain::parse(raw).map_err(|e| ApiError::BadRequest {
        code: "invalid_path",
        message: e.to_string(),
    })
}

fn limits(rate: Option<i64>, connections: Option<i64>, min: i64) -> Result<Limits, ApiError> {
    Ok(Limits {
        rate_limit_per_minute: rate
            .map(|r| validate::in_range("rate_limit_per_minute", r, min, MAX_RATE))
            .transpose()?,
        max_connections: connections
            .map(|c| validate::in_range("max_connections", c, min, MAX_CONNECTIONS))
            .transpose()?,
    })
}

/// What the audit log keeps of a throttle.
fn summary(t: &DomainThrottle) -> serde_json::Value {
    json!({"rate_limit_per_minute": t.rate_limit_per_minute, "max_connections": t.max_connections})
}

async fn audited(
    actor: &Actor,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    action: &str,
    throttle: &DomainThrottle,
) -> Result<(), ApiError> {
    actor
        .commit(
            tx,
            action,
            "domain_throttle",
            &throttle.domain,
            summary(throttle),
        )
        .await
}

/// Every domain throttle, in domain order.
#[utoipa::path(get, path = "/api/v1/admin/domain-throttles", tag = "domain-throttles",
    security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<DomainThrottleView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_principal): Admin,
) -> Result<Json<Data<Vec<DomainThrottleView>>>, ApiError> {
    let rows = domain_throttles::list(&state.pool).await?;
    Ok(Data::new(rows.into_iter().map(Into::into).collect()))
}

/// Adds a throttle for a recipient domain.
#[utoipa::path(post, path = "/api/v1/admin/domain-throttles", tag = "domain-throttles",
    request_body = CreateDomainThrottle, security(("bearer" = [])),
    responses((status = 201, body = Data<DomainThrottleView>), AdminAccess, BadJson,
        (status = 409, body = ErrorBody, description = "`domain_throttle_exists`: the domain has one (change it with PUT or PATCH)"),
        InvalidFields))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(body): JsonBody<Object>,
) -> Result<(StatusCode, Json<Data<DomainThrottleView>>), ApiError> {
    let req: CreateDomainThrottle = from_object(body)?;
    let domain = body_domain(&req.domain)?;
    let limits = limits(req.rate_limit_per_minute, req.max_connections, 1)?;
    let mut tx = state.pool.begin().await?;
    let throttle = domain_throttles::insert(&mut *tx, &domain, limits)
        .await
        .map_err(on_unique(DOMAIN_TAKEN, || {
            ApiError::conflict(
                "domain_throttle_exists",
                format!("{domain} already has a throttle"),
            )
        }))?;
    audited(&actor, tx, "domain_throttle.create", &throttle).await?;
    tracing::info!(%domain, actor = %actor.principal.key_id, "domain throttle created");
    Ok((StatusCode::CREATED, Data::new(throttle.into())))
}

#[utoipa::path(get, path = "/api/v1/admin/domain-throttles/{domain}", tag = "domain-throttles",
    security(("bearer" = [])),
    params(DomainPath),
    responses((status = 200, body = Data<DomainThrottleView>), AdminAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_principal): Admin,
    PathParam(DomainPath { domain }): PathParam<DomainPath>,
) -> Result<Json<Data<DomainThrottleView>>, ApiError> {
    let domain = path_domain(&domain)?;
    let throttle = domain_throttles::get(&state.pool, &domain)
        .await?
        .ok_or(ApiError::NotFound("domain throttle"))?;
    Ok(Data::new(throttle.into()))
}

/// Sets a domain's limits, adding its throttle if it has none (201) or
/// replacing both limits (200; an absent one is removed).
#[utoipa::path(put, path = "/api/v1/admin/domain-throttles/{domain}", tag = "domain-throttles",
    security(("bearer" = [])), request_body = ReplaceDomainThrottle,
    params(DomainPath),
    responses((status = 200, body = Data<DomainThrottleView>, description = "Replaced"),
        (status = 201, body = Data<DomainThrottleView>, description = "Added"),
        AdminAccess, BadPathOrJson, InvalidFields))]
pub async fn replace(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(DomainPath { domain }): PathParam<DomainPath>,
    JsonBody(body): JsonBody<Object>,
) -> Result<(StatusCode, Json<Data<DomainThrottleView>>), ApiError> {
    let domain = path_domain(&domain)?;
    let req: ReplaceDomainThrottle = from_object(body)?;
    let limits = limits(req.rate_limit_per_minute, req.max_connections, 1)?;
    let mut tx = state.pool.begin().await?;
    let (throttle, created) = domain_throttles::upsert(&mut *tx, &domain, limits).await?;
    let action = if created {
        "domain_throttle.create"
    } else {
        "domain_throttle.update"
    };
    audited(&actor, tx, action, &throttle).await?;
    tracing::info!(%domain, created, actor = %actor.principal.key_id, "domain throttle set");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Data::new(throttle.into())))
}

/// Changes a throttle's limits; 0 removes one.
#[utoipa::path(patch, path = "/api/v1/admin/domain-throttles/{domain}", tag = "domain-throttles",
    security(("bearer" = [])), request_body = UpdateDomainThrottle,
    params(DomainPath),
    responses((status = 200, body = Data<DomainThrottleView>), AdminAccess, BadPathOrJson,
        NotFound, InvalidFields))]
pub async fn update(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(DomainPath { domain }): PathParam<DomainPath>,
    JsonBody(body): JsonBody<Object>,
) -> Result<Json<Data<DomainThrottleView>>, ApiError> {
    let domain = path_domain(&domain)?;
    let req: UpdateDomainThrottle = from_object(body)?;
    let Limits {
        rate_limit_per_minute,
        max_connections,
    } = limits(req.rate_limit_per_minute, req.max_connections, 0)?;
    let patch = LimitsPatch {
        rate_limit_per_minute,
        max_connections,
    };
    let mut tx = state.pool.begin().await?;
    let throttle = domain_throttles::update(&mut *tx, &domain, patch)
        .await?
        .ok_or(ApiError::NotFound("domain throttle"))?;
    audited(&actor, tx, "domain_throttle.update", &throttle).await?;
    tracing::info!(%domain, actor = %actor.principal.key_id, "domain throttle updated");
    Ok(Data::new(throttle.into()))
}

/// Removes a domain's throttle: its mail flows unthrottled once the
/// workers' cache turns over.
#[utoipa::path(delete, path = "/api/v1/admin/domain-throttles/{domain}", tag = "domain-throttles",
    security(("bearer" = [])),
    params(DomainPath),
    responses((status = 204, description = "Removed"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(DomainPath { domain }): PathParam<DomainPath>,
) -> Result<StatusCode, ApiError> {
    let domain = path_domain(&domain)?;
    let mut tx = state.pool.begin().await?;
    if !domain_throttles::delete(&mut *tx, &domain).await? {
        return Err(ApiError::NotFound("domain throttle"));
    }
    actor
        .commit(
            tx,
            "domain_throttle.delete",
            "domain_throttle",
            domain.as_str(),
            json!({}),
        )
        .await?;
    tracing::info!(%domain, actor = %actor.principal.key_id, "domain throttle deleted");
    Ok(StatusCode::NO_CONTENT)
}
