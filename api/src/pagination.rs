//! Opaque cursors for keyset pagination, and the page envelope.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// Most items per page.
pub const MAX_LIMIT: i64 = 100;
pub const DEFAULT_LIMIT: i64 = 50;

/// A page of items; `next_cursor` is absent on the last page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The page of `rows`, fetched with `limit + 1`: an extra row only says
    /// that a next page exists, which starts after the last row kept
    /// (`cursor` makes its cursor from that row).
    pub fn from_rows<R: Into<T>>(
        mut rows: Vec<R>,
        limit: i64,
        cursor: impl Fn(&R) -> String,
    ) -> Self {
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(cursor)
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }
    }
}

pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            "invalid_limit",
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

fn invalid_cursor() -> ApiError {
    ApiError::invalid(
        "invalid_cursor",
        "cursor",
        "cursor is not one this API returned",
    )
}

pub fn encode(raw: &str) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid_cursor)
}

/// An id position.
pub fn encode_id(id: i64) -> String {
    encode(&id.to_string())
}

pub fn decode_id(cursor: &str) -> Result<i64, ApiError> {
    decode(cursor)?.parse().map_err(|_| invalid_cursor())
}

/// A (created_at, id) position.
pub fn encode_time_id(at: DateTime<Utc>, id: Uuid) -> String {
    encode(&format!("{}|{id}", at.timestamp_micros()))
}

/// The position an optional (created_at, id) cursor names.
pub fn time_id_after(cursor: Option<&str>) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    cursor.map(decode_time_id).transpose()
}

pub fn decode_time_id(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let raw = decode(cursor)?;
    let (micros, id) = raw.split_once('|').ok_or_else(invalid_cursor)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .ok_or_else(invalid_cursor)?;
    let id = id.parse().map_err(|_| invalid_cursor())?;
    Ok((at, id))
}
