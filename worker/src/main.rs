#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use platform::config::Role;
use platform::{telemetry, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Container health probe: asks this process's METRICS_PORT listener.
    if std::env::args().nth(1).as_deref() == Some("health-check") {
        return platform::healthcheck::run(Role::Worker).await;
    }
    let settings = match Settings::from_env_for(Role::Worker) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("notify-worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&settings);
    if let Err(e) = telemetry::serve_metrics(settings.metrics_port) {
        eprintln!("notify-worker: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    // Zero-valued series from the start: rate() and the alerts need them
    // before the first failure or dead letter happens.
    for name in [
        "messages_sent_total",
        "messages_failed_total",
        "email_retries_total",
        "emails_waiting_for_quota_total",
        "dead_letters_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(platform::shutdown::on_signal(shutdown.clone()));
    match notify_worker::run(settings, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
