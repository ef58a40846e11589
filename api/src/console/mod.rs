//! The operator console: server-rendered HTML under `/console`, on the same
//! handlers as the REST API (each page calls the route functions in
//! [`crate::routes`] with the signed-in key's principal, so there is no
//! second path to the database for the same action).
//!
//! Pages are `maud` templates compiled into the binary; the one script is
//! htmx, vendored under `assets/` and served from the binary, used for the
//! live parts (polling fragments). Charts are inline SVG drawn here.
//! Security: see [`session`] (HttpOnly, SameSite=Strict cookie holding a
//! short-lived access token; a CSRF token checked on every POST).

pub mod account_edit;
pub mod account_import;
pub mod accounts;
pub mod api_keys;
pub mod audit_log;
pub mod campaigns;
pub mod csv;
pub mod dead_letters;
pub mod list_csv;
pub mod lists;
pub mod messages;
pub mod overview;
pub mod renewal;
pub mod session;
pub mod sign_in;
pub mod suppressions;
pub mod templates;
pub mod webhook_page;
pub mod webhooks;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::error::ApiError;
use crate::state::AppState;
pub use session::Session;

const HTMX: &[u8] = include_bytes!("assets/htmx-2.0.4.min.js");
const CSS: &str = include_str!("assets/console.css");

/// The policy of every console page: nothing but this origin's own script,
/// style and frames (the rendered email has its own, stricter one).
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; \
     base-uri 'none'; object-src 'none'";

/// The console's routes: sign-in and the assets are public, every other
/// page needs a session ([`session::require`]).
pub fn router(state: AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/console", get(overview::page))
        .route("/console/overview/live", get(overview::live))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/messages", get(messages::search))
        .route("/console/messages/{id}", get(messages::page))
        .route("/console/messages/{id}/live", get(messages::live))
        .route("/console/messages/{id}/body", get(messages::body))
        .route("/console/messages/{id}/cancel", post(messages::cancel))
        .route(
            "/console/accounts",
            get(accounts::page).post(accounts::create),
        )
        .route(
            "/console/accounts/import",
            get(account_import::form).post(account_import::import),
        )
        .route(
            "/console/accounts/{id}/edit",
            get(account_edit::form).post(account_edit::save),
        )
        .route("/console/accounts/{id}/active", post(accounts::set_active))
        .route("/console/accounts/{id}/test", post(accounts::test))
        .route(
            "/console/api-keys",
            get(api_keys::page).post(api_keys::mint),
        )
        .route("/console/api-keys/{id}/revoke", post(api_keys::revoke))
        .route(
            "/console/templates",
            get(templates::page).post(templates::create),
        )
        .route("/console/templates/new", get(templates::new))
        .route("/console/templates/preview", post(templates::preview))
        .route(
            "/console/templates/{id}",
            get(templates::edit).post(templates::save),
        )
        .route("/console/lists", get(lists::page).post(lists::create))
        .route("/console/lists/{id}", get(lists::show))
        .route("/console/lists/{id}/import", post(lists::import_csv))
        .route(
            "/console/campaigns",
            get(campaigns::page).post(campaigns::create),
        )
        .route("/console/campaigns/next-runs", get(campaigns::preview))
        .route("/console/campaigns/{id}", get(campaigns::show))
        .route("/console/campaigns/{id}/run", post(campaigns::run))
        .route("/console/campaigns/{id}/runs", get(campaigns::runs))
        .route("/console/dead-letters", get(dead_letters::page))
        .route(
            "/console/dead-letters/{id}/requeue",
            post(dead_letters::requeue),
        )
        .route(
            "/console/suppressions",
            get(suppressions::page).post(suppressions::add),
        )
        .route("/console/suppressions/remove", post(suppressions::remove))
        .route("/console/audit-log", get(audit_log::page))
        .route(
            "/console/webhooks",
            get(webhooks::page).post(webhooks::create),
        )
        .route("/console/webhooks/{id}", get(webhook_page::page))
        .route("/console/webhooks/{id}/deliveries", get(webhook_page::live))
        .route("/console/webhooks/{id}/test", post(webhook_page::test))
        .route("/console/webhooks/{id}/active", post(webhooks::set_active))
        .route("/console/webhooks/{id}/delete", post(webhooks::delete))
        .layer(axum::middleware::from_fn_with_state(
            state,
            session::require,
        ));
    Router::new()
        .route(
            "/console/sign-in",
            get(sign_in::form).post(sign_in::sign_in),
        )
        .route("/console/assets/htmx-2.0.4.min.js", get(htmx))
        .route("/console/assets/console.css", get(css))
        .merge(signed_in)
        .layer(axum::middleware::from_fn(headers))
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        HTMX,
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
}

/// Security headers on every console response; a response that set its own
/// policy (the rendered email) keeps it.
async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Which entry of the navigation a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Messages,
    Templates,
    Lists,
    Campaigns,
    Accounts,
    ApiKeys,
    DeadLetters,
    Suppressions,
    Webhooks,
    AuditLog,
    None,
}

/// A whole page: the navigation (admin entries only for admin keys), the
/// sign-out form and `body`.
pub fn layout(session: Option<&Session>, nav: Nav, title: &str, body: Markup) -> Markup {
    let entries: &[(Nav, &str, &str, bool)] = &[
        (Nav::Overview, "/console", "Overview", false),
        (Nav::Messages, "/console/messages", "Messages", false),
        (Nav::Templates, "/console/templates", "Templates", false),
        (Nav::Lists, "/console/lists", "Lists", true),
        (Nav::Campaigns, "/console/campaigns", "Campaigns", true),
        (Nav::Accounts, "/console/accounts", "Accounts", true),
        (Nav::ApiKeys, "/console/api-keys", "API keys", true),
        (
            Nav::DeadLetters,
            "/console/dead-letters",
            "Dead letters",
            true,
        ),
        (
            Nav::Suppressions,
            "/console/suppressions",
            "Suppressions",
            false,
        ),
        (Nav::Webhooks, "/console/webhooks", "Webhooks", false),
        (Nav::AuditLog, "/console/audit-log", "Audit log", true),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No inline indicator styles: the page's policy refuses them.
                meta name="htmx-config" content="{\"includeIndicatorStyles\":false,\"allowEval\":false}";
                title { (title) " · notify console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/htmx-2.0.4.min.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "notify console" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            ul {
                                @for (entry, href, label, admin_only) in entries {
                                    @if !admin_only || session.is_admin() {
                                        li {
                                            a href=(href) aria-current=[(*entry == nav).then_some("page")] { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.sign-out method="post" action="/console/sign-out" {
                            (session.csrf_field())
                            span.who { "key " code { (short_id(&session.key_id.to_string())) } @if session.is_admin() { " (admin)" } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page as an HTML response.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// An error the API returned, in words: its code, message and field.
pub fn error_box(error: &ApiError) -> Markup {
    let detail = error.detail();
    html! {
        div.error role="alert" {
            p {
                strong { (detail.message) }
                @if let Some(field) = &detail.field { " (field: " code { (field) } ")" }
            }
            p.code { "error code: " code { (detail.code) } }
        }
    }
}

/// The HTTP status the API answers `error` with (an internal error is
/// logged here: the page shows only that there was one).
pub fn status_of(error: &ApiError) -> StatusCode {
    match error {
        ApiError::Internal(e) => tracing::error!(error = ?e, "console request failed"),
        ApiError::Unavailable(m) => tracing::warn!(reason = %m, "dependency unavailable"),
        _ => {}
    }
    error.status_and_code().0
}

/// A page that shows only `error` (with the API's status): a 403 shows
/// nothing of the data the page would have had.
pub fn error_page(session: Option<&Session>, nav: Nav, title: &str, error: ApiError) -> Response {
    let body = error_box(&error);
    let forbidden = matches!(error, ApiError::Forbidden(_) | ApiError::Denied { .. });
    let status = status_of(&error);
    let title = if forbidden { "Not allowed" } else { title };
    respond(status, layout(session, nav, title, body))
}

/// The first 8 characters of an id, for tables.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A timestamp as operators read it.
pub fn when(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A flash message carried in the query string after a POST redirect.
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            p.notice role="status" { (text) }
        }
    }
}

/// `<input>` attributes for a field the last attempt got wrong.
pub fn invalid(error: Option<&ApiError>, field: &str) -> Option<&'static str> {
    let detail = error?.detail();
    let named = detail.field.as_deref()?;
    (named == field
        || named.starts_with(&format!("{field}["))
        || named.starts_with(&format!("{field}.")))
    .then_some("true")
}
