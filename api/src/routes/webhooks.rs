//! `/api/v1/webhooks`: endpoints that receive signed message events
//! (Standard Webhooks). Reading takes `read` or `send` (or `admin`),
//! changing takes `send`; every change is in the audit log.
//!
//! An endpoint belongs to the key that created it and receives the events
//! of that key's messages. Other non-admin keys neither see nor change it
//! (404); admin keys see and change every endpoint. The signing secret is
//! generated here, returned once (at creation and at each rotation),
//! stored sealed, and never shown again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::webhooks::{self, Delivery, Endpoint, EndpointPatch, NewEndpoint};
use platform::webhooks::address::host_is_private;
use platform::webhooks::signature::{SigningKey, SECRET_PURPOSE};
use platform::webhooks::{ADMIN_EVENT_TYPES, EVENT_TYPES};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::{Actor, SendActor};
use crate::auth::{Principal, Scope};
use crate::docs::responses::{
    BadJson, BadPage, BadPath, BadPathOrJson, BadPathOrQuery, BadQuery, NotFound, ReadAccess,
    SendAccess,
};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::pagination::{self, Page};
use crate::state::AppState;
use crate::validate;

/// Longest endpoint URL, in characters.
const MAX_URL: usize = 2048;
/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 500;

/// An event an endpoint may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum EventType {
    /// A send was accepted (queued, or scheduled for later).
    #[serde(rename = "email.accepted")]
    Accepted,
    /// The SMTP server accepted the email.
    #[serde(rename = "email.sent")]
    Sent,
    /// Delivery failed for good.
    #[serde(rename = "email.failed")]
    Failed,
    /// An attempt failed temporarily; the email is queued again.
    #[serde(rename = "email.retrying")]
    Retrying,
    /// The recipient is suppressed; nothing was sent.
    #[serde(rename = "email.suppressed")]
    Suppressed,
    /// The send was cancelled before a worker took it.
    #[serde(rename = "email.cancelled")]
    Cancelled,
    /// The recipient used the email's one-click unsubscribe link.
    #[serde(rename = "email.unsubscribed")]
    Unsubscribed,
    /// The receiving side reported the sent email undeliverable (a hard bounce).
    #[serde(rename = "email.bounced")]
    Bounced,
    /// The recipient reported the sent email as unwanted (an abuse report).
    #[serde(rename = "email.complained")]
    Complained,
    /// A campaign run began (admin keys only).
    #[serde(rename = "campaign.run.started")]
    CampaignRunStarted,
    /// A campaign run finished enqueueing, or failed (admin keys only).
    #[serde(rename = "campaign.run.completed")]
    CampaignRunCompleted,
    /// An operator, or the platform for its bounce or complaint rate, took
    /// an SMTP account out of rotation (admin keys only).
    #[serde(rename = "account.paused")]
    AccountPaused,
    /// An SMTP account's circuit breaker opened after failures in a row
    /// (admin keys only).
    #[serde(rename = "account.circuit_open")]
    AccountCircuitOpen,
    /// The dispatcher disabled an endpoint that failed for the whole retry
    /// window (admin keys only).
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Accepted => "email.accepted",
            EventType::Sent => "email.sent",
            EventType::Failed => "email.failed",
            EventType::Retrying => "email.retrying",
            EventType::Suppressed => "email.suppressed",
            EventType::Cancelled => "email.cancelled",
            EventType::Unsubscribed => "email.unsubscribed",
            EventType::Bounced => "email.bounced",
            EventType::Complained => "email.complained",
            EventType::CampaignRunStarted => "campaign.run.started",
            EventType::CampaignRunCompleted => "campaign.run.completed",
            EventType::AccountPaused => "account.paused",
            EventType::AccountCircuitOpen => "account.circuit_open",
            EventType::EndpointDisabled => "endpoint.disabled",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/notify", "event_types": ["email.sent", "email.failed"],
    "description": "delivery status for the shop"}))]
pub struct CreateWebhook {
    /// `http` or `https`; at most 2048 characters. Its host may not be a
    /// loopback, private or link-local address (422 `private_address`).
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#]+[^\s]*$")]
    pub url: String,
    /// At least one; a type named twice counts once.
    #[schema(min_items = 1, max_items = 14)]
    pub event_types: Vec<EventType>,
    /// At most 500 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: String,
    /// Default true.
    #[serde(default = "yes")]
    pub is_active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#]+[^\s]*$")]
    pub url: Option<String>,
    #[schema(min_items = 1, max_items = 14)]
    pub event_types: Option<Vec<EventType>>,
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
    /// `true` turns an endpoint the dispatcher disabled back on.
    pub is_active: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub is_active: bool,
    /// Why the dispatcher disabled it (every delivery failing for the
    /// whole retry window).
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the previous secret also signs (after a rotation).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Endpoint> for WebhookView {
    fn from(e: Endpoint) -> Self {
        WebhookView {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            is_active: e.is_active,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            previous_secret_expires_at: e.previous_secret_expires_at,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A new endpoint, with its signing secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_` and base64 of the key, as Standard Webhooks libraries take it.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret, shown this once.
    pub secret: String,
    /// The previous secret signs too (a second signature) until then.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` header: the same on every attempt.
    pub event_id: Uuid,
    pub event_type: String,
    pub message_id: Option<Uuid>,
    /// `pending`, `delivered` or `failed` (retry window passed).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last attempt, if the endpoint answered.
    pub last_status: Option<i32>,
    pub last_latency_ms: Option<i32>,
    /// The start of the last response body.
    pub last_response: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            message_id: d.message_id,
            next_attempt_at: (d.status == "pending").then_some(d.next_attempt_at),
            status: d.status,
            attempts: d.attempts,
            last_attempt_at: d.last_attempt_at,
            last_status: d.last_status,
            last_latency_ms: d.last_latency_ms,
            last_response: d.last_response,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestEvent {
    /// The `webhook-id` of the `webhook.test` event.
    pub event_id: Uuid,
    pub delivery_id: Uuid,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The URL as stored: trimmed, parsed, http(s), and not aimed at an
/// internal address unless `WEBHOOK_ALLOW_PRIVATE`.
fn endpoint_url(raw: &str, allow_private: bool) -> Result<String, ApiError> {
    let raw = raw.trim();
    if raw.chars().count() > MAX_URL {
        return Err(ApiError::validation(
            "url",
            format!("url must be at most {MAX_URL} characters"),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| ApiError::invalid("invalid_url", "url", format!("url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid(
            "invalid_url",
            "url",
            "url must be http or https",
        ));
    }
    let Some(host) = url.host() else {
        return Err(ApiError::invalid("invalid_url", "url", "url has no host"));
    };
    if !allow_private && host_is_private(&host) {
        return Err(ApiError::invalid(
            "private_address",
            "url",
            "url points at a loopback, private or link-local address",
        ));
    }
    Ok(url.to_string())
}

/// The types as stored, each once.
fn event_types(types: &[EventType]) -> Result<Vec<String>, ApiError> {
    if types.is_empty() || types.len() > EVENT_TYPES.len() {
        return Err(ApiError::validation(
            "event_types",
            format!("name 1 to {} event types", EVENT_TYPES.len()),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        if !names.iter().any(|n| n == t.as_str()) {
            names.push(t.as_str().to_string());
        }
    }
    Ok(names)
}

/// Platform events (campaign runs, accounts, endpoints) go only to
/// endpoints of admin keys, so only an admin key may ask for them, for an
/// endpoint of its own (`owner_is_admin`).
fn platform_events_allowed(names: &[String], owner_is_admin: bool) -> Result<(), ApiError> {
    match names
        .iter()
        .find(|n| ADMIN_EVENT_TYPES.contains(&n.as_str()))
    {
        Some(name) if !owner_is_admin => Err(ApiError::invalid(
            "admin_event_type",
            "event_types",
            format!("{name} is a platform event: only an admin key's own endpoints receive it"),
        )),
        _ => Ok(()),
    }
}

fn description(value: &str) -> Result<String, ApiError> {
    validate::header_text("description", value, false, MAX_DESCRIPTION)
}

/// The audit details of an endpoint: never its secret, and its URL
/// without the query (which may carry a receiver's token).
fn summary(e: &Endpoint) -> Value {
    let url = url::Url::parse(&e.url)
        .map(|mut u| {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            u.to_string()
        })
        .unwrap_or_default();
    json!({"url": url, "event_types": e.event_types, "is_active": e.is_active})
}

fn webhook_settings(state: &AppState) -> Result<&platform::config::WebhookSettings, ApiError> {
    state
        .settings
        .webhooks
        .as_ref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("webhook settings are not loaded")))
}

async fn record(
    actor: &Actor,
    tx: &mut sqlx::PgConnection,
    action: &str,
    endpoint: &Endpoint,
) -> Result<(), ApiError> {
    actor
        .record(&mut *tx, action, "webhook", endpoint.id, summary(endpoint))
        .await
}

/// Registers an endpoint. The response carries its signing secret, which
/// is never shown again.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    security(("bearer" = [])),
    responses((status = 201, body = Data<CreatedWebhook>), SendAccess, BadJson,
        (status = 409, body = ErrorBody, description = "`webhook_limit_reached`: the key has WEBHOOK_MAX_ENDPOINTS_PER_KEY endpoints"),
        (status = 422, body = ErrorBody, description = "`validation_error`, `invalid_url`, `private_address`, `admin_event_type` (a platform event for an endpoint that is not an admin key's own), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn create(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    JsonBody(req): JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<Data<CreatedWebhook>>), ApiError> {
    let settings = webhook_settings(&state)?;
    let url = endpoint_url(&req.url, settings.allow_private)?;
    let event_types = event_types(&req.event_types)?;
    platform_events_allowed(&event_types, actor.principal.has(Scope::Admin))?;
    let description = description(&req.description)?;
    let (_, secret) = SigningKey::generate();
    let sealed = state
        .settings
        .keyring
        .seal(secret.expose_secret(), SECRET_PURPOSE);
    let mut tx = state.pool.begin().await?;
    let owner = actor.principal.key_id;
    if webhooks::lock_and_count(&mut tx, owner).await? >= settings.max_endpoints_per_key {
        return Err(ApiError::conflict(
            "webhook_limit_reached",
            format!(
                "this key has {} webhook endpoints, the most it may have",
                settings.max_endpoints_per_key
            ),
        ));
    }
    let endpoint = webhooks::insert(
        &mut *tx,
        owner,
        &NewEndpoint {
            url,
            event_types,
            description,
            is_active: req.is_active,
            secret: sealed,
        },
    )
    .await?;
    record(&actor, &mut tx, "webhook.create", &endpoint).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Data::new(CreatedWebhook {
            webhook: endpoint.into(),
            secret: secret.expose_secret().to_string(),
        }),
    ))
}

/// Lists endpoints, oldest first.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, body = Data<Page<WebhookView>>), ReadAccess, BadQuery, BadPage))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<Data<Page<WebhookView>>>, ApiError> {
    principal.require_read()?;
    let limit = pagination::limit(query.limit)?;
    let after = pagination::time_id_after(query.cursor.as_deref())?;
    let rows = webhooks::list(&state.pool, principal.owner_filter(), after, limit + 1).await?;
    Ok(Data::new(Page::from_rows(rows, limit, |e| {
        pagination::encode_time_id(e.created_at, e.id)
    })))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<WebhookView>), ReadAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<WebhookView>>, ApiError> {
    principal.require_read()?;
    let endpoint = webhooks::get(&state.pool, id, principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(Data::new(endpoint.into()))
}

/// Changes the fields given. `is_active: true` turns a disabled endpoint
/// back on (and clears why it was disabled).
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateWebhook,
    responses((status = 200, body = Data<WebhookView>), SendAccess, BadPathOrJson, NotFound,
        (status = 422, body = ErrorBody, description = "`validation_error`, `invalid_url`, `private_address`, `admin_event_type` (a platform event for an endpoint that is not an admin key's own), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn update(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<UpdateWebhook>,
) -> Result<Json<Data<WebhookView>>, ApiError> {
    let settings = webhook_settings(&state)?;
    let patch = EndpointPatch {
        url: req
            .url
            .as_deref()
            .map(|u| endpoint_url(u, settings.allow_private))
            .transpose()?,
        event_types: req.event_types.as_deref().map(event_types).transpose()?,
        description: req.description.as_deref().map(description).transpose()?,
        is_active: req.is_active,
    };
    let mut tx = state.pool.begin().await?;
    let endpoint = webhooks::update(&mut *tx, id, actor.principal.owner_filter(), &patch)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    // Platform events need the endpoint to be the admin caller's own (an
    // admin changing another key's endpoint may not add them); refused
    // here, the update is rolled back with the transaction.
    if let Some(names) = &patch.event_types {
        let owns_as_admin =
            actor.principal.has(Scope::Admin) && endpoint.owner_key_id == actor.principal.key_id;
        platform_events_allowed(names, owns_as_admin)?;
    }
    record(&actor, &mut tx, "webhook.update", &endpoint).await?;
    tx.commit().await?;
    Ok(Data::new(endpoint.into()))
}

/// Deletes an endpoint and its pending deliveries.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), SendAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    let endpoint = webhooks::delete(&mut *tx, id, actor.principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    record(&actor, &mut tx, "webhook.delete", &endpoint).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the signing secret. The new one is returned this once; the
/// previous one keeps signing (a second `v1,` signature) for
/// WEBHOOK_ROTATION_GRACE_SECONDS, so receivers can switch.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<RotatedSecret>), SendAccess, BadPath, NotFound))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<RotatedSecret>>, ApiError> {
    let settings = webhook_settings(&state)?;
    let (_, secret) = SigningKey::generate();
    let sealed = state
        .settings
        .keyring
        .seal(secret.expose_secret(), SECRET_PURPOSE);
    let mut tx = state.pool.begin().await?;
    let endpoint = webhooks::rotate_secret(
        &mut *tx,
        id,
        actor.principal.owner_filter(),
        &sealed,
        settings.rotation_grace,
    )
    .await?
    .ok_or(ApiError::NotFound("webhook"))?;
    record(&actor, &mut tx, "webhook.rotate_secret", &endpoint).await?;
    tx.commit().await?;
    Ok(Data::new(RotatedSecret {
        secret: secret.expose_secret().to_string(),
        previous_secret_expires_at: endpoint.previous_secret_expires_at,
    }))
}

/// The endpoint's deliveries, newest first, each with its last attempt.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("bearer" = [])), params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Data<Page<DeliveryView>>), ReadAccess, BadPathOrQuery, NotFound, BadPage))]
pub async fn deliveries(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<Data<Page<DeliveryView>>>, ApiError> {
    principal.require_read()?;
    let limit = pagination::limit(query.limit)?;
    let after = pagination::time_id_after(query.cursor.as_deref())?;
    webhooks::get(&state.pool, id, principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let rows = webhooks::deliveries(&state.pool, id, after, limit + 1).await?;
    Ok(Data::new(Page::from_rows(rows, limit, |d| {
        pagination::encode_time_id(d.created_at, d.id)
    })))
}

/// Sends a delivery again now (same event, same `webhook-id`), with a
/// fresh retry window.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202, body = Data<DeliveryView>), SendAccess, BadPath, NotFound))]
pub async fn redeliver(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam((id, delivery_id)): PathParam<(Uuid, Uuid)>,
) -> Result<(StatusCode, Json<Data<DeliveryView>>), ApiError> {
    let mut tx = state.pool.begin().await?;
    let endpoint = webhooks::get(&mut *tx, id, actor.principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let delivery = webhooks::redeliver(&mut *tx, id, delivery_id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    record(&actor, &mut tx, "webhook.redeliver", &endpoint).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Data::new(delivery.into())))
}

/// Queues a `webhook.test` event for this endpoint (whatever it
/// subscribes to); follow it in the deliveries.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 202, body = Data<TestEvent>), SendAccess, BadPath, NotFound))]
pub async fn test(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<(StatusCode, Json<Data<TestEvent>>), ApiError> {
    let mut tx = state.pool.begin().await?;
    webhooks::get(&mut *tx, id, actor.principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let (event_id, delivery_id) = webhooks::insert_test_event(&mut tx, id).await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Data::new(TestEvent {
            event_id,
            delivery_id,
        }),
    ))
}
