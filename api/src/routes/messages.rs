//! Messages: sending (single, batch, templated, scheduled, with
//! attachments), following, cancelling, listing and statistics.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::messages::{Acceptance, MessageFilter, MessageStatus};
use platform::db::{attachments, idempotency, messages, outbox, suppressions};
use platform::tasks::send_email_task;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::{Actor, SendActor};
use crate::auth::{Principal, Scope};
use crate::docs::responses::{BadJson, BadPath, BadQuery, NotFound, ReadAccess, SendAccess};
use crate::error::ErrorDetail;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{self, JsonBody, PathParam, QueryParams};
use crate::idempotency::{self as idem, IdempotencyKey};
use crate::ingest;
use crate::pagination::{self, Page};
use crate::send_request::{AcceptedEmail, Limits, SendEmailRequest, TemplateRef};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct SendAccepted {
    pub message_id: Uuid,
    /// Celery task id; its result is stored under `celery-task-meta-<task_id>`.
    pub task_id: String,
    /// `queued`; `scheduled` with `send_at`; `suppressed` when a recipient
    /// is on the suppression list (recorded, never sent).
    pub status: String,
}

/// Accepts an email for delivery. The message is recorded and its Celery
/// task committed in one transaction before the 202, so it is delivered
/// even if RabbitMQ is unreachable at this moment. With a template, the
/// subject and bodies are rendered now (HTML auto-escaped), so a missing or
/// unknown variable is a 422 naming it. With `send_at` the message is
/// `scheduled`; to a suppressed address it is recorded `suppressed` and not sent.
#[utoipa::path(post, path = "/api/v1/messages/email/send", tag = "messages",
    request_body = SendEmailRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Retries with the same key and body replay the first response. \
            1 to 255 visible ASCII characters, optionally in double quotes.",
        pattern = r#"^"*[!#-~](?:[!-~]{0,253}[!#-~])?"*$"#)),
    responses((status = 202, body = Data<SendAccepted>), SendAccess,
        (status = 400, body = ErrorBody, description = "`invalid_json`, `invalid_body` or `invalid_idempotency_key`"),
        (status = 409, body = ErrorBody, description = "`idempotency_key_in_flight`"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`, `attachment_too_large` (ATTACHMENT_MAX_SIZE), `email_too_large` (EMAIL_MAX_SIZE)"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`"),
        (status = 422, body = ErrorBody, description = "`validation_error` (with `field`), `invalid_body`, `invalid_text` (NUL in text), `unstorable_message`, `idempotency_key_reused`, `unknown_template` (none by that id or name, or another key's), `unknown_campaign` (none by that id, or the key is not an admin), `missing_variable`, `unknown_variable`, `template_render_error`, `template_too_costly`, `template_output_too_large`, `invalid_attachment`, `invalid_send_at`")))]
pub async fn send(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Send)?;
    let body = body.map_err(extract::body_rejection)?;
    let idempotency_key = IdempotencyKey::from_headers(&headers)?;
    // Parsed by hand (not by an extractor) so that the fingerprint covers
    // exactly what was accepted.
    let request: SendEmailRequest = extract::send_body(&headers, &body)?;
    let rendered = request
        .resolve(&state.pool, principal.owner_filter(), None)
        .await?;
    let accepted = request.validate(principal.key_id, limits(&state), rendered)?;
    // The request's span names the message, so its log lines (and the
    // worker's, which carry the same ids) are found by one grep.
    let span = tracing::Span::current();
    span.record("message_id", tracing::field::display(accepted.new.id));
    span.record("task_id", accepted.new.task_id.as_str());

    // The common case (no idempotency key, attachments, schedule or
    // campaign) goes through group commit, which also checks the
    // suppression list; the worker checks it again at send time, so an
    // address suppressed meanwhile still holds.
    let plain = idempotency_key.is_none()
        && accepted.attachments.is_empty()
        && accepted.send_at.is_none()
        && accepted.campaign_id.is_none();
    if plain {
        let (message_id, task_id) = (accepted.new.id, accepted.new.task_id.clone());
        let status = state.ingest.submit(accepted.new).await?;
        let outcome = SendAccepted {
            message_id,
            task_id,
            status: status.as_str().into(),
        };
        metrics::counter!("messages_accepted_total", "kind" => "single").increment(1);
        let body = serde_json::json!({ "data": outcome });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }

    let mut tx = state.pool.begin().await?;
    let fingerprint = idem::fingerprint(&serde_json::to_value(&request).unwrap_or(Value::Null));
    if let Some(key) = &idempotency_key {
        if !idempotency::try_lock(&mut tx, principal.key_id, key.as_str()).await? {
            return Err(idem::in_flight());
        }
        if let Some(stored) = idempotency::find(&mut tx, principal.key_id, key.as_str()).await? {
            // Release the key's lock now, not when the dropped transaction
            // is rolled back in the background: a retry right after must not
            // find it still held.
            tx.rollback().await?;
            if stored.request_hash != fingerprint {
                return Err(idem::reused());
            }
            let status =
                StatusCode::from_u16(stored.response_status as u16).unwrap_or(StatusCode::ACCEPTED);
            let mut response = (status, Json(stored.response_body.0)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
    }

    let outcome = record(&mut tx, &state, &accepted).await?;
    let body = serde_json::json!({ "data": outcome });
    if let Some(key) = &idempotency_key {
        idempotency::save(
            &mut tx,
            principal.key_id,
            key.as_str(),
            &fingerprint,
            202,
            &body,
        )
        .await?;
    }
    tx.commit().await?;
    state.outbox.wake();
    metrics::counter!("messages_accepted_total", "kind" => "single").increment(1);
    tracing::debug!(message_id = %outcome.message_id, task_id = %outcome.task_id, status = %outcome.status, "email accepted");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn limits(state: &AppState) -> Limits {
    Limits {
        email_max_size: state.settings.email_max_size,
        attachment_max_size: state.settings.attachment_max_size,
    }
}

/// Records an accepted email in `tx`: the record, its attachments, and
/// (when it is to be sent now) its Celery task in the outbox.
#[tracing::instrument(level = "debug", skip_all,
    fields(message_id = %accepted.new.id, task_id = %accepted.new.task_id))]
async fn record(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    accepted: &AcceptedEmail,
) -> Result<SendAccepted, ApiError> {
    let new = &accepted.new;
    let recipients: Vec<String> = ingest::recipients(new).cloned().collect();
    let suppressed = suppressions::first_suppressed(&mut *tx, &recipients).await?;
    let acceptance = Acceptance {
        status: match (&suppressed, accepted.send_at) {
            (Some(_), _) => MessageStatus::Suppressed,
            (None, Some(_)) => MessageStatus::Scheduled,
            (None, None) => MessageStatus::Queued,
        },
        send_at: accepted.send_at,
        campaign_id: accepted.campaign_id,
        error: suppressed.as_deref().map(ingest::suppressed_error),
    };
    messages::insert_accepted(&mut *tx, new, &acceptance).await?;
    attachments::insert_all(&mut *tx, new.id, &accepted.attachments).await?;
    if acceptance.status == MessageStatus::Queued {
        let queue = &state.settings.queues.tasks;
        outbox::enqueue(
            &mut *tx,
            queue,
            queue,
            &send_email_task(new.id, &new.task_id),
        )
        .await?;
    }
    tracing::debug!(status = acceptance.status.as_str(), "email recorded");
    Ok(SendAccepted {
        message_id: new.id,
        task_id: new.task_id.clone(),
        status: acceptance.status.as_str().into(),
    })
}

/// Most messages in one batch request.
pub const MAX_BATCH: usize = 500;

/// Several emails in one request. Entries without their own template or
/// subject/content use the batch's template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Shared template for entries that give no subject/content/template.
    pub template_id: Option<Uuid>,
    pub template: Option<String>,
    /// 1 to 500 messages, each a `SendEmailRequest` (as for
    /// `/messages/email/send`); an entry that is not one is refused by
    /// index in the answer, like an entry that fails validation.
    #[schema(value_type = Vec<Value>, min_items = 1, max_items = 500)]
    pub messages: Vec<Value>,
}

/// The outcome of one batch entry: accepted (with ids) or refused (with the error).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// Position of the entry in `messages`.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    pub accepted: usize,
    pub rejected: usize,
    /// One result per entry, in order.
    pub results: Vec<BatchItem>,
}

/// Sends up to 500 emails in one request. Each valid entry is recorded and
/// enqueued exactly like a single send, all in one transaction; invalid
/// entries are reported by index (with the error a single send would give)
/// and do not stop the valid ones. The answer is 202 even when every entry
/// is refused: read `rejected`. Idempotency-Key is not supported here.
#[utoipa::path(post, path = "/api/v1/messages/email/batch", tag = "messages",
    request_body = BatchRequest, security(("bearer" = [])),
    responses((status = 202, body = Data<BatchAccepted>), SendAccess, BadJson,
        (status = 422, body = ErrorBody, description = "`batch_too_large` (over 500), `validation_error` (empty batch), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn send_batch(
    State(state): State<AppState>,
    SendActor(Actor { principal, .. }): SendActor,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<(StatusCode, Json<Data<BatchAccepted>>), ApiError> {
    if batch.messages.is_empty() {
        return Err(ApiError::validation(
            "messages",
            "messages must not be empty",
        ));
    }
    if batch.messages.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "batch_too_large",
            "messages",
            format!("at most {MAX_BATCH} messages per batch"),
        ));
    }
    let shared = TemplateRef::from_fields(batch.template_id, batch.template.as_deref())?;
    let mut checked = Vec::with_capacity(batch.messages.len());
    for (index, raw) in batch.messages.into_iter().enumerate() {
        let outcome = async {
            let request: SendEmailRequest =
                serde_json::from_value(raw).map_err(extract::invalid_body)?;
            let rendered = request
                .resolve(&state.pool, principal.owner_filter(), shared)
                .await?;
            request.validate(principal.key_id, limits(&state), rendered)
        }
        .await;
        checked.push((index, outcome));
    }
    let mut tx = state.pool.begin().await?;
    let mut results = Vec::with_capacity(checked.len());
    for (index, outcome) in checked {
        results.push(match outcome {
            Ok(accepted) => {
                let done = record(&mut tx, &state, &accepted).await?;
                BatchItem {
                    index,
                    message_id: Some(done.message_id),
                    task_id: Some(done.task_id),
                    status: Some(done.status),
                    error: None,
                }
            }
            Err(ApiError::Internal(e)) => return Err(ApiError::Internal(e)),
            Err(ApiError::Unavailable(e)) => return Err(ApiError::Unavailable(e)),
            Err(e) => BatchItem {
                index,
                message_id: None,
                task_id: None,
                status: None,
                error: Some(e.detail()),
            },
        });
    }
    tx.commit().await?;
    state.outbox.wake();
    let accepted = results.iter().filter(|r| r.error.is_none()).count();
    metrics::counter!("messages_accepted_total", "kind" => "batch").increment(accepted as u64);
    tracing::info!(
        accepted,
        rejected = results.len() - accepted,
        "batch accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Data::new(BatchAccepted {
            accepted,
            rejected: results.len() - accepted,
            results,
        }),
    ))
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
    pub send_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub campaign_id: Option<Uuid>,
    /// The `metadata` the send carried (empty when none).
    #[schema(value_type = Object)]
    pub metadata: platform::db::messages::Metadata,
    /// The scope of the email's one-click unsubscribe link (`list` for a
    /// campaign's lists, `global` for all mail); none without a link.
    pub unsubscribe_scope: Option<platform::mail::unsubscribe::Scope>,
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
            send_at: m.send_at,
            cancelled_at: m.cancelled_at,
            campaign_id: m.campaign_id,
            metadata: m.metadata.map(|j| j.0).unwrap_or_default(),
            unsubscribe_scope: m
                .unsubscribe_scope
                .as_deref()
                .and_then(platform::mail::unsubscribe::Scope::parse),
        }
    }
}

/// A message's delivery state. Keys without the admin scope see only the
/// messages they sent.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<MessageView>), ReadAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<MessageView>>, ApiError> {
    principal.require_or(Scope::Read, &[Scope::Admin])?;
    let message = find(&state, id, principal.owner_filter()).await?;
    Ok(Data::new(message.into()))
}

/// The message `id`, if `owner` (see [`Principal::owner_filter`]) may see it.
pub(crate) async fn find(
    state: &AppState,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<messages::MessageRecord, ApiError> {
    messages::get(&state.pool, id)
        .await?
        .filter(|m| owner.is_none() || m.api_key_id == owner)
        .ok_or(ApiError::NotFound("message"))
}

/// Cancels a message that is still `scheduled` or `queued`. A message a
/// worker has already claimed (`sending`) or that is final cannot be
/// cancelled: 409 `not_cancellable`. The cancel and the worker's claim are
/// both conditional updates, so exactly one of them wins.
#[utoipa::path(post, path = "/api/v1/messages/{id}/cancel", tag = "messages", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<MessageView>), SendAccess, BadPath, NotFound,
        (status = 409, body = ErrorBody, description = "`not_cancellable`: already sending or final")))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<MessageView>>, ApiError> {
    principal.require(Scope::Send)?;
    let owner = principal.owner_filter();
    if let Some(cancelled) = messages::cancel(&state.pool, id, owner).await? {
        tracing::info!(message_id = %id, actor = %principal.key_id, "message cancelled");
        return Ok(Data::new(cancelled.into()));
    }
    let current = find(&state, id, owner).await?;
    Err(ApiError::conflict(
        "not_cancellable",
        format!(
            "the message is {}; only scheduled or queued messages can be cancelled",
            current.status
        ),
    ))
}

/// Filters of `GET /api/v1/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListMessagesQuery {
    /// scheduled, queued, sending, sent, failed, suppressed or cancelled
    #[param(value_type = Option<platform::db::messages::MessageStatus>, inline)]
    pub status: Option<String>,
    /// An address among to, cc or bcc (case-insensitive).
    pub recipient: Option<String>,
    /// Created at or after (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    pub campaign_id: Option<Uuid>,
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn status_filter(raw: Option<&str>) -> Result<Option<MessageStatus>, ApiError> {
    raw.map(|s| {
        MessageStatus::parse(s).ok_or_else(|| {
            ApiError::validation(
                "status",
                "status must be scheduled, queued, sending, sent, failed, suppressed or cancelled",
            )
        })
    })
    .transpose()
}

/// Lists messages newest first (by creation time, then id), with cursor
/// pagination. Keys without the admin scope see only their own messages.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", security(("bearer" = [])),
    params(ListMessagesQuery),
    responses((status = 200, body = Data<Page<MessageView>>), ReadAccess, BadQuery,
        (status = 422, body = ErrorBody, description = "`validation_error` (status), `invalid_limit`, `invalid_cursor`")))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<ListMessagesQuery>,
) -> Result<Json<Data<Page<MessageView>>>, ApiError> {
    principal.require_or(Scope::Read, &[Scope::Admin])?;
    let limit = pagination::limit(query.limit)?;
    let filter = MessageFilter {
        api_key_id: principal.owner_filter(),
        status: status_filter(query.status.as_deref())?,
        recipient: query.recipient.map(|r| r.trim().to_string()),
        created_from: query.created_after,
        created_until: query.created_before,
        campaign_id: query.campaign_id,
        before: pagination::time_id_after(query.cursor.as_deref())?,
    };
    let rows = messages::list(&state.pool, &filter, limit + 1).await?;
    Ok(Data::new(Page::from_rows(rows, limit, |m| {
        pagination::encode_time_id(m.created_at, m.id)
    })))
}

/// Window of `GET /api/v1/messages/stats`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Default: 30 days before `created_before`.
    pub created_after: Option<DateTime<Utc>>,
    /// Default: now. The window is at most 366 days.
    pub created_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DayCount {
    /// A date in the platform's time zone (`TZ`).
    #[schema(value_type = String, format = Date)]
    pub day: chrono::NaiveDate,
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountStatusCount {
    /// Absent for messages not (yet) given to an account.
    pub account_id: Option<Uuid>,
    pub account_email: Option<String>,
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageStats {
    pub created_after: DateTime<Utc>,
    pub created_before: DateTime<Utc>,
    pub by_day: Vec<DayCount>,
    pub by_account: Vec<AccountStatusCount>,
}

/// Message counts per status per day, and per status per account, for
/// messages created in the window. Keys without admin count their own.
#[utoipa::path(get, path = "/api/v1/messages/stats", tag = "messages", security(("bearer" = [])),
    params(StatsQuery),
    responses((status = 200, body = Data<MessageStats>), ReadAccess, BadQuery,
        (status = 422, body = ErrorBody, description = "`validation_error`: window reversed or over 366 days")))]
pub async fn stats(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<StatsQuery>,
) -> Result<Json<Data<MessageStats>>, ApiError> {
    principal.require_or(Scope::Read, &[Scope::Admin])?;
    let until = query.created_before.unwrap_or_else(Utc::now);
    let from = query
        .created_after
        .unwrap_or(until - chrono::Duration::days(30));
    if from >= until || until - from > chrono::Duration::days(366) {
        return Err(ApiError::validation(
            "created_after",
            "the window must be non-empty and at most 366 days",
        ));
    }
    let owner = principal.owner_filter();
    let (daily, accounts) =
        messages::stats(&state.pool, owner, from, until, state.settings.tz.name()).await?;
    Ok(Data::new(MessageStats {
        created_after: from,
        created_before: until,
        by_day: daily
            .into_iter()
            .map(|d| DayCount {
                day: d.day,
                status: d.status,
                count: d.count,
            })
            .collect(),
        by_account: accounts
            .into_iter()
            .map(|a| AccountStatusCount {
                account_id: a.account_id,
                account_email: a.account_email,
                status: a.status,
                count: a.count,
            })
            .collect(),
    }))
}
