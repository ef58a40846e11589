#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use platform::config::Role;
use platform::{telemetry, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Container health probe: asks this process's METRICS_PORT listener.
    if std::env::args().nth(1).as_deref() == Some("health-check") {
        return platform::healthcheck::run(Role::Scheduler).await;
    }
    let settings = match Settings::from_env_for(Role::Scheduler) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("notify-scheduler: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&settings);
    if let Err(e) = telemetry::serve_metrics(settings.metrics_port) {
        eprintln!("notify-scheduler: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(platform::shutdown::on_signal(shutdown.clone()));
    match notify_scheduler::run(settings, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify-scheduler: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
