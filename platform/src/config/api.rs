//! The API's listener (`API_HOST`, `API_PORT`) and its rate limits per API
//! key (`RATE_LIMIT_ENABLED`, `RATE_LIMIT_PER_MINUTE`,
//! `RATE_LIMIT_WINDOW_SECONDS`, `RATE_LIMIT_REDIS_PREFIX`), the proxies
//! it believes (`TRUSTED_PROXIES`) and its throttle of failed
//! authentications (`AUTH_*`). Its token signing key is in `security`.

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

/// `TRUSTED_PROXIES`: the reverse proxies (CIDRs, `,`-separated) whose
/// `X-Forwarded-For` and `X-Real-IP` are believed when finding a client's
/// address. Default: loopback only (a proxy on the same host); `none`
/// believes no proxy, so the TCP peer is always the client.
pub(super) fn trusted_proxies(vars: &Vars<'_>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(raw) = vars.get("TRUSTED_PROXIES") else {
        return Ok(vec![
            ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1])),
            ipnet::IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ]);
    };
    if raw.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    var: "TRUSTED_PROXIES",
                    reason: format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                })
        })
        .collect()
}

/// Failed authentications at `/auth/token` allowed per window before further
/// attempts are refused with 429: per client address
/// (`AUTH_MAX_FAILURES_PER_ADDRESS`, default 20) and per API key
/// (`AUTH_MAX_FAILURES_PER_KEY`, default 10), in windows of
/// `AUTH_FAILURE_WINDOW_SECONDS` (default 300).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthThrottle {
    pub per_address: u32,
    pub per_key: u32,
    pub window: Duration,
}

pub(super) fn auth_throttle(vars: &Vars<'_>) -> Result<AuthThrottle, ConfigError> {
    Ok(AuthThrottle {
        per_address: vars.parse_positive_or("AUTH_MAX_FAILURES_PER_ADDRESS", 20)?,
        per_key: vars.parse_positive_or("AUTH_MAX_FAILURES_PER_KEY", 10)?,
        window: vars.seconds_or("AUTH_FAILURE_WINDOW_SECONDS", 300)?,
    })
}
