//! Redis: the API's rate-limit counters and the workers' throttles
//! (`REDIS_URL`), and Celery's result backend (`CELERY_RESULT_BACKEND`,
//! `CELERY_RESULT_EXPIRES`).

use std::time::Duration;

use super::vars::{check_url, Vars};
use super::ConfigError;

/// `REDIS_URL`.
pub(super) fn url(vars: &Vars<'_>) -> Result<String, ConfigError> {
    redis_url(vars, "REDIS_URL", "redis://127.0.0.1:6379/0")
}

/// `CELERY_RESULT_BACKEND`: where task results are stored as
/// `celery-task-meta-<id>`.
pub(super) fn result_backend_url(vars: &Vars<'_>) -> Result<String, ConfigError> {
    redis_url(vars, "CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
}

fn redis_url(vars: &Vars<'_>, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let url = vars.get(var).unwrap_or_else(|| default.into());
    check_url(var, &url, &["redis", "rediss"])?;
    Ok(url)
}

/// `CELERY_RESULT_EXPIRES`: how long a task result is kept.
pub(super) fn result_expires(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    vars.seconds_or("CELERY_RESULT_EXPIRES", 86_400)
}
