//! The delivery worker: consumes Celery task messages and sends mail
//! through the SMTP account pool.

pub mod canvas;
pub mod consumed_queues;
pub mod consumer;
pub mod context;
pub mod delivery;
pub mod dkim;
pub mod domain_throttle;
pub mod lane;
pub mod liveness;
pub mod outcome;
pub mod pool;
pub mod rate_limits;
pub mod redis_error;
pub mod registry;
pub mod remote_control;
pub mod revoked;
pub mod shared_quota;
pub mod smtp;
pub mod tasks;
pub mod time_limits;
pub mod worker_state;

use std::sync::Arc;

use anyhow::Context as _;
use platform::celery::ResultBackend;
use platform::{db, Settings};
use tokio_util::sync::CancellationToken;

use crate::consumer::Consumer;
use crate::context::Context;
use crate::liveness::Liveness;
use crate::revoked::Revocations;
use crate::smtp::{Throttle, TransportCache};
use crate::worker_state::WorkerState;

/// Connects to PostgreSQL and Redis, then consumes until `shutdown`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = db::connect(&settings)
        .await
        .context("connecting to PostgreSQL")?;
    let results = ResultBackend::new(&settings.result_backend_url, settings.result_expires)?;
    let dkim = dkim::DkimSigners::new(settings.keyring()?.clone());
    let redis = deadpool_redis::Config::from_url(settings.redis_url.as_str())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .context("REDIS_URL")?;
    let throttle = Throttle::new(
        redis.clone(),
        &format!("notify:{}:throttle", settings.queues.tasks),
    );
    let transports = TransportCache::new(
        settings.keyring()?.clone(),
        settings.email_timeout,
        settings.worker_concurrency as u32,
        throttle.clone(),
    );
    let platform::config::WorkerSettings {
        node_name,
        send_events,
        aliases,
        revokes,
        canvas_queue,
        domain_throttle_cache,
    } = settings
        .worker
        .clone()
        .context("the worker's settings are not loaded")?;
    let shared_quota = match settings.python_database_url.as_deref() {
        Some(url) => {
            tracing::info!(
                "sharing daily limits with the Python platform's database (PYTHON_DATABASE_URL)"
            );
            Some(crate::shared_quota::SharedQuota::connect(url).context("PYTHON_DATABASE_URL")?)
        }
        None => None,
    };
    let domain_limits =
        crate::domain_throttle::LimitCache::new(pool.clone(), domain_throttle_cache);
    let domain_gate = crate::domain_throttle::Gate::new(redis.clone(), &settings.queues.tasks);
    let rate_limits = crate::rate_limits::RateLimits::new(redis.clone(), &settings.queues.tasks);
    let revoked = Revocations::new(redis, &settings.queues.tasks, revokes);
    let pool_size = Arc::new(crate::pool::Pool::new(settings.worker_concurrency));
    let time_limits = Arc::new(crate::time_limits::TimeLimits::new(
        settings.task_soft_time_limit,
        settings.task_time_limit,
    ));
    let worker = Arc::new(WorkerState::new(node_name.clone(), send_events));
    let liveness = Arc::new(Liveness::new(&node_name, settings.liveness));
    liveness
        .renew(&pool)
        .await
        .context("taking the worker's liveness lease")?;
    let lease_keeper = {
        let (liveness, pool, stop) = (liveness.clone(), pool.clone(), CancellationToken::new());
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move { liveness.keep(&pool, &stop).await }
        });
        (handle, stop)
    };
    let ctx = Arc::new(Context {
        settings: Arc::new(settings),
        pool,
        results,
        transports,
        throttle,
        backlog: Default::default(),
        domain_limits,
        domain_gate,
        worker,
        aliases,
        liveness: liveness.clone(),
        shared_quota,
        revoked,
        concurrency: pool_size,
        time_limits,
        rate_limits,
        dkim,
        canvas_queue,
    });
    // Idle connections closed in time, their places renewed or given back.
    let connection_keeper = {
        let (ctx, stop) = (ctx.clone(), CancellationToken::new());
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move { ctx.transports.keep(&stop).await }
        });
        (handle, stop)
    };
    let consumed = Consumer::new(ctx.clone(), node_name).run(shutdown).await;
    connection_keeper.1.cancel();
    let _ = connection_keeper.0.await;
    // Renewed until every in-flight task has settled, then given up.
    lease_keeper.1.cancel();
    let _ = lease_keeper.0.await;
    liveness.release(&ctx.pool).await;
    consumed.context("declaring the task queues")?;
    tracing::info!("worker stopped");
    Ok(())
}
