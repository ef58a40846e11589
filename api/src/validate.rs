//! Checks on request fields, each failing with a 422 that names the field.

use platform::mail::{rules, EmailAddress};
use platform::schedule::ScheduleError;

use crate::error::ApiError;

/// Text bound for a single header line: no control characters (CR/LF would
/// inject headers), trimmed, and within `max` characters (the rule is
/// `platform::mail::rules::header_text`).
pub fn header_text(
    field: &str,
    value: &str,
    required: bool,
    max: usize,
) -> Result<String, ApiError> {
    Ok(rules::header_text(field, value, required, max)?)
}

/// The name of a list, campaign or periodic task: trimmed, 1 to 200 characters.
pub fn name(value: &str) -> Result<String, ApiError> {
    let name = value.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation(
            "name",
            "name must be 1 to 200 characters",
        ));
    }
    Ok(name.to_string())
}

/// A schedule that does not parse: 422 `invalid_cron` (field `cron`) or
/// `invalid_time_zone` (field `time_zone`).
pub fn schedule_error(e: ScheduleError) -> ApiError {
    match e {
        ScheduleError::Cron(..) => ApiError::invalid("invalid_cron", "cron", e.to_string()),
        ScheduleError::TimeZone(_) => {
            ApiError::invalid("invalid_time_zone", "time_zone", e.to_string())
        }
    }
}

pub fn email(field: &str, value: &str) -> Result<EmailAddress, ApiError> {
    Ok(rules::address(field, value)?)
}

pub fn in_range(field: &str, value: i64, min: i64, max: i64) -> Result<i32, ApiError> {
    if value < min || value > max {
        return Err(ApiError::validation(
            field,
            format!("{field} must be between {min} and {max}"),
        ));
    }
    Ok(value as i32)
}
