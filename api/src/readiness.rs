//! The readiness check behind `/health/ready`: PostgreSQL, RabbitMQ and
//! Redis reachable.
//!
//! The route is public, so it must not be an amplifier: a result is reused
//! for [`FRESH_FOR`], one probe runs at a time (callers meanwhile wait for
//! it and share its result), and RabbitMQ is probed over one kept
//! connection (opening and closing a channel) instead of a new connection
//! per call. Answers name each component with `ok` or `down` only; why a
//! component is down goes to the log.

use std::time::{Duration, Instant};

use lapin::Connection;
use platform::celery::ResultBackend;
use platform::Settings;
use sqlx::PgPool;
use tokio::sync::Mutex;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a result is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// Each component's state, in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub database: bool,
    pub rabbitmq: bool,
    pub redis: bool,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        self.database && self.rabbitmq && self.redis
    }

    pub fn components(&self) -> [(&'static str, bool); 3] {
        [
            ("database", self.database),
            ("rabbitmq", self.rabbitmq),
            ("redis", self.redis),
        ]
    }
}

#[derive(Default)]
struct Cached {
    last: Option<(Instant, Report)>,
    broker: Option<Connection>,
}

#[derive(Default)]
pub struct Readiness {
    cached: Mutex<Cached>,
}

impl Readiness {
    /// The current report: the last one if fresh, else a new probe.
    pub async fn report(
        &self,
        settings: &Settings,
        pool: &PgPool,
        results: &ResultBackend,
    ) -> Report {
        let mut cached = self.cached.lock().await;
        if let Some((at, report)) = cached.last {
            if at.elapsed() < FRESH_FOR {
                return report;
            }
        }
        let (database, rabbitmq, redis) = tokio::join!(
            check("database", async {
                sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
            check("rabbitmq", probe_broker(&mut cached.broker, settings)),
            check("redis", async {
                results.ping().await.map_err(|e| e.to_string())
            }),
        );
        let report = Report {
            database,
            rabbitmq,
            redis,
        };
        cached.last = Some((Instant::now(), report));
        report
    }
}

/// Opens and closes a channel on the kept connection, (re)connecting when
/// there is none or it has failed.
async fn probe_broker(kept: &mut Option<Connection>, settings: &Settings) -> Result<(), String> {
    if let Some(conn) = kept.as_ref() {
        if conn.status().connected() {
            match channel_round_trip(conn).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "readiness: kept RabbitMQ connection failed; reconnecting")
                }
            }
        }
    }
    *kept = None;
    let conn = platform::broker::connect(settings, "notify-api-readiness")
        .await
        .map_err(|e| e.to_string())?;
    channel_round_trip(&conn).await?;
    *kept = Some(conn);
    Ok(())
}

async fn channel_round_trip(conn: &Connection) -> Result<(), String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .close(200, "readiness probe")
        .await
        .map_err(|e| e.to_string())
}

async fn check(
    component: &'static str,
    probe: impl std::future::Future<Output = Result<(), String>>,
) -> bool {
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
    match outcome {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(component, %error, "readiness: dependency down");
            false
        }
    }
}
