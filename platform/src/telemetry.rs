//! Logging and metrics set-up shared by the three binaries.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::Settings;

/// JSON logs in production (for log shippers), readable lines elsewhere.
/// `LOG_LEVEL` accepts Python's names (`INFO`, `WARNING`, ...) as well as
/// full `tracing` filter directives.
pub fn init_tracing(settings: &Settings) {
    let level = match settings.log_level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let result = if settings.env.is_production() {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (tests starting several apps) keeps the first.
    let _ = result;
}

/// Installs the global Prometheus recorder once per process and returns a
/// handle that renders the text exposition format.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves `/metrics` on `port` (all interfaces) for processes without an
/// HTTP API of their own (worker, scheduler). `None` disables it.
pub fn serve_metrics(port: Option<u16>) -> anyhow::Result<()> {
    let Some(port) = port else {
        return Ok(());
    };
    let handle = metrics_handle();
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| anyhow::anyhow!("binding metrics port {port}: {e}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let body = handle.render();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let ok =
                    request.starts_with(b"GET /metrics") || request.starts_with(b"GET /health");
                let (status, body) = if ok {
                    ("200 OK", body)
                } else {
                    ("404 Not Found", String::new())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
}
