//! Request extractors whose rejections use the API's error format.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

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
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
            } else {
                ApiError::BadRequest {
                    code: "invalid_body",
                    message: rejection.body_text(),
                }
            }
        })?;
        refuse_nul(&bytes)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
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

/// `application/json` or `application/<something>+json`, as axum's `Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
        }
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation {
            code: "invalid_body",
            field: None,
            message: text,
        },
        _ => ApiError::BadRequest {
            code: "invalid_json",
            message: text,
        },
    }
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
