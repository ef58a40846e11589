//! Request extractors whose rejections use the API's error format, and
//! the one mapping of a request body's failures (unreadable, not JSON,
//! malformed, the wrong shape, holding a NUL) to [`ApiError`]s.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// `Json<T>` with 400/413/415/422 rejections in the API's error format.
/// Text containing NUL (`\u0000`) is refused for every route at once with
/// 422 `invalid_text`: PostgreSQL cannot store it in `text` or `jsonb`, and
/// letting it through fails whatever statement carries it (a group commit
/// carries other clients' sends too).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(not_json());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        refuse_nul(&bytes)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The body of `POST /messages/email/send`, which its handler reads as
/// bytes (to check the Idempotency-Key first) and parses here with the
/// errors of [`JsonBody`]. Its rules are its own, as they always were: the
/// content type must be `application/json` itself, and the JSON goes
/// through a [`Value`] (a key given twice keeps its last value).
pub fn send_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if media_type(headers).as_deref() != Some("application/json") {
        return Err(not_json());
    }
    refuse_nul(body)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_json(format!("request body is not valid JSON: {e}")))?;
    serde_json::from_value(value).map_err(invalid_body)
}

/// A body that could not be read: 413 past the size limit, else 400
/// `invalid_body`.
pub fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
    } else {
        ApiError::BadRequest {
            code: "invalid_body",
            message: rejection.body_text(),
        }
    }
}

/// 422 `invalid_body`: JSON, but not of the shape the route takes (also
/// for one entry of a batch or an import, which reports it by index).
pub fn invalid_body(message: impl ToString) -> ApiError {
    ApiError::Validation {
        code: "invalid_body",
        field: None,
        message: message.to_string(),
    }
}

/// 400 `invalid_json`: not JSON at all.
fn invalid_json(message: String) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_json",
        message,
    }
}

/// 415: the body is not declared as JSON.
fn not_json() -> ApiError {
    ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
}

/// What `Json::from_bytes` refuses: a shape error (422) or a syntax error.
fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::UNPROCESSABLE_ENTITY {
        invalid_body(rejection.body_text())
    } else {
        invalid_json(rejection.body_text())
    }
}

/// 422 `invalid_text` for a JSON body holding a NUL character.
pub fn refuse_nul(json: &[u8]) -> Result<(), ApiError> {
    if contains_nul_escape(json) {
        return Err(ApiError::Validation {
            code: "invalid_text",
            field: None,
            message: "text must not contain the NUL character (\\u0000)".into(),
        });
    }
    Ok(())
}

/// The media type of the body, `type/subtype` lower-cased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// `application/json` or `application/<something>+json`, as axum's `Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|essence| {
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// Whether a JSON document holds the escape `\u0000` (a raw NUL byte is
/// not valid JSON at all). `\\u0000` is an escaped backslash followed by
/// text, not a NUL: only an odd run of backslashes starts an escape.
pub fn contains_nul_escape(json: &[u8]) -> bool {
    memchr::memmem::find_iter(json, b"u0000").any(|at| {
        let backslashes = json[..at].iter().rev().take_while(|b| **b == b'\\').count();
        backslashes % 2 == 1
    })
}

/// `Path<T>` whose rejection is a 404-free 400 with the API's error format.
pub struct PathParam<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_path",
        message: rejection.body_text(),
    }
}

/// `Query<T>` whose rejection is a 400 `invalid_query` in the API's format.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A NUL in a filter would reach PostgreSQL, which refuses it.
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(ApiError::BadRequest {
                code: "invalid_query",
                message: "query parameters must not contain the NUL character (%00)".into(),
            });
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(ApiError::BadRequest {
                code: "invalid_query",
                message: rejection.body_text(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::contains_nul_escape;

    #[test]
    fn finds_nul_escapes_and_only_those() {
        assert!(contains_nul_escape(br#"{"content": "a\u0000"}"#));
        assert!(contains_nul_escape(br#"{"a\u0000": 1}"#));
        assert!(contains_nul_escape(br#"{"c": "\\\u0000"}"#));
        assert!(!contains_nul_escape(br#"{"c": "\\u0000"}"#));
        assert!(!contains_nul_escape(br#"{"c": "u0000 \u0001"}"#));
        assert!(!contains_nul_escape(b""));
    }
}
