//! Sending mail: SMTP timeout and sizes (`EMAIL_TIMEOUT`, `EMAIL_MAX_SIZE`,
//! `ATTACHMENT_MAX_SIZE`), a send task's time limits
//! (`CELERY_TASK_SOFT_TIME_LIMIT`, `CELERY_TASK_TIME_LIMIT`), retries
//! (`SEND_MAX_RETRIES`, `SEND_RETRY_BACKOFF`, `SEND_RETRY_BACKOFF_MAX`), the
//! circuit breaker per SMTP account (`CIRCUIT_FAILURE_THRESHOLD`,
//! `CIRCUIT_COOLDOWN_SECONDS`) and the wait for quota (`QUOTA_WAIT_SECONDS`).

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;
use crate::db::email_accounts::Breaker;

/// `EMAIL_TIMEOUT`: how long opening an SMTP connection may take (TCP,
/// greeting, EHLO, STARTTLS, AUTH), and how long any read or write on it
/// may wait for progress.
pub(super) fn email_timeout(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    vars.seconds_or("EMAIL_TIMEOUT", 30)
}

/// `EMAIL_MAX_SIZE`: the largest email (HTML and text), bytes.
pub(super) fn email_max_size(vars: &Vars<'_>) -> Result<usize, ConfigError> {
    vars.parse_positive_or("EMAIL_MAX_SIZE", 20 * 1024 * 1024)
}

/// `ATTACHMENT_MAX_SIZE`: the largest attachment, bytes.
pub(super) fn attachment_max_size(vars: &Vars<'_>) -> Result<usize, ConfigError> {
    vars.parse_positive_or("ATTACHMENT_MAX_SIZE", 10 * 1024 * 1024)
}

/// A send's (hard, soft) time limits: `CELERY_TASK_TIME_LIMIT` and
/// `CELERY_TASK_SOFT_TIME_LIMIT`, the soft one at most the hard one.
pub(super) fn time_limits(vars: &Vars<'_>) -> Result<(Duration, Duration), ConfigError> {
    let soft = vars.parse_or("CELERY_TASK_SOFT_TIME_LIMIT", 270u64)?;
    let hard = vars.parse_or("CELERY_TASK_TIME_LIMIT", 300u64)?;
    if soft > hard || hard == 0 {
        return Err(ConfigError::Invalid {
            var: "CELERY_TASK_SOFT_TIME_LIMIT",
            reason: format!("must be positive and at most CELERY_TASK_TIME_LIMIT ({hard})"),
        });
    }
    Ok((Duration::from_secs(hard), Duration::from_secs(soft)))
}

/// `SEND_MAX_RETRIES`: retries after a temporary SMTP failure.
pub(super) fn max_retries(vars: &Vars<'_>) -> Result<u32, ConfigError> {
    vars.parse_or("SEND_MAX_RETRIES", 3)
}

/// `SEND_RETRY_BACKOFF`: the first retry's delay, doubled at each retry.
pub(super) fn retry_backoff(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    vars.seconds_or("SEND_RETRY_BACKOFF", 10)
}

/// `SEND_RETRY_BACKOFF_MAX`: the longest delay between retries.
pub(super) fn retry_backoff_max(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    vars.seconds_or("SEND_RETRY_BACKOFF_MAX", 1800)
}

/// `QUOTA_WAIT_SECONDS`: how long a message waits when no account has
/// quota left.
pub(super) fn quota_wait(vars: &Vars<'_>) -> Result<Duration, ConfigError> {
    vars.seconds_or("QUOTA_WAIT_SECONDS", 60)
}

/// `CIRCUIT_FAILURE_THRESHOLD` and `CIRCUIT_COOLDOWN_SECONDS`.
pub(super) fn breaker(vars: &Vars<'_>) -> Result<Breaker, ConfigError> {
    Ok(Breaker {
        threshold: vars.parse_positive_or("CIRCUIT_FAILURE_THRESHOLD", 3)?,
        cooldown: vars.seconds_or("CIRCUIT_COOLDOWN_SECONDS", 60)?,
    })
}
