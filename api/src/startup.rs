//! Builds the application from settings; used by `main` and by the tests
//! alike, so tests run the real thing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, Request};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use platform::celery::ResultBackend;
use platform::outbox::{OutboxRelay, OutboxWaker};
use platform::{db, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{AuthThrottle, KeyCache, TokenIssuer};
use crate::docs;
use crate::error::ApiError;
use crate::http_metrics;
use crate::ingest::Ingest;
use crate::ratelimit::{self, RateLimiter};
use crate::readiness::Readiness;
use crate::routes::{
    api_keys, audit_log, auth, bounces, campaigns, dead_letters, dkim_keys, domain_throttles,
    email_accounts, health, inbound, lists, messages, periodic_tasks, queues, suppressions,
    templates, timelines, unsubscribe, webhooks,
};
use crate::state::{ApiSettings, AppState, Shared};

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Migrates the database, connects, and binds `API_HOST:API_PORT`
    /// (port 0 picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::open(&settings).await?;
        let results = ResultBackend::new(&settings.result_backend_url, settings.result_expires)?;
        let listener = TcpListener::bind((settings.api_host.as_str(), settings.api_port))
            .await
            .with_context(|| format!("binding {}:{}", settings.api_host, settings.api_port))?;
        let outbox = OutboxWaker::default();
        let rate_limiter = RateLimiter::new(&settings)?;
        let jwt = settings
            .jwt
            .as_ref()
            .context("JWT settings are not loaded")?;
        let tokens = Arc::new(TokenIssuer::new(jwt));
        let ingest = Ingest::start(pool.clone(), settings.queues.tasks.clone(), outbox.clone());
        let sns = Arc::new(inbound::certificates(
            settings.bounces.as_ref().map(|b| &b.inbound),
        )?);
        let state = AppState::new(Shared {
            sns,
            rate_limiter,
            auth_throttle: AuthThrottle::new(&settings)?,
            readiness: Readiness::default(),
            tokens,
            keys: KeyCache::start(pool.clone()),
            ingest,
            settings: Arc::new(ApiSettings::new(settings)?),
            pool,
            results,
            outbox,
            metrics: platform::telemetry::metrics_handle(),
        });
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
            self.state.settings.settings().clone(),
            self.state.outbox.clone(),
        );
        let relay_task = tokio::spawn(relay.run(shutdown.clone()));
        tracing::info!(address = %self.listener.local_addr()?, "notify-api listening");
        let app = router(self.state);
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
        shutdown.cancel();
        let _ = relay_task.await;
        Ok(())
    }
}

/// Every route the API serves, as (method, path, handler): the single list
/// the router is built from, and that the OpenAPI test compares with the
/// spec (`/docs` and `/openapi.json`, which serve the spec, aside).
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/health", get(health::live)),
        (Method::GET, "/health/ready", get(health::ready)),
        (Method::GET, "/metrics", get(health::metrics)),
        (Method::POST, "/api/v1/auth/token", post(auth::issue_token)),
        (Method::POST, "/api/v1/auth/refresh", post(auth::refresh)),
        (Method::GET, "/api/v1/version", get(health::version)),
        (Method::GET, "/u/{token}", get(unsubscribe::page)),
        (Method::POST, "/u/{token}", post(unsubscribe::unsubscribe)),
        (
            Method::POST,
            "/api/v1/messages/email/send",
            post(messages::send),
        ),
        (
            Method::POST,
            "/api/v1/messages/email/batch",
            post(messages::send_batch),
        ),
        (Method::GET, "/api/v1/messages", get(messages::list)),
        (Method::GET, "/api/v1/messages/stats", get(messages::stats)),
        (Method::GET, "/api/v1/messages/{id}", get(messages::get)),
        (
            Method::GET,
            "/api/v1/messages/{id}/events",
            get(timelines::list),
        ),
        (
            Method::POST,
            "/api/v1/messages/{id}/cancel",
            post(messages::cancel),
        ),
        (Method::POST, "/api/v1/templates", post(templates::create)),
        (Method::GET, "/api/v1/templates", get(templates::list)),
        (Method::GET, "/api/v1/templates/{id}", get(templates::get)),
        (
            Method::PUT,
            "/api/v1/templates/{id}",
            put(templates::replace),
        ),
        (
            Method::DELETE,
            "/api/v1/templates/{id}",
            delete(templates::delete),
        ),
        (
            Method::POST,
            "/api/v1/templates/{id}/render",
            post(templates::render),
        ),
        (Method::POST, "/api/v1/webhooks", post(webhooks::create)),
        (
            Method::POST,
            "/api/v1/webhooks/inbound/{provider}",
            post(inbound::receive).layer(DefaultBodyLimit::max(inbound::BODY_LIMIT)),
        ),
        (Method::GET, "/api/v1/webhooks", get(webhooks::list)),
        (Method::GET, "/api/v1/webhooks/{id}", get(webhooks::get)),
        (
            Method::PATCH,
            "/api/v1/webhooks/{id}",
            patch(webhooks::update),
        ),
        (
            Method::DELETE,
            "/api/v1/webhooks/{id}",
            delete(webhooks::delete),
        ),
        (
            Method::POST,
            "/api/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        ),
        (
            Method::GET,
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        ),
        (
            Method::POST,
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        ),
        (
            Method::POST,
            "/api/v1/webhooks/{id}/test",
            post(webhooks::test),
        ),
        (Method::POST, "/api/v1/lists", post(lists::create)),
        (Method::GET, "/api/v1/lists", get(lists::list)),
        (Method::GET, "/api/v1/lists/{id}", get(lists::get)),
        (Method::DELETE, "/api/v1/lists/{id}", delete(lists::delete)),
        (
            Method::POST,
            "/api/v1/lists/{id}/members",
            post(lists::add_members),
        ),
        (
            Method::GET,
            "/api/v1/lists/{id}/members",
            get(lists::members),
        ),
        (
            Method::DELETE,
            "/api/v1/lists/{id}/members/{address}",
            delete(lists::remove_member),
        ),
        (Method::POST, "/api/v1/campaigns", post(campaigns::create)),
        (Method::GET, "/api/v1/campaigns", get(campaigns::list)),
        (Method::GET, "/api/v1/campaigns/{id}", get(campaigns::get)),
        (
            Method::PUT,
            "/api/v1/campaigns/{id}",
            put(campaigns::replace),
        ),
        (
            Method::DELETE,
            "/api/v1/campaigns/{id}",
            delete(campaigns::delete),
        ),
        (
            Method::POST,
            "/api/v1/campaigns/{id}/run",
            post(campaigns::run),
        ),
        (
            Method::GET,
            "/api/v1/campaigns/{id}/runs",
            get(campaigns::runs),
        ),
        (
            Method::POST,
            "/api/v1/admin/periodic-tasks",
            post(periodic_tasks::create),
        ),
        (
            Method::GET,
            "/api/v1/admin/periodic-tasks",
            get(periodic_tasks::list),
        ),
        (
            Method::GET,
            "/api/v1/admin/periodic-tasks/{id}",
            get(periodic_tasks::get),
        ),
        (
            Method::PUT,
            "/api/v1/admin/periodic-tasks/{id}",
            put(periodic_tasks::replace),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/periodic-tasks/{id}",
            delete(periodic_tasks::delete),
        ),
        (Method::GET, "/api/v1/suppressions", get(suppressions::list)),
        (
            Method::POST,
            "/api/v1/suppressions",
            post(suppressions::create),
        ),
        (
            Method::DELETE,
            "/api/v1/suppressions/{address}",
            delete(suppressions::delete),
        ),
        (
            Method::POST,
            "/api/v1/admin/email-accounts",
            post(email_accounts::create),
        ),
        (
            Method::GET,
            "/api/v1/admin/email-accounts",
            get(email_accounts::list),
        ),
        (
            Method::POST,
            "/api/v1/admin/email-accounts/import",
            post(email_accounts::import),
        ),
        (
            Method::GET,
            "/api/v1/admin/email-accounts/{id}",
            get(email_accounts::get),
        ),
        (
            Method::PATCH,
            "/api/v1/admin/email-accounts/{id}",
            patch(email_accounts::update),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/email-accounts/{id}",
            delete(email_accounts::delete),
        ),
        (
            Method::POST,
            "/api/v1/admin/email-accounts/{id}/test",
            post(email_accounts::test),
        ),
        (
            Method::GET,
            "/api/v1/admin/domain-throttles",
            get(domain_throttles::list),
        ),
        (
            Method::POST,
            "/api/v1/admin/domain-throttles",
            post(domain_throttles::create),
        ),
        (
            Method::GET,
            "/api/v1/admin/domain-throttles/{domain}",
            get(domain_throttles::get),
        ),
        (
            Method::PUT,
            "/api/v1/admin/domain-throttles/{domain}",
            put(domain_throttles::replace),
        ),
        (
            Method::PATCH,
            "/api/v1/admin/domain-throttles/{domain}",
            patch(domain_throttles::update),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/domain-throttles/{domain}",
            delete(domain_throttles::delete),
        ),
        (
            Method::POST,
            "/api/v1/admin/dkim-keys",
            post(dkim_keys::create),
        ),
        (Method::GET, "/api/v1/admin/dkim-keys", get(dkim_keys::list)),
        (
            Method::GET,
            "/api/v1/admin/dkim-keys/{id}",
            get(dkim_keys::get),
        ),
        (
            Method::PATCH,
            "/api/v1/admin/dkim-keys/{id}",
            patch(dkim_keys::update),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/dkim-keys/{id}",
            delete(dkim_keys::delete),
        ),
        (
            Method::POST,
            "/api/v1/admin/api-keys",
            post(api_keys::create),
        ),
        (Method::GET, "/api/v1/admin/api-keys", get(api_keys::list)),
        (
            Method::DELETE,
            "/api/v1/admin/api-keys/{id}",
            delete(api_keys::revoke),
        ),
        (Method::GET, "/api/v1/admin/audit-log", get(audit_log::list)),
        (Method::GET, "/api/v1/admin/bounces", get(bounces::list)),
        (
            Method::GET,
            "/api/v1/admin/email-accounts/{id}/mailbox",
            get(bounces::get_mailbox),
        ),
        (
            Method::PUT,
            "/api/v1/admin/email-accounts/{id}/mailbox",
            put(bounces::put_mailbox),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/email-accounts/{id}/mailbox",
            delete(bounces::delete_mailbox),
        ),
        (Method::GET, "/api/v1/admin/queues", get(queues::list)),
        (
            Method::GET,
            "/api/v1/admin/dead-letters",
            get(dead_letters::list),
        ),
        (
            Method::POST,
            "/api/v1/admin/dead-letters/{id}/requeue",
            post(dead_letters::requeue),
        ),
    ]
}

/// The (method, path) pairs of [`routes`].
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let max = state.settings.email_max_size;
    let body_limit = max + max / 2 + 1024 * 1024;
    let mut app = Router::new();
    for (_, path, handler) in routes() {
        // Routes on one path with different methods merge.
        app = app.route(path, handler);
    }
    app.merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", docs::document()))
        .merge(crate::console::router(state.clone()))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(ratelimit::headers))
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
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    uri = %request.uri().path(),
                    request_id = %request_id,
                    // A send's, once it is accepted (routes/messages.rs).
                    message_id = tracing::field::Empty,
                    task_id = tracing::field::Empty,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
