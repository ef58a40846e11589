//! Liveness, readiness, version and Prometheus metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::Data;
use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive")))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: PostgreSQL, RabbitMQ and Redis are all reachable. Answers 503
/// naming each dependency that is down.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "All dependencies reachable"),
        (status = 503, description = "At least one dependency is down; `checks` names it")))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (database, broker, redis) = tokio::join!(
        check(async {
            sqlx::query("SELECT 1")
                .execute(&state.pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        check(async {
            let conn = platform::broker::connect(&state.settings, "notify-api-readiness")
                .await
                .map_err(|e| e.to_string())?;
            platform::broker::close(&conn, 200, "readiness probe").await;
            Ok(())
        }),
        check(async { state.results.ping().await.map_err(|e| e.to_string()) }),
    );
    let mut checks = Map::new();
    let mut all_ok = true;
    for (name, result) in [
        ("database", database),
        ("rabbitmq", broker),
        ("redis", redis),
    ] {
        all_ok &= result.is_ok();
        checks.insert(
            name.into(),
            Value::String(result.map_or_else(|e| format!("down: {e}"), |_| "ok".into())),
        );
    }
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let label = if all_ok { "ready" } else { "unavailable" };
    (status, Json(json!({"status": label, "checks": checks})))
}

async fn check(probe: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub name: &'static str,
    pub version: &'static str,
}

#[utoipa::path(get, path = "/api/v1/version", tag = "health",
    responses((status = 200, body = Data<VersionInfo>)))]
pub async fn version() -> Json<Data<VersionInfo>> {
    Data::new(VersionInfo {
        name: "notify-api",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(pending) = platform::db::outbox::pending(&state.pool).await {
        metrics::gauge!("outbox_pending_messages").set(pending as f64);
    }
    // Account pool state for the quota and circuit-breaker alerts. Read at
    // scrape time, so every API replica reports the same values.
    let today = platform::today(&state.settings);
    if let Ok(accounts) = platform::db::email_accounts::gauges(&state.pool, today).await {
        for a in accounts {
            let account = [("account", a.email)];
            metrics::gauge!("email_account_quota_remaining", &account)
                .set(f64::from(a.quota_remaining));
            metrics::gauge!("email_account_daily_limit", &account).set(f64::from(a.daily_limit));
            metrics::gauge!("email_account_circuit_open", &account).set(if a.circuit_open {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("email_account_active", &account).set(if a.is_active {
                1.0
            } else {
                0.0
            });
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
