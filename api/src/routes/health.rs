//! Liveness, readiness, version and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::Data;
use crate::state::AppState;

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive")))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: PostgreSQL, RabbitMQ and Redis are all reachable. Answers 503
/// when one is down; `checks` names each component with `ok` or `down`
/// (details only in the log). A result is reused for two seconds.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "All dependencies reachable",
            example = json!({"status": "ready", "checks": {"database": "ok", "rabbitmq": "ok", "redis": "ok"}})),
        (status = 503, description = "At least one dependency is down; `checks` names it",
            example = json!({"status": "unavailable", "checks": {"database": "ok", "rabbitmq": "down", "redis": "ok"}}))))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let report = state
        .readiness
        .report(&state.settings, &state.pool, &state.results)
        .await;
    let checks: Map<String, Value> = report
        .components()
        .into_iter()
        .map(|(name, ok)| {
            (
                name.to_string(),
                Value::from(if ok { "ok" } else { "down" }),
            )
        })
        .collect();
    let (status, label) = if report.all_ok() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, Json(json!({"status": label, "checks": checks})))
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
        let rates = match &state.settings.bounces {
            Some(b) => {
                platform::db::bounces::account_rates(&state.pool, today, b.pause.window_days, None)
                    .await
                    .unwrap_or_default()
            }
            None => Default::default(),
        };
        for a in accounts {
            if let Some(r) = rates.get(&a.id) {
                let account = [("account", a.email.clone())];
                metrics::gauge!("email_account_bounce_rate", &account).set(r.bounce_rate());
                metrics::gauge!("email_account_complaint_rate", &account).set(r.complaint_rate());
            }
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
