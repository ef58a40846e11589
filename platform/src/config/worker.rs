//! The worker process: sends in parallel (`CELERY_WORKER_CONCURRENCY`), its
//! liveness lease (`WORKER_LEASE_SECONDS`, `WORKER_LEASE_RENEW_SECONDS`),
//! its name on the broker (`CELERY_WORKER_NAME`, else from `HOSTNAME`),
//! Celery events (`CELERY_SEND_EVENTS`), Python task-name aliases
//! (`CELERY_TASK_ALIASES`), how long revokes are kept
//! (`CELERY_WORKER_REVOKE_EXPIRES`, `CELERY_WORKER_REVOKES_MAX`) and how
//! long it keeps the per-domain throttles it read
//! (`DOMAIN_THROTTLE_CACHE_SECONDS`) and where the callbacks it applies go
//! without a queue of their own (`CELERY_CANVAS_DEFAULT_QUEUE`).

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;
use crate::celery::TaskAliases;

/// Each worker's liveness lease (`worker_leases`), renewed while it runs and
/// recorded with its claims, so a message whose claimant is known to be
/// gone is sent again at once instead of after the hard time limit.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How long a lease lasts unless renewed (`WORKER_LEASE_SECONDS`).
    pub lease: Duration,
    /// How often a worker renews it (`WORKER_LEASE_RENEW_SECONDS`).
    pub renew: Duration,
}

/// What only the worker reads about itself.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Its name on the broker, in Celery's `name@host` form:
    /// `CELERY_WORKER_NAME` (e.g. to run two workers on one host), else
    /// `notify-worker@<hostname>`.
    pub node_name: String,
    /// Celery's `worker_send_task_events` (`-E`), `CELERY_SEND_EVENTS`:
    /// events on the `celeryev` exchange for Flower. `enable_events` over
    /// remote control turns them on at run time too.
    pub send_events: bool,
    /// Python task names mapped to ours (`CELERY_TASK_ALIASES`).
    pub aliases: TaskAliases,
    pub revokes: Revokes,
    /// Celery's `task_default_queue` for the callbacks, chain steps and
    /// chord bodies this worker applies (`CELERY_CANVAS_DEFAULT_QUEUE`,
    /// `celery`): where a signature without a `queue` option goes, for the
    /// Python workers that run it.
    pub canvas_queue: String,
    /// How long the per-domain throttles read from PostgreSQL are used
    /// before they are read again (`DOMAIN_THROTTLE_CACHE_SECONDS`, 5): a
    /// change through the API binds every worker within that time.
    pub domain_throttle_cache: Duration,
}

/// How long revoked task ids are kept, as Celery's workers keep them (the
/// same environment variables and defaults).
#[derive(Debug, Clone, Copy)]
pub struct Revokes {
    /// `CELERY_WORKER_REVOKE_EXPIRES` seconds (3 hours).
    pub expires: Duration,
    /// `CELERY_WORKER_REVOKES_MAX` ids at most (50,000); the oldest go first.
    pub max: usize,
}

/// `CELERY_WORKER_CONCURRENCY`: sends in parallel, for each queue consumed.
pub(super) fn concurrency(vars: &Vars<'_>) -> Result<usize, ConfigError> {
    vars.parse_positive_or("CELERY_WORKER_CONCURRENCY", 1024)
}

/// The lease lasts `WORKER_LEASE_SECONDS` and is renewed every
/// `WORKER_LEASE_RENEW_SECONDS`, at most half of it.
pub(super) fn liveness(vars: &Vars<'_>) -> Result<Liveness, ConfigError> {
    let liveness = Liveness {
        lease: vars.seconds_or("WORKER_LEASE_SECONDS", 15)?,
        renew: vars.seconds_or("WORKER_LEASE_RENEW_SECONDS", 5)?,
    };
    if liveness.renew * 2 > liveness.lease {
        return Err(ConfigError::Invalid {
            var: "WORKER_LEASE_RENEW_SECONDS",
            reason: "must be at most half of WORKER_LEASE_SECONDS".into(),
        });
    }
    Ok(liveness)
}

pub(super) fn settings(vars: &Vars<'_>) -> Result<WorkerSettings, ConfigError> {
    Ok(WorkerSettings {
        node_name: vars
            .get("CELERY_WORKER_NAME")
            .unwrap_or_else(|| format!("notify-worker@{}", host_name(vars))),
        // A switch as Celery's `-E` is: any other value leaves events off.
        send_events: vars.get("CELERY_SEND_EVENTS").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        }),
        aliases: TaskAliases::parse(&vars.get("CELERY_TASK_ALIASES").unwrap_or_default()).map_err(
            |e| ConfigError::Invalid {
                var: "CELERY_TASK_ALIASES",
                reason: e.to_string(),
            },
        )?,
        revokes: Revokes {
            expires: vars.seconds_or("CELERY_WORKER_REVOKE_EXPIRES", 10_800)?,
            max: vars.parse_positive_or("CELERY_WORKER_REVOKES_MAX", 50_000)?,
        },
        canvas_queue: vars
            .get("CELERY_CANVAS_DEFAULT_QUEUE")
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .unwrap_or_else(|| "celery".into()),
        domain_throttle_cache: vars.seconds_or("DOMAIN_THROTTLE_CACHE_SECONDS", 5)?,
    })
}

/// `HOSTNAME`, else `/etc/hostname`, else `localhost`.
pub(super) fn host_name(vars: &Vars<'_>) -> String {
    vars.get("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
