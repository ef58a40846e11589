//! The API's listener (`API_HOST`, `API_PORT`) and its rate limits per API
//! key (`RATE_LIMIT_ENABLED`, `RATE_LIMIT_PER_MINUTE`,
//! `RATE_LIMIT_WINDOW_SECONDS`, `RATE_LIMIT_REDIS_PREFIX`). Its token
//! signing key is in `security`.

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;

/// `API_HOST`: the address to listen on.
pub(super) fn host(vars: &Vars<'_>) -> String {
    vars.get("API_HOST").unwrap_or_else(|| "0.0.0.0".into())
}

/// `API_PORT` (0 picks a free one).
pub(super) fn port(vars: &Vars<'_>) -> Result<u16, ConfigError> {
    vars.parse_or("API_PORT", 8000)
}

/// `RATE_LIMIT_ENABLED`.
pub(super) fn rate_limit_enabled(vars: &Vars<'_>) -> Result<bool, ConfigError> {
    vars.parse_bool_or("RATE_LIMIT_ENABLED", true)
}

/// `RATE_LIMIT_PER_MINUTE`: requests per key and window, unless the key
/// carries its own limit.
pub(super) fn rate_limit_per_minute(vars: &Vars<'_>) -> Result<u32, ConfigError> {
    vars.parse_positive_or("RATE_LIMIT_PER_MINUTE", 600)
}

/// `RATE_LIMIT_WINDOW_SECONDS`: the length of a window.
pub(super) fn rate_limit_window(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    vars.seconds_or("RATE_LIMIT_WINDOW_SECONDS", 60)
}

/// `RATE_LIMIT_REDIS_PREFIX`: the prefix of the counters' Redis keys.
pub(super) fn rate_limit_prefix(vars: &Vars<'_>) -> String {
    vars.get("RATE_LIMIT_REDIS_PREFIX")
        .unwrap_or_else(|| "notify:ratelimit".into())
}
