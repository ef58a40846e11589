//! What every binary does around its own work: answer the container health
//! probe, load its settings (exit code 2 when they are wrong), set up
//! logging, stop on SIGTERM or Ctrl-C, and turn the outcome into an exit
//! code (1 on failure), each message beginning with the binary's name.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{Role, Settings};
use crate::{healthcheck, shutdown, telemetry};

/// Settings for `role`, or the exit code once the error is printed.
pub fn load_settings(role: Role) -> Result<Settings, ExitCode> {
    Settings::from_env_for(role).map_err(|e| {
        eprintln!("{}: {e}", role.binary());
        ExitCode::from(2)
    })
}

/// A token cancelled on SIGTERM (what Docker and systemd send) or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(shutdown::on_signal(token.clone()));
    token
}

/// The exit code of a run, printing its error.
pub fn exit_code(role: Role, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e:#}", role.binary());
            ExitCode::FAILURE
        }
    }
}

/// The whole life of a service without an HTTP API of its own (the worker,
/// the scheduler): `health-check` as first argument probes a running one;
/// otherwise it loads its settings, logs, serves `/metrics` on
/// `METRICS_PORT` (when set), and runs `service` until a shutdown signal.
pub async fn run_service<F, Fut>(role: Role, service: F) -> ExitCode
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if std::env::args().nth(1).as_deref() == Some("health-check") {
        return healthcheck::run(role).await;
    }
    let settings = match load_settings(role) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init_tracing(&settings);
    let result = match telemetry::serve_metrics(settings.metrics_port) {
        Ok(()) => service(settings, shutdown_on_signal()).await,
        Err(e) => Err(e),
    };
    exit_code(role, result)
}
