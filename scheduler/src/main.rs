//! The scheduler ("beat"). For now it checks its dependencies and runs an
//! outbox relay, so queued task messages are published even while no API
//! instance is up; delayed sends and cron campaigns come with the scheduler
//! issue.

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
    let _ = conn.close(200, "start-up check").await;
    let shutdown = CancellationToken::new();
    tokio::spawn(platform::shutdown::on_signal(shutdown.clone()));
    tracing::info!("notify-scheduler running");
    OutboxRelay::new(pool, settings, OutboxWaker::default())
        .run(shutdown)
        .await;
    tracing::info!("notify-scheduler stopped");
    Ok(())
}
