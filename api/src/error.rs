//! The API's one error type, mapped once to HTTP responses.
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}`, with
//! a machine-readable `code`. Internal details are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be parsed (malformed JSON, bad header).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: missing, expired, tampered or revoked credentials.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: authenticated, but the key lacks the scope.
    #[error("this API key lacks the {0:?} scope")]
    Forbidden(&'static str),
    /// 403: authenticated, but this resource's rules refuse the change
    /// (e.g. `template_used_by_campaign`).
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    /// 404
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 404 with a specific code: a route this platform does not offer as
    /// configured (`provider_not_configured`).
    #[error("{message}")]
    NotOffered { code: &'static str, message: String },
    /// 405: the path exists, but not with this method.
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// 409: conflicts with the current state (duplicate, request in flight).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 413 with a specific code (`attachment_too_large`, `email_too_large`).
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// 429: the API key's rate limit is spent until the window turns over.
    #[error("rate limit of {limit} requests per window exceeded; retry in {retry_after} s")]
    RateLimited { limit: u64, retry_after: u64 },
    /// 429: too many failed authentications from this address or for this
    /// key; even right credentials are refused until `retry_after` passes.
    #[error("too many failed authentications; retry in {retry_after} s")]
    TooManyAttempts { retry_after: u64 },
    /// 415
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid; `field` names the culprit.
    #[error("{message}")]
    Validation {
        code: &'static str,
        field: Option<String>,
        message: String,
    },
    /// 503: a dependency the request needs is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; details are only logged.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Error response body.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "validation_error", "message": "to[0]: \"nope\" is not a valid email address", "field": "to[0]"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `validation_error`, `invalid_token`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A broken email rule: 422 naming the field, or 413 for an email too large.
impl From<platform::mail::rules::Violation> for ApiError {
    fn from(v: platform::mail::rules::Violation) -> Self {
        use platform::mail::rules::Violation;
        match v {
            Violation::Invalid { field, message } => ApiError::validation(field, message),
            Violation::TooLarge(message) => ApiError::PayloadTooLarge(message),
        }
    }
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            code: "validation_error",
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::Validation {
            code,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// The body of this error, for reports that list several (batch, import).
    pub fn detail(&self) -> ErrorDetail {
        let (_, code) = self.status_and_code();
        ErrorDetail {
            code: code.to_string(),
            message: self.to_string(),
            field: match self {
                ApiError::Validation { field, .. } => field.clone(),
                _ => None,
            },
        }
    }

    pub fn forbidden_because(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Denied {
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::Denied { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotOffered { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, code),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::TooManyAttempts { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Validation { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "request failed"),
            ApiError::Unavailable(m) => tracing::warn!(reason = %m, "dependency unavailable"),
            _ => {}
        }
        let field = match &self {
            ApiError::Validation { field, .. } => field.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body may be left unread: the connection cannot be reused,
            // and saying so keeps clients from sending on a closing socket.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::RateLimited { retry_after, .. }
        | ApiError::TooManyAttempts { retry_after } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A provider webhook refused: 401 for what fails authentication, 403 for
/// a topic not allowed, 400 for a body not in the provider's format, 503
/// when SNS could not be reached (the provider retries).
impl From<platform::bounces::providers::InboundError> for ApiError {
    fn from(e: platform::bounces::providers::InboundError) -> Self {
        use platform::bounces::providers::InboundError as E;
        let code = e.code();
        match e {
            E::Unauthenticated(_) | E::Stale { .. } | E::UntrustedUrl(_) => {
                ApiError::unauthorized(code, e.to_string())
            }
            E::UnknownTopic(_) => ApiError::forbidden_because(code, e.to_string()),
            E::Malformed(message) => ApiError::BadRequest { code, message },
            E::Unreachable(message) => ApiError::Unavailable(message),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(format!("database unavailable: {e}"))
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Maps a unique-constraint violation to a 409, leaving other errors alone.
pub fn on_unique(
    constraint: &'static str,
    conflict: impl FnOnce() -> ApiError,
) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some(constraint) => conflict(),
        _ => ApiError::from(e),
    }
}
