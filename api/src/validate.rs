//! Checks on request fields, each failing with a 422 that names the field.

use platform::mail::EmailAddress;
use platform::schedule::ScheduleError;

use crate::error::ApiError;

/// Text bound for a single header line: no control characters (CR/LF would
/// inject headers), trimmed, and within `max` characters.
pub fn header_text(
    field: &str,
    value: &str,
    required: bool,
    max: usize,
) -> Result<String, ApiError> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(ApiError::validation(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            format!("{field} must not contain control characters such as CR or LF"),
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(value.to_string())
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
    EmailAddress::parse(value).map_err(|e| ApiError::validation(field, e.to_string()))
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
