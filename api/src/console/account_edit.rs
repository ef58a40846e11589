//! Editing an SMTP account (admin): a form filled with the account as it
//! is, sent as `PATCH /api/v1/admin/email-accounts/{id}` with only the
//! fields that changed. The password field starts empty and is never
//! filled: left empty, the password is unchanged.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use maud::html;

use super::{error_box, error_page, invalid, layout, respond, status_of, Nav, Session};
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::routes::email_accounts::{self, EmailAccountView, UpdateEmailAccount};
use crate::state::AppState;

const TITLE: &str = "Edit account";

/// The form as typed (numbers still text); never `Debug`-logged.
#[derive(Default, Deserialize)]
pub struct EditForm {
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub smtp_host: String,
    #[serde(default)]
    pub smtp_port: String,
    #[serde(default)]
    pub smtp_username: String,
    #[serde(default)]
    pub smtp_password: String,
    #[serde(default)]
    pub tls_mode: String,
    #[serde(default)]
    pub daily_limit: String,
    #[serde(default)]
    pub priority: String,
    #[serde(default)]
    pub rate_limit_per_minute: String,
    #[serde(default)]
    pub max_connections: String,
}

impl EditForm {
    /// The account as it is (no password: the API has none to give).
    fn of(a: &EmailAccountView) -> Self {
        let opt = |n: Option<i32>| n.map(|n| n.to_string()).unwrap_or_default();
        EditForm {
            email: a.email.clone(),
            display_name: a.display_name.clone(),
            smtp_host: a.smtp_host.clone(),
            smtp_port: a.smtp_port.to_string(),
            smtp_username: a.smtp_username.clone(),
            smtp_password: String::new(),
            tls_mode: a.tls_mode.clone(),
            daily_limit: a.daily_limit.to_string(),
            priority: a.priority.to_string(),
            rate_limit_per_minute: opt(a.rate_limit_per_minute),
            max_connections: opt(a.max_connections),
        }
    }
}

/// A whole number typed in `field`, refused naming the field otherwise.
fn number(field: &str, text: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::validation(field, format!("{field} must be a whole number")))
}

/// The API's PATCH body: the fields that differ from `current`. An
/// emptied optional limit is sent as 0 (the API's "no limit").
fn patch(current: &EmailAccountView, form: &EditForm) -> Result<Map<String, Value>, ApiError> {
    let was = EditForm::of(current);
    let mut body = Map::new();
    for (field, now, before) in [
        ("email", &form.email, &was.email),
        ("display_name", &form.display_name, &was.display_name),
        ("smtp_host", &form.smtp_host, &was.smtp_host),
        ("smtp_username", &form.smtp_username, &was.smtp_username),
        ("tls_mode", &form.tls_mode, &was.tls_mode),
    ] {
        if now.trim() != before.as_str() {
            body.insert(field.into(), json!(now.trim()));
        }
    }
    for (field, now, before) in [
        ("smtp_port", &form.smtp_port, &was.smtp_port),
        ("daily_limit", &form.daily_limit, &was.daily_limit),
        ("priority", &form.priority, &was.priority),
    ] {
        if now.trim() != before.as_str() {
            body.insert(field.into(), json!(number(field, now)?));
        }
    }
    for (field, now, before) in [
        (
            "rate_limit_per_minute",
            &form.rate_limit_per_minute,
            &was.rate_limit_per_minute,
        ),
        (
            "max_connections",
            &form.max_connections,
            &was.max_connections,
        ),
    ] {
        if now.trim() != before.as_str() {
            let n = if now.trim().is_empty() {
                0
            } else {
                number(field, now)?
            };
            body.insert(field.into(), json!(n));
        }
    }
    if !form.smtp_password.is_empty() {
        body.insert("smtp_password".into(), json!(form.smtp_password));
    }
    Ok(body)
}

pub async fn form(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    match email_accounts::get(State(state), admin, PathParam(id)).await {
        Ok(axum::Json(data)) => {
            let form = EditForm::of(&data.data);
            render(&session, &data.data, &form, StatusCode::OK, None)
        }
        Err(e) => error_page(Some(&session), Nav::Accounts, TITLE, e),
    }
}

fn render(
    session: &Session,
    account: &EmailAccountView,
    form: &EditForm,
    status: StatusCode,
    error: Option<&ApiError>,
) -> Response {
    let body = html! {
        p { a href="/console/accounts" { "← All accounts" } }
        @if let Some(error) = error { (error_box(error)) }
        form.card #edit-account method="post" action={"/console/accounts/" (account.id) "/edit"} {
            (session.csrf_field())
            div.grid {
                p { label for="email" { "From address" } input #email name="email" type="email" required value=(form.email) aria-invalid=[invalid(error, "email")]; }
                p { label for="display_name" { "Display name" } input #display_name name="display_name" type="text" value=(form.display_name) aria-invalid=[invalid(error, "display_name")]; }
                p { label for="smtp_host" { "SMTP host" } input #smtp_host name="smtp_host" type="text" required value=(form.smtp_host) aria-invalid=[invalid(error, "smtp_host")]; }
                p { label for="smtp_port" { "SMTP port" } input #smtp_port name="smtp_port" type="number" min="1" max="65535" required value=(form.smtp_port) aria-invalid=[invalid(error, "smtp_port")]; }
                p { label for="smtp_username" { "SMTP user name" } input #smtp_username name="smtp_username" type="text" autocomplete="off" value=(form.smtp_username) aria-invalid=[invalid(error, "smtp_username")]; }
                // Never filled, not even after a refused attempt.
                p { label for="smtp_password" { "New SMTP password (empty: unchanged)" } input #smtp_password name="smtp_password" type="password" autocomplete="new-password" aria-invalid=[invalid(error, "smtp_password")]; }
                p {
                    label for="tls_mode" { "TLS" }
                    select #tls_mode name="tls_mode" aria-invalid=[invalid(error, "tls_mode")] {
                        @for (value, label) in [("starttls", "STARTTLS"), ("implicit", "implicit (SMTPS)"), ("none", "none")] {
                            option value=(value) selected[form.tls_mode == value] { (label) }
                        }
                    }
                }
                p { label for="daily_limit" { "Daily limit" } input #daily_limit name="daily_limit" type="number" min="0" required value=(form.daily_limit) aria-invalid=[invalid(error, "daily_limit")]; }
                p { label for="priority" { "Priority (higher first)" } input #priority name="priority" type="number" required value=(form.priority) aria-invalid=[invalid(error, "priority")]; }
                p { label for="rate_limit_per_minute" { "Sends per minute (empty: no limit)" } input #rate_limit_per_minute name="rate_limit_per_minute" type="number" min="0" value=(form.rate_limit_per_minute) aria-invalid=[invalid(error, "rate_limit_per_minute")]; }
                p { label for="max_connections" { "Concurrent connections (empty: no limit)" } input #max_connections name="max_connections" type="number" min="0" value=(form.max_connections) aria-invalid=[invalid(error, "max_connections")]; }
            }
            p { button type="submit" { "Save changes" } }
        }
    };
    let title = format!("Edit account {}", account.email);
    respond(status, layout(Some(session), Nav::Accounts, &title, body))
}

/// `PATCH /api/v1/admin/email-accounts/{id}` with what changed.
pub async fn save(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Form(form): Form<EditForm>,
) -> Response {
    let (actor, admin) = match (actor, admin) {
        (Ok(actor), Ok(admin)) => (actor, admin),
        (Err(e), _) | (_, Err(e)) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    let current = match email_accounts::get(State(state.clone()), admin, PathParam(id)).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    let result = match patch(&current, &form) {
        Ok(body) if body.is_empty() => {
            return Redirect::to("/console/accounts?done=unchanged").into_response()
        }
        Ok(body) => match serde_json::from_value::<UpdateEmailAccount>(Value::Object(body)) {
            Ok(request) => {
                email_accounts::update(State(state), actor, PathParam(id), JsonBody(request))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(crate::extract::invalid_body(e)),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Redirect::to("/console/accounts?done=updated").into_response(),
        Err(e @ ApiError::NotFound(_)) => error_page(Some(&session), Nav::Accounts, TITLE, e),
        Err(error) => render(&session, &current, &form, status_of(&error), Some(&error)),
    }
}
