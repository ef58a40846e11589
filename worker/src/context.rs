//! What every task can reach.

use std::sync::Arc;

use platform::celery::ResultBackend;
use platform::Settings;
use sqlx::PgPool;

use crate::pool::{Throttle, TransportCache};
use crate::remote_control::WorkerState;

pub struct Context {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub results: ResultBackend,
    pub transports: TransportCache,
    pub throttle: Throttle,
    /// Tasks being executed, counters and events (remote control).
    pub worker: Arc<WorkerState>,
}
