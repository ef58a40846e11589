//! What every task can reach.

use std::sync::Arc;

use platform::celery::{ResultBackend, TaskAliases};
use platform::Settings;
use sqlx::PgPool;

use crate::smtp::{Throttle, TransportCache};
use crate::worker_state::WorkerState;

pub struct Context {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub results: ResultBackend,
    pub transports: TransportCache,
    pub throttle: Throttle,
    /// Sends admitted on each account with a connection cap, not finished.
    pub backlog: Arc<crate::delivery::backlog::Backlog>,
    /// Per-recipient-domain throttles: their settings, cached briefly...
    pub domain_limits: crate::domain_throttle::LimitCache,
    /// ...and their limits, held in Redis across all workers.
    pub domain_gate: crate::domain_throttle::Gate,
    /// Tasks being executed, counters and events (remote control).
    pub worker: Arc<WorkerState>,
    /// Python task names mapped to ours (`CELERY_TASK_ALIASES`).
    pub aliases: TaskAliases,
    /// This worker's liveness lease, recorded with its claims.
    pub liveness: Arc<crate::liveness::Liveness>,
    /// Daily limits shared with the Python platform during a switch.
    pub shared_quota: Option<crate::shared_quota::SharedQuota>,
    /// Task ids revoked over remote control, shared by the platform's workers.
    pub revoked: crate::revoked::Revocations,
    /// The concurrency: `CELERY_WORKER_CONCURRENCY`, changed at run time
    /// (`pool_grow`, `pool_shrink`, `autoscale`).
    pub concurrency: Arc<crate::pool::Pool>,
    /// Time limits per task type set at run time (`time_limit`).
    pub time_limits: Arc<crate::time_limits::TimeLimits>,
    /// Rate limits per task type, shared by the platform's workers.
    pub rate_limits: crate::rate_limits::RateLimits,
    /// DKIM signers by sending domain.
    pub dkim: crate::dkim::DkimSigners,
    /// Where applied signatures without a `queue` option go
    /// (`CELERY_CANVAS_DEFAULT_QUEUE`).
    pub canvas_queue: String,
}
