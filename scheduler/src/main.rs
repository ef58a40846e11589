//! The scheduler ("beat"). Every instance runs an outbox relay and releases
//! due delayed sends (`release`); one elected leader (`leader`) runs the
//! periodic duties (`duties`). Several instances may run at once: exactly
//! once comes from row locks and unique run rows, not from there being one.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod duties;
mod leader;
mod reconcile;
mod release;

use anyhow::Context;
use platform::outbox::{OutboxRelay, OutboxWaker};
use platform::{broker, db, telemetry, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Container health probe: asks this process's METRICS_PORT listener.
    if std::env::args().nth(1).as_deref() == Some("health-check") {
        return platform::healthcheck::run("notify-scheduler", "METRICS_PORT", None).await;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("notify-scheduler: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&settings);
    match run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify-scheduler: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::serve_metrics(settings.metrics_port)?;
    db::migrate(&settings.database_url)
        .await
        .context("migrating the database")?;
    let pool = db::connect(&settings)
        .await
        .context("connecting to PostgreSQL")?;
    let conn = broker::connect(&settings, "notify-scheduler")
        .await
        .context("connecting to RabbitMQ")?;
    broker::close(&conn, 200, "start-up check").await;
    let shutdown = CancellationToken::new();
    tokio::spawn(platform::shutdown::on_signal(shutdown.clone()));
    tracing::info!("notify-scheduler running");
    let waker = OutboxWaker::default();
    let releaser = release::Releaser {
        pool: pool.clone(),
        queue: settings.queues.tasks.clone(),
        batch: settings.scheduler.release_batch,
        poll: settings.scheduler.poll,
        waker: waker.clone(),
    };
    let election = leader::Election {
        database_url: settings.database_url.clone(),
        retry: settings.scheduler.leader_retry,
    };
    let duties = duties::Duties::new(pool.clone(), settings.clone(), waker.clone());
    let tasks = [
        tokio::spawn(releaser.run(shutdown.clone())),
        tokio::spawn(election.run(shutdown.clone(), move |token| duties.clone().run(token))),
        tokio::spawn(OutboxRelay::new(pool, settings, waker).run(shutdown.clone())),
    ];
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("notify-scheduler stopped");
    Ok(())
}
