//! Builds the application from settings; used by `main` and by the tests
//! alike, so tests run the real thing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use platform::celery::ResultBackend;
use platform::outbox::{OutboxRelay, OutboxWaker};
use platform::{db, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{KeyCache, TokenIssuer};
use crate::docs::ApiDoc;
use crate::error::ApiError;
use crate::http_metrics;
use crate::ingest::Ingest;
use crate::routes::{auth, dead_letters, email_accounts, health, messages};
use crate::state::AppState;

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Migrates the database, connects, and binds `API_HOST:API_PORT`
    /// (port 0 picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        db::migrate(&settings.database_url)
            .await
            .context("migrating the database")?;
        let pool = db::connect(&settings)
            .await
            .context("connecting to PostgreSQL")?;
        let results = ResultBackend::new(&settings.result_backend_url, settings.result_expires)?;
        let listener = TcpListener::bind((settings.api_host.as_str(), settings.api_port))
            .await
            .with_context(|| format!("binding {}:{}", settings.api_host, settings.api_port))?;
        let outbox = OutboxWaker::default();
        let state = AppState {
            tokens: Arc::new(TokenIssuer::new(&settings.jwt)),
            keys: KeyCache::start(pool.clone()),
            ingest: Ingest::start(pool.clone(), settings.queues.tasks.clone(), outbox.clone()),
            settings: Arc::new(settings),
            pool,
            results,
            outbox,
            metrics: platform::telemetry::metrics_handle(),
        };
        Ok(Application { listener, state })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, with the outbox relay beside it.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = OutboxRelay::new(
            self.state.pool.clone(),
            (*self.state.settings).clone(),
            self.state.outbox.clone(),
        );
        let relay_task = tokio::spawn(relay.run(shutdown.clone()));
        tracing::info!(address = %self.listener.local_addr()?, "notify-api listening");
        let app = router(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;
        shutdown.cancel();
        let _ = relay_task.await;
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let max = state.settings.email_max_size;
    let body_limit = max + max / 2 + 1024 * 1024;
    let api = Router::new()
        .route("/auth/token", post(auth::issue_token))
        .route("/auth/refresh", post(auth::refresh))
        .route("/version", get(health::version))
        .route("/messages/email/send", post(messages::send))
        .route("/messages/{id}", get(messages::get))
        .route(
            "/admin/email-accounts",
            post(email_accounts::create).get(email_accounts::list),
        )
        .route(
            "/admin/email-accounts/{id}",
            get(email_accounts::get)
                .patch(email_accounts::update)
                .delete(email_accounts::delete),
        )
        .route("/admin/dead-letters", get(dead_letters::list))
        .route(
            "/admin/dead-letters/{id}/requeue",
            post(dead_letters::requeue),
        )
        .fallback(|| async { ApiError::NotFound("route") });

    Router::new()
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .nest("/api/v1", api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::middleware::from_fn(http_metrics::record))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!(
                "handler panicked"
            )))
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
