//! Bounces and complaints: how the scheduler's bounce processor reads the
//! accounts' mailboxes (`BOUNCE_POLL_INTERVAL_MS`, `BOUNCE_IMAP_TIMEOUT_SECONDS`,
//! `BOUNCE_FETCH_BATCH`) and what reports do (`BOUNCE_SOFT_LIMIT`,
//! `BOUNCE_SOFT_WINDOW_DAYS`, `BOUNCE_RATE_WINDOW_DAYS`, `BOUNCE_RATE_MIN_SENT`,
//! `BOUNCE_RATE_PAUSE_THRESHOLD`, `COMPLAINT_RATE_PAUSE_THRESHOLD`).

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;
use crate::db::bounces::{PausePolicy, SoftBouncePolicy};

#[derive(Debug, Clone)]
pub struct BounceSettings {
    /// How often each mailbox is read (`BOUNCE_POLL_INTERVAL_MS`, default
    /// one minute).
    pub poll_interval: Duration,
    /// Connecting, logging in, and each IMAP command
    /// (`BOUNCE_IMAP_TIMEOUT_SECONDS`, default 30).
    pub imap_timeout: Duration,
    /// Messages fetched per IMAP command (`BOUNCE_FETCH_BATCH`, default 50).
    pub fetch_batch: usize,
    /// Soft bounces of one address within the window that suppress it
    /// (`BOUNCE_SOFT_LIMIT`, default 3; `BOUNCE_SOFT_WINDOW_DAYS`, default 7).
    pub soft: SoftBouncePolicy,
    /// When an account is paused for its rates (`BOUNCE_RATE_WINDOW_DAYS`,
    /// default 7; `BOUNCE_RATE_MIN_SENT`, default 200;
    /// `BOUNCE_RATE_PAUSE_THRESHOLD`, default 0.05;
    /// `COMPLAINT_RATE_PAUSE_THRESHOLD`, default 0.003, Gmail's and
    /// Yahoo's published ceiling for bulk senders).
    pub pause: PausePolicy,
}

impl BounceSettings {
    /// A mailbox belongs to its reader this long; a dead reader's lapses.
    pub fn lease(&self) -> Duration {
        self.imap_timeout * 10 + Duration::from_secs(60)
    }
}

pub(super) fn settings(vars: &Vars<'_>) -> Result<BounceSettings, ConfigError> {
    let rate = |key: &'static str, default: f64| -> Result<f64, ConfigError> {
        let value: f64 = vars.parse_or(key, default)?;
        if !(value > 0.0 && value <= 1.0) {
            return Err(ConfigError::Invalid {
                var: key,
                reason: format!("{value} is not a fraction in (0, 1]"),
            });
        }
        Ok(value)
    };
    Ok(BounceSettings {
        poll_interval: Duration::from_millis(
            vars.parse_positive_or("BOUNCE_POLL_INTERVAL_MS", 60_000)?,
        ),
        imap_timeout: vars.seconds_or("BOUNCE_IMAP_TIMEOUT_SECONDS", 30)?,
        fetch_batch: vars.parse_positive_or("BOUNCE_FETCH_BATCH", 50)?,
        soft: SoftBouncePolicy {
            limit: vars.parse_positive_or("BOUNCE_SOFT_LIMIT", 3)?,
            window: chrono::Duration::days(vars.parse_positive_or("BOUNCE_SOFT_WINDOW_DAYS", 7)?),
        },
        pause: PausePolicy {
            window_days: vars.parse_positive_or("BOUNCE_RATE_WINDOW_DAYS", 7)?,
            min_sent: vars.parse_positive_or("BOUNCE_RATE_MIN_SENT", 200)?,
            max_bounce_rate: rate("BOUNCE_RATE_PAUSE_THRESHOLD", 0.05)?,
            max_complaint_rate: rate("COMPLAINT_RATE_PAUSE_THRESHOLD", 0.003)?,
        },
    })
}
