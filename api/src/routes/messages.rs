//! `POST /api/v1/messages/email/send` and `GET /api/v1/messages/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use platform::celery::TaskMessage;
use platform::db::{idempotency, messages, outbox};
use platform::tasks::{SendEmailKwargs, SEND_EMAIL};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, ErrorBody};
use crate::extract::PathParam;
use crate::idempotency::{self as idem, IdempotencyKey};
use crate::send_request::SendEmailRequest;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct SendAccepted {
    pub message_id: Uuid,
    /// Celery task id; its result is stored under `celery-task-meta-<task_id>`.
    pub task_id: String,
    /// `queued`
    pub status: String,
}

/// Accepts an email for delivery. The message is recorded and its Celery
/// task committed in one transaction before the 202, so it is delivered
/// even if RabbitMQ is unreachable at this moment.
#[utoipa::path(post, path = "/api/v1/messages/email/send", tag = "messages",
    request_body = SendEmailRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Retries with the same key and body replay the first response")),
    responses(
        (status = 202, body = Data<SendAccepted>),
        (status = 400, body = ErrorBody, description = "Malformed JSON or Idempotency-Key"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "Key lacks the `send` scope"),
        (status = 409, body = ErrorBody, description = "`idempotency_key_in_flight`"),
        (status = 413, body = ErrorBody, description = "Body beyond EMAIL_MAX_SIZE"),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "Invalid field (`validation_error`, with `field`), or `idempotency_key_reused`")))]
pub async fn send(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Send)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
        }
        _ => ApiError::BadRequest {
            code: "invalid_body",
            message: rejection.body_text(),
        },
    })?;
    let idempotency_key = IdempotencyKey::from_headers(&headers)?;
    let request: SendEmailRequest = parse_json(&headers, &body)?;
    let new = request.validate(principal.key_id, state.settings.email_max_size)?;

    let kwargs = SendEmailKwargs {
        message_id: Some(new.id),
        ..Default::default()
    };
    let kwargs = match serde_json::to_value(kwargs) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let task = TaskMessage::new(SEND_EMAIL, &new.task_id, Vec::new(), kwargs);
    let body = serde_json::json!({"data": SendAccepted {
        message_id: new.id,
        task_id: new.task_id.clone(),
        status: "queued".into(),
    }});
    let (message_id, task_id) = (new.id, new.task_id.clone());

    match idempotency_key {
        // The common case goes through group commit.
        None => state.ingest.submit(new, task).await?,
        Some(key) => {
            let fingerprint =
                idem::fingerprint(&serde_json::to_value(&request).unwrap_or(Value::Null));
            let mut tx = state.pool.begin().await?;
            if !idempotency::try_lock(&mut tx, principal.key_id, key.as_str()).await? {
                return Err(idem::in_flight());
            }
            if let Some(stored) = idempotency::find(&mut tx, principal.key_id, key.as_str()).await?
            {
                // Release the key's lock now, not whenever the pool gets to
                // the dropped transaction, so a retry right after this one
                // is not told the key is in flight.
                tx.rollback().await?;
                if stored.request_hash != fingerprint {
                    return Err(idem::reused());
                }
                let status = StatusCode::from_u16(stored.response_status as u16)
                    .unwrap_or(StatusCode::ACCEPTED);
                let mut response = (status, Json(stored.response_body.0)).into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(response);
            }
            messages::insert(&mut *tx, &new).await?;
            let queue = &state.settings.queues.tasks;
            outbox::enqueue(&mut *tx, queue, queue, &task).await?;
            idempotency::save(
                &mut tx,
                principal.key_id,
                key.as_str(),
                &fingerprint,
                202,
                &body,
            )
            .await?;
            tx.commit().await?;
            state.outbox.wake();
        }
    }
    metrics::counter!("messages_accepted_total").increment(1);
    tracing::debug!(%message_id, %task_id, "email accepted");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The send body is parsed by hand (not by an extractor) so that the
/// fingerprint covers exactly what was accepted.
fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        message: format!("request body is not valid JSON: {e}"),
    })?;
    serde_json::from_value(value).map_err(|e| ApiError::Validation {
        code: "invalid_body",
        field: None,
        message: e.to_string(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    pub task_id: String,
    /// scheduled, queued, sending, sent, failed, suppressed or cancelled
    pub status: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    /// The account the message was (last) sent through.
    pub account_id: Option<Uuid>,
    pub account_email: Option<String>,
    pub smtp_message_id: Option<String>,
    /// The SMTP server's last reply.
    pub smtp_response: Option<String>,
    /// Why the message failed, or why it is waiting.
    pub error: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub queued_at: Option<DateTime<Utc>>,
    pub sending_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<messages::MessageRecord> for MessageView {
    fn from(m: messages::MessageRecord) -> Self {
        MessageView {
            id: m.id,
            task_id: m.task_id,
            status: m.status,
            to: m.to_addrs,
            cc: m.cc_addrs,
            bcc: m.bcc_addrs,
            subject: m.subject,
            account_id: m.account_id,
            account_email: m.account_email,
            smtp_message_id: m.smtp_message_id,
            smtp_response: m.smtp_response,
            error: m.error,
            attempts: m.attempts,
            created_at: m.created_at,
            queued_at: m.queued_at,
            sending_at: m.sending_at,
            sent_at: m.sent_at,
            failed_at: m.failed_at,
            updated_at: m.updated_at,
        }
    }
}

/// A message's delivery state. Keys without the admin scope see only the
/// messages they sent.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<MessageView>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<MessageView>>, ApiError> {
    if !principal.has(Scope::Admin) {
        principal.require(Scope::Read)?;
    }
    let message = messages::get(&state.pool, id)
        .await?
        .filter(|m| principal.has(Scope::Admin) || m.api_key_id == Some(principal.key_id))
        .ok_or(ApiError::NotFound("message"))?;
    Ok(Data::new(message.into()))
}
