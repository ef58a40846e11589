//! Shared library of the notification platform: everything the api, worker
//! and scheduler binaries have in common.

pub mod bounces;
pub mod broker;
pub mod celery;
pub mod config;
pub mod crypto;
pub mod db;
pub mod healthcheck;
pub mod mail;
pub mod outbox;
pub mod schedule;
pub mod shutdown;
pub mod startup;
pub mod tasks;
pub mod telemetry;
pub mod templating;
pub mod webhooks;

pub use config::Settings;

/// Today's date in the configured time zone: daily quotas turn over at
/// local midnight. Tests may shift it by whole days
/// (`TEST_CLOCK_OFFSET_DAYS`, refused in production).
pub fn today(settings: &Settings) -> chrono::NaiveDate {
    let date = chrono::Utc::now().with_timezone(&settings.tz).date_naive();
    match settings.clock_offset_days {
        0 => date,
        days => date
            .checked_add_signed(chrono::Duration::days(days))
            .unwrap_or(date),
    }
}
