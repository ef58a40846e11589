//! The webhook events' bodies, for the OpenAPI document: its components
//! and its `webhooks` section (OpenAPI 3.1), one operation per event type.
//! The triggers of migrations V9 and V10 build the bodies; these types
//! only describe them.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

/// An event about one message, sent to the endpoints of the key that sent it.
#[derive(ToSchema)]
#[schema(example = json!({"type": "email.sent", "timestamp": "2026-12-02T09:00:01.500000Z",
    "data": {"event_id": "0193a1c2-7d4e-7f00-9a1b-2c3d4e5f6a7b", "sequence": 3,
        "message_id": "0193a1c2-6b00-7e00-8a00-000000000001", "task_id": "5f0c6c1e-8a2b-4c3d-9e4f-5a6b7c8d9e0f",
        "status": "sent", "to": ["user@example.com"], "cc": [], "subject": "Welcome",
        "account": "noreply@example.com", "smtp_message_id": "<0193a1c2@example.com>",
        "smtp_response": "250 2.0.0 Ok: queued", "error": null, "attempts": 1, "campaign_id": null,
        "metadata": {"order_id": "A-1042"}}}))]
pub struct EmailEvent {
    /// `email.accepted`, `email.sent`, `email.failed`, `email.retrying`,
    /// `email.suppressed`, `email.cancelled`, `email.unsubscribed`,
    /// `email.bounced` or `email.complained`.
    #[schema(example = "email.sent")]
    r#type: String,
    /// When the change happened (not when the event was sent).
    timestamp: DateTime<Utc>,
    data: EmailEventData,
}

#[derive(ToSchema)]
pub struct EmailEventData {
    /// Also the `webhook-id` header: the same on every attempt, so a
    /// receiver drops a repeat by it.
    event_id: Uuid,
    /// Orders the events of one message (or campaign run, account,
    /// endpoint): 1, 2, 3... Delivery order is best effort; this is not.
    sequence: i32,
    message_id: Uuid,
    /// The Celery task id.
    task_id: String,
    /// The message's status right after the change; this and the account,
    /// SMTP reply, error and attempts are as they were then.
    status: String,
    to: Vec<String>,
    cc: Vec<String>,
    subject: String,
    /// The SMTP account it went (or was tried) through.
    account: Option<String>,
    smtp_message_id: Option<String>,
    /// The SMTP server's last reply.
    smtp_response: Option<String>,
    /// Why it failed, is retried, or was not sent.
    error: Option<String>,
    attempts: i32,
    campaign_id: Option<Uuid>,
    /// The send's `metadata`, as given (empty when none).
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
}

/// `campaign.run.started` and `campaign.run.completed` (admin keys' endpoints).
#[derive(ToSchema)]
pub struct CampaignRunEvent {
    #[schema(example = "campaign.run.completed")]
    r#type: String,
    timestamp: DateTime<Utc>,
    data: CampaignRunEventData,
}

#[derive(ToSchema)]
pub struct CampaignRunEventData {
    event_id: Uuid,
    sequence: i32,
    campaign_id: Uuid,
    campaign_name: Option<String>,
    run_id: Uuid,
    /// `schedule` or `manual`.
    trigger: String,
    scheduled_for: DateTime<Utc>,
    /// `running` (started), `completed` or `failed`.
    status: String,
    /// Messages enqueued so far.
    recipients: i32,
    suppressed: i32,
    skipped: i32,
    error: Option<String>,
    finished_at: Option<DateTime<Utc>>,
}

/// `account.paused` (an operator set `is_active: false`, or the platform
/// paused it for its bounce or complaint rate: `paused_reason`) and
/// `account.circuit_open` (failures in a row took it out of rotation until
/// `circuit_open_until`), for admin keys' endpoints.
#[derive(ToSchema)]
pub struct AccountEvent {
    #[schema(example = "account.circuit_open")]
    r#type: String,
    timestamp: DateTime<Utc>,
    data: AccountEventData,
}

#[derive(ToSchema)]
pub struct AccountEventData {
    event_id: Uuid,
    sequence: i32,
    account_id: Uuid,
    /// The account's address.
    account: String,
    is_active: bool,
    /// Why the platform paused it; absent when an operator did.
    paused_reason: Option<String>,
    circuit_open_until: Option<DateTime<Utc>>,
    consecutive_failures: i32,
    last_error: Option<String>,
}

/// `endpoint.disabled`: the dispatcher gave up on an endpoint that failed
/// for the whole retry window (admin keys' endpoints).
#[derive(ToSchema)]
pub struct EndpointDisabledEvent {
    #[schema(example = "endpoint.disabled")]
    r#type: String,
    timestamp: DateTime<Utc>,
    data: EndpointDisabledEventData,
}

#[derive(ToSchema)]
pub struct EndpointDisabledEventData {
    event_id: Uuid,
    sequence: i32,
    endpoint_id: Uuid,
    /// Without its query or credentials.
    url: String,
    owner_key_id: Uuid,
    reason: String,
    failing_since: Option<DateTime<Utc>>,
}

/// `webhook.test`, sent by `POST /webhooks/{id}/test`.
#[derive(ToSchema)]
pub struct WebhookTestEvent {
    #[schema(example = "webhook.test")]
    r#type: String,
    timestamp: DateTime<Utc>,
    data: WebhookTestEventData,
}

#[derive(ToSchema)]
pub struct WebhookTestEventData {
    event_id: Uuid,
    endpoint_id: Uuid,
}

/// Each event type and the schema of its body.
const EVENTS: [(&str, &str, &str); 15] = [
    (
        "email.accepted",
        "EmailEvent",
        "A send was recorded (queued, scheduled, or, with `status`, suppressed or refused).",
    ),
    (
        "email.sent",
        "EmailEvent",
        "The SMTP server accepted the email.",
    ),
    ("email.failed", "EmailEvent", "Delivery failed for good."),
    (
        "email.retrying",
        "EmailEvent",
        "An attempt failed temporarily; the email is queued again.",
    ),
    (
        "email.suppressed",
        "EmailEvent",
        "A recipient is suppressed; nothing was sent.",
    ),
    (
        "email.cancelled",
        "EmailEvent",
        "The send was cancelled before a worker took it.",
    ),
    (
        "email.unsubscribed",
        "EmailEvent",
        "The recipient used the email's one-click unsubscribe link (RFC 8058).",
    ),
    (
        "email.bounced",
        "EmailEvent",
        "The receiving side reported the sent email undeliverable (a hard bounce); `error` holds the status and diagnostic.",
    ),
    (
        "email.complained",
        "EmailEvent",
        "The recipient reported the sent email as unwanted (an abuse report).",
    ),
    (
        "campaign.run.started",
        "CampaignRunEvent",
        "A campaign run began.",
    ),
    (
        "campaign.run.completed",
        "CampaignRunEvent",
        "A campaign run finished enqueueing (or failed: `status`).",
    ),
    (
        "account.paused",
        "AccountEvent",
        "An operator, or the platform for its bounce or complaint rate (`paused_reason`), took an SMTP account out of rotation.",
    ),
    (
        "account.circuit_open",
        "AccountEvent",
        "An SMTP account's circuit breaker opened.",
    ),
    (
        "endpoint.disabled",
        "EndpointDisabledEvent",
        "The dispatcher disabled an endpoint.",
    ),
    (
        "webhook.test",
        "WebhookTestEvent",
        "Sent by `POST /webhooks/{id}/test`, whatever the endpoint subscribes to.",
    ),
];

/// The `webhooks` section: one POST per event type, as the dispatcher
/// makes it (Standard Webhooks headers, the JSON body).
pub fn webhooks_section() -> Value {
    let header = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": true, "description": description,
               "schema": {"type": "string"}})
    };
    let parameters = json!([
        header("webhook-id", "The event id (`data.event_id`); the same on every attempt."),
        header("webhook-timestamp", "Unix seconds when this attempt was signed; refuse one more than 5 minutes off."),
        header("webhook-signature", "`v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the \
            endpoint's secret (the base64 after `whsec_`); during a rotation's grace period two, space-separated."),
    ]);
    let mut section = Map::new();
    for (event, schema, summary) in EVENTS {
        section.insert(
            event.to_string(),
            json!({"post": {
                "summary": summary,
                "tags": ["webhooks"],
                "parameters": parameters,
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
                "responses": {
                    "2XX": {"description": "Received. Any other answer (or none within WEBHOOK_TIMEOUT_SECONDS) is retried with backoff."}
                }
            }}),
        );
    }
    Value::Object(section)
}
