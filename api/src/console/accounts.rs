//! SMTP accounts (admin): list with health, create, pause/resume, test the
//! connection; editing is [`super::account_edit`], importing
//! [`super::account_import`]. Passwords are write-only: the form sends
//! one, no page shows one (the API's views have none).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    error_box, error_page, invalid, layout, notice, respond, short_id, status_of, when, Nav,
    Session,
};
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::routes::email_accounts::{self, CreateEmailAccount, UpdateEmailAccount};
use crate::state::AppState;

const TITLE: &str = "Accounts";

#[derive(Debug, Default, Deserialize)]
pub struct Done {
    pub done: Option<String>,
}

/// The create form as typed (numbers still text); never `Debug`-logged.
#[derive(Default, Deserialize)]
pub struct AccountForm {
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
}

#[derive(Debug, Deserialize)]
pub struct ActiveForm {
    pub active: bool,
}

fn done_text(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "created" => Some("Account created."),
        "paused" => Some("Account paused: it takes no new sends."),
        "resumed" => Some("Account resumed."),
        "updated" => Some("Account saved."),
        "unchanged" => Some("Nothing changed."),
        _ => None,
    }
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
    Query(done): Query<Done>,
) -> Response {
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    render(
        &state,
        &session,
        admin,
        StatusCode::OK,
        notice(done_text(done.done.as_deref())),
        &AccountForm::default(),
        None,
    )
    .await
}

async fn render(
    state: &AppState,
    session: &Session,
    admin: Admin,
    status: StatusCode,
    top: Markup,
    form: &AccountForm,
    error: Option<&ApiError>,
) -> Response {
    let accounts = match email_accounts::list(State(state.clone()), admin).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(session), Nav::Accounts, TITLE, e),
    };
    let body = html! {
        (top)
        section aria-labelledby="pool" {
            h2 #pool { "Pool" }
            p { a href="/console/accounts/import" { "Import accounts (JSON or CSV)" } }
            @if accounts.is_empty() { p { "No account yet." } }
            @else {
                table #accounts-table {
                    thead { tr {
                        th scope="col" { "Account" } th scope="col" { "Server" } th scope="col" { "Health" }
                        th scope="col" { "Quota today" } th scope="col" { "Last error" } th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for a in &accounts {
                            tr data-account=(a.email) {
                                td { (a.email) br; small { (a.display_name) " · " (short_id(&a.id.to_string())) } }
                                td { code { (a.smtp_host) ":" (a.smtp_port) } br; small { "TLS " (a.tls_mode) " · user " (a.smtp_username) } }
                                td {
                                    span class={"health " (a.health)} { (a.health) }
                                    @if let Some(reason) = &a.paused_reason { br; small { (reason) } }
                                }
                                td {
                                    label.quota {
                                        progress value=(a.daily_sent_count) max=(a.effective_daily_limit.max(1)) {}
                                        " " (a.daily_sent_count) " / " (a.effective_daily_limit)
                                    }
                                }
                                td { @if let Some(e) = &a.last_error { (e) @if let Some(at) = a.last_error_at { br; small { (when(&at)) } } } @else { "—" } }
                                td.actions {
                                    a.button href={"/console/accounts/" (a.id) "/edit"} aria-label={"Edit " (a.email)} { "Edit" }
                                    form method="post" action={"/console/accounts/" (a.id) "/active"} {
                                        (session.csrf_field())
                                        @if a.is_active {
                                            input type="hidden" name="active" value="false";
                                            button type="submit" aria-label={"Pause " (a.email)} { "Pause" }
                                        } @else {
                                            input type="hidden" name="active" value="true";
                                            button type="submit" aria-label={"Resume " (a.email)} { "Resume" }
                                        }
                                    }
                                    form method="post" action={"/console/accounts/" (a.id) "/test"} {
                                        (session.csrf_field())
                                        button type="submit" aria-label={"Test the connection of " (a.email)} { "Test connection" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="add" {
            h2 #add { "Add an account" }
            @if let Some(error) = error { (error_box(error)) }
            form.card #create-account method="post" action="/console/accounts" {
                (session.csrf_field())
                div.grid {
                    p { label for="email" { "From address" } input #email name="email" type="email" required value=(form.email) aria-invalid=[invalid(error, "email")]; }
                    p { label for="display_name" { "Display name" } input #display_name name="display_name" type="text" value=(form.display_name) aria-invalid=[invalid(error, "display_name")]; }
                    p { label for="smtp_host" { "SMTP host" } input #smtp_host name="smtp_host" type="text" required value=(form.smtp_host) aria-invalid=[invalid(error, "smtp_host")]; }
                    p { label for="smtp_port" { "SMTP port" } input #smtp_port name="smtp_port" type="number" min="1" max="65535" required value=(form.smtp_port) aria-invalid=[invalid(error, "smtp_port")]; }
                    p { label for="smtp_username" { "SMTP user name (default: the address)" } input #smtp_username name="smtp_username" type="text" autocomplete="off" value=(form.smtp_username) aria-invalid=[invalid(error, "smtp_username")]; }
                    // Never echoed back, even after a refused attempt.
                    p { label for="smtp_password" { "SMTP password" } input #smtp_password name="smtp_password" type="password" autocomplete="new-password" required aria-invalid=[invalid(error, "smtp_password")]; }
                    p {
                        label for="tls_mode" { "TLS" }
                        select #tls_mode name="tls_mode" {
                            @for (value, label) in [("", "by port (465 implicit, else STARTTLS)"), ("starttls", "STARTTLS"), ("implicit", "implicit (SMTPS)"), ("none", "none")] {
                                option value=(value) selected[form.tls_mode == value] { (label) }
                            }
                        }
                    }
                    p { label for="daily_limit" { "Daily limit (default 500)" } input #daily_limit name="daily_limit" type="number" min="0" value=(form.daily_limit) aria-invalid=[invalid(error, "daily_limit")]; }
                    p { label for="priority" { "Priority (higher first, default 0)" } input #priority name="priority" type="number" value=(form.priority) aria-invalid=[invalid(error, "priority")]; }
                }
                p { button type="submit" { "Add account" } }
            }
        }
    };
    respond(status, layout(Some(session), Nav::Accounts, TITLE, body))
}

/// The form as the API's create body. Numbers that are not numbers are
/// refused naming their field, as the API would.
fn create_body(form: &AccountForm) -> Result<CreateEmailAccount, ApiError> {
    let mut body = Map::new();
    body.insert("email".into(), json!(form.email.trim()));
    body.insert("display_name".into(), json!(form.display_name));
    body.insert("smtp_host".into(), json!(form.smtp_host));
    body.insert("smtp_password".into(), json!(form.smtp_password));
    let port: i64 = form.smtp_port.trim().parse().map_err(|_| {
        ApiError::validation("smtp_port", "smtp_port must be a number from 1 to 65535")
    })?;
    if !(1..=65535).contains(&port) {
        return Err(ApiError::validation(
            "smtp_port",
            "smtp_port must be a number from 1 to 65535",
        ));
    }
    body.insert("smtp_port".into(), json!(port));
    if !form.smtp_username.trim().is_empty() {
        body.insert("smtp_username".into(), json!(form.smtp_username));
    }
    if !form.tls_mode.is_empty() {
        body.insert("tls_mode".into(), json!(form.tls_mode));
    }
    for (field, text) in [
        ("daily_limit", &form.daily_limit),
        ("priority", &form.priority),
    ] {
        if !text.trim().is_empty() {
            let n: i64 = text.trim().parse().map_err(|_| {
                ApiError::validation(field, format!("{field} must be a whole number"))
            })?;
            body.insert(field.into(), json!(n));
        }
    }
    serde_json::from_value(Value::Object(body)).map_err(crate::extract::invalid_body)
}

/// `POST /api/v1/admin/email-accounts`, from the form.
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    admin: Result<Admin, ApiError>,
    Form(form): Form<AccountForm>,
) -> Response {
    let (actor, admin) = match (actor, admin) {
        (Ok(actor), Ok(admin)) => (actor, admin),
        (Err(e), _) | (_, Err(e)) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    let result = match create_body(&form) {
        Ok(body) => email_accounts::create(State(state.clone()), actor, JsonBody(body))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Redirect::to("/console/accounts?done=created").into_response(),
        Err(error) => {
            let status = status_of(&error);
            render(
                &state,
                &session,
                admin,
                status,
                html! {},
                &form,
                Some(&error),
            )
            .await
        }
    }
}

/// Pause or resume: `PATCH /api/v1/admin/email-accounts/{id}` with `is_active`.
pub async fn set_active(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Form(form): Form<ActiveForm>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    let patch: UpdateEmailAccount = match serde_json::from_value(json!({"is_active": form.active}))
    {
        Ok(patch) => patch,
        Err(e) => {
            return error_page(
                Some(&session),
                Nav::Accounts,
                TITLE,
                crate::extract::invalid_body(e),
            )
        }
    };
    match email_accounts::update(State(state), actor, PathParam(id), JsonBody(patch)).await {
        Ok(_) => Redirect::to(if form.active {
            "/console/accounts?done=resumed"
        } else {
            "/console/accounts?done=paused"
        })
        .into_response(),
        Err(e) => error_page(Some(&session), Nav::Accounts, TITLE, e),
    }
}

/// `POST /api/v1/admin/email-accounts/{id}/test`: the outcome on the page.
pub async fn test(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let (actor, admin) = match (actor, admin) {
        (Ok(actor), Ok(admin)) => (actor, admin),
        (Err(e), _) | (_, Err(e)) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    let top = match email_accounts::test(State(state.clone()), actor, PathParam(id)).await {
        Ok(axum::Json(data)) => html! {
            div class={"test-result " (if data.data.ok { "ok" } else { "failed" })} role="status" {
                p { strong { "Connection test of " code { (short_id(&id.to_string())) } ": " (if data.data.ok { "passed" } else { "failed" }) } }
                p { (data.data.message) }
            }
        },
        Err(e) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    render(
        &state,
        &session,
        admin,
        StatusCode::OK,
        top,
        &AccountForm::default(),
        None,
    )
    .await
}
