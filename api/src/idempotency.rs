//! The `Idempotency-Key` request header (IETF httpapi draft): a retried
//! request with the same key and body replays the first response; the same
//! key with another body is refused (422); a retry while the first request
//! is still being processed is refused (409).

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
const MAX_LEN: usize = 255;

#[derive(Debug, Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// `None` when the header is absent.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let invalid = || ApiError::BadRequest {
            code: "invalid_idempotency_key",
            message: format!("Idempotency-Key must be 1 to {MAX_LEN} visible ASCII characters"),
        };
        let raw = value.to_str().map_err(|_| invalid())?;
        // The draft sends the key as a structured-field string: "abc".
        let key = raw.trim().trim_matches('"');
        if key.is_empty() || key.len() > MAX_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        Ok(Some(IdempotencyKey(key.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Fingerprint of a request body, insensitive to key order and whitespace.
pub fn fingerprint(body: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

pub fn in_flight() -> ApiError {
    ApiError::Conflict {
        code: "idempotency_key_in_flight",
        message: "a request with this Idempotency-Key is still being processed; retry later".into(),
    }
}

pub fn reused() -> ApiError {
    ApiError::Validation {
        code: "idempotency_key_reused",
        field: None,
        message: "this Idempotency-Key was already used with a different request body".into(),
    }
}
