//! The scheduler's timing and maintenance: releasing delayed sends
//! (`SCHEDULER_POLL_MS`, `SCHEDULER_RELEASE_BATCH`), the leader election
//! (`SCHEDULER_LEADER_RETRY_MS`), campaign fan-out (`CAMPAIGN_BATCH_SIZE`),
//! retention (`MESSAGE_RETENTION_DAYS`, `IDEMPOTENCY_RETENTION_HOURS`,
//! `MAINTENANCE_INTERVAL_SECONDS`, `MAINTENANCE_BATCH`) and the reconciler
//! (`RECONCILE_AFTER_SECONDS`, `RECONCILE_INTERVAL_SECONDS`,
//! `RECONCILE_BATCH`).

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;

/// The scheduler's timing and maintenance settings.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often due delayed sends are looked for (`SCHEDULER_POLL_MS`).
    pub poll: Duration,
    /// How often a follower retries the leader lock (`SCHEDULER_LEADER_RETRY_MS`).
    pub leader_retry: Duration,
    /// Delayed sends released per transaction (`SCHEDULER_RELEASE_BATCH`).
    pub release_batch: i64,
    /// Members enqueued per campaign fan-out transaction (`CAMPAIGN_BATCH_SIZE`).
    pub campaign_batch: i64,
    /// Finished message records older than this are deleted (`MESSAGE_RETENTION_DAYS`).
    pub message_retention_days: u32,
    /// Idempotency keys older than this are deleted (`IDEMPOTENCY_RETENTION_HOURS`).
    pub idempotency_retention_hours: u32,
    /// How often the leader runs maintenance (`MAINTENANCE_INTERVAL_SECONDS`).
    pub maintenance_interval: Duration,
    /// Rows deleted per maintenance statement (`MAINTENANCE_BATCH`).
    pub maintenance_batch: i64,
    /// A `queued` record whose broker message has not come back for this
    /// long past its due time is published again (`RECONCILE_AFTER_SECONDS`).
    pub reconcile_after: Duration,
    /// How often the leader looks for such records (`RECONCILE_INTERVAL_SECONDS`).
    pub reconcile_interval: Duration,
    /// Records re-published per reconciler statement (`RECONCILE_BATCH`).
    pub reconcile_batch: i64,
}

pub(super) fn settings(vars: &Vars<'_>) -> Result<SchedulerSettings, ConfigError> {
    Ok(SchedulerSettings {
        poll: Duration::from_millis(vars.parse_positive_or("SCHEDULER_POLL_MS", 200)?),
        leader_retry: Duration::from_millis(
            vars.parse_positive_or("SCHEDULER_LEADER_RETRY_MS", 1000)?,
        ),
        release_batch: vars.parse_positive_or("SCHEDULER_RELEASE_BATCH", 500)?,
        campaign_batch: vars.parse_positive_or("CAMPAIGN_BATCH_SIZE", 500)?,
        message_retention_days: vars.parse_positive_or("MESSAGE_RETENTION_DAYS", 30)?,
        idempotency_retention_hours: vars.parse_positive_or("IDEMPOTENCY_RETENTION_HOURS", 24)?,
        maintenance_interval: vars.seconds_or("MAINTENANCE_INTERVAL_SECONDS", 300)?,
        maintenance_batch: vars.parse_positive_or("MAINTENANCE_BATCH", 1000)?,
        reconcile_after: vars.seconds_or("RECONCILE_AFTER_SECONDS", 900)?,
        reconcile_interval: vars.seconds_or("RECONCILE_INTERVAL_SECONDS", 30)?,
        reconcile_batch: vars.parse_positive_or("RECONCILE_BATCH", 500)?,
    })
}
