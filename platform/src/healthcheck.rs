//! The `health-check` subcommand of every binary: a container health probe
//! without curl or wget in the image. It asks the process's own HTTP
//! listener for `/health` on loopback and turns the answer into an exit code.
//!
//! - `notify-api health-check`: `GET http://127.0.0.1:$API_PORT/health`.
//! - `notify-worker health-check`, `notify-scheduler health-check`:
//!   `GET http://127.0.0.1:$METRICS_PORT/health` (the metrics listener, which
//!   these processes open before connecting to anything); fails when
//!   `METRICS_PORT` is unset, since there is then nothing to ask.

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{ConfigError, Role};

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    #[error("{0} is not set; there is no listener to check")]
    PortUnset(&'static str),
    #[error(transparent)]
    BadPort(#[from] ConfigError),
    #[error("connecting to 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("talking to 127.0.0.1:{port}: {source}")]
    Io { port: u16, source: std::io::Error },
    #[error("no answer from 127.0.0.1:{0} within {TIMEOUT:?}")]
    Timeout(u16),
    #[error("unhealthy answer: {0}")]
    Unhealthy(String),
}

/// `GET /health` on 127.0.0.1:`port`; Ok when the status is 200.
pub async fn probe(port: u16) -> Result<(), HealthCheckError> {
    tokio::time::timeout(TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| HealthCheckError::Connect { port, source })?;
        let io = |source| HealthCheckError::Io { port, source };
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(io)?;
        let mut answer = Vec::new();
        // The status line is all we need; a small cap keeps a confused peer cheap.
        let mut chunk = [0u8; 512];
        while answer.len() < 4096 {
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        let status_line = text.lines().next().unwrap_or_default().to_string();
        let mut parts = status_line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(v), Some("200")) if v.starts_with("HTTP/") => Ok(()),
            _ => Err(HealthCheckError::Unhealthy(if status_line.is_empty() {
                "empty response".into()
            } else {
                status_line
            })),
        }
    })
    .await
    .unwrap_or(Err(HealthCheckError::Timeout(port)))
}

/// The port of `role`'s listener (`.env`, then the environment).
pub fn port_from_env(role: Role) -> Result<u16, HealthCheckError> {
    role.listener_port_from_env()?
        .ok_or(HealthCheckError::PortUnset(role.listener_var()))
}

/// The whole subcommand: reads the port, probes, prints one line, and
/// returns the exit code (0 healthy, 1 not).
pub async fn run(role: Role) -> ExitCode {
    let binary = role.binary();
    let result = match port_from_env(role) {
        Ok(port) => probe(port).await.map(|()| port),
        Err(e) => Err(e),
    };
    match result {
        Ok(port) => {
            println!("{binary}: healthy (127.0.0.1:{port}/health)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{binary}: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
