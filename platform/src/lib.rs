//! Shared library of the notification platform: everything the api, worker
//! and scheduler binaries have in common.

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
pub mod tasks;
pub mod telemetry;
pub mod templating;

pub use config::Settings;

/// Today's date in the configured time zone: daily quotas turn over at
/// local midnight.
pub fn today(settings: &Settings) -> chrono::NaiveDate {
    chrono::Utc::now().with_timezone(&settings.tz).date_naive()
}

/// The name a process goes by on the broker (Celery's `name@host` form).
/// `CELERY_WORKER_NAME` overrides it, e.g. to run two workers on one host.
pub fn node_name(role: &str) -> String {
    if let Ok(name) = std::env::var("CELERY_WORKER_NAME") {
        if !name.trim().is_empty() {
            return name;
        }
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{role}@{host}")
}
