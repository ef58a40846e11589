//! Webhook endpoints of the signed-in key (admin keys see every key's):
//! list, create (the signing secret shown once, on the answer to the
//! create, like an API key's secret), enable/disable and delete, through
//! `/api/v1/webhooks`. An endpoint's own page is [`super::webhook_page`].

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use platform::webhooks::{ADMIN_EVENT_TYPES, EVENT_TYPES};
use serde::Deserialize;
use uuid::Uuid;

use super::accounts::Done;
use super::{
    error_box, error_page, invalid, layout, notice, respond, status_of, when, Nav, Session,
};
use crate::audit::SendActor;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::routes::webhooks::{self as rest, CreateWebhook, EventType, PageQuery, UpdateWebhook};
use crate::state::AppState;

pub const TITLE: &str = "Webhooks";

/// The create form as sent: its checkboxes repeat `event_types`.
#[derive(Debug, Default)]
pub struct CreateForm {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
}

impl CreateForm {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut form = CreateForm::default();
        for (k, v) in pairs {
            match k.as_str() {
                "url" => form.url = v,
                "description" => form.description = v,
                "event_types" => form.event_types.push(v),
                _ => {}
            }
        }
        form
    }

    fn request(&self) -> Result<CreateWebhook, ApiError> {
        let event_types = self
            .event_types
            .iter()
            .map(|t| {
                serde_json::from_value::<EventType>(serde_json::Value::from(t.as_str())).map_err(
                    |_| ApiError::validation("event_types", format!("{t} is not an event type")),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CreateWebhook {
            url: self.url.clone(),
            event_types,
            description: self.description.clone(),
            is_active: true,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct ActiveForm {
    pub active: bool,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Query(done): Query<Done>,
) -> Response {
    let top = notice(match done.done.as_deref() {
        Some("enabled") => Some("Endpoint enabled."),
        Some("disabled") => Some("Endpoint disabled: it receives nothing until enabled again."),
        Some("deleted") => Some("Endpoint deleted, with its pending deliveries."),
        _ => None,
    });
    let form = CreateForm {
        event_types: vec!["email.sent".into(), "email.failed".into()],
        ..CreateForm::default()
    };
    render(&state, &session, StatusCode::OK, top, &form, None).await
}

async fn render(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    top: Markup,
    form: &CreateForm,
    error: Option<&ApiError>,
) -> Response {
    let listed = rest::list(
        State(state.clone()),
        session.principal.clone(),
        QueryParams(PageQuery {
            limit: Some(100),
            cursor: None,
        }),
    )
    .await;
    let endpoints = match listed {
        Ok(axum::Json(data)) => data.data.items,
        Err(e) => return error_page(Some(session), Nav::Webhooks, TITLE, e),
    };
    let types: Vec<&str> = EVENT_TYPES
        .iter()
        .copied()
        .filter(|t| session.is_admin() || !ADMIN_EVENT_TYPES.contains(t))
        .collect();
    let body = html! {
        (top)
        @if endpoints.is_empty() { p { "No endpoint yet." } }
        @else {
            table #webhooks-table {
                thead { tr { th scope="col" { "Endpoint" } th scope="col" { "Events" } th scope="col" { "State" } th scope="col" { "Created" } th scope="col" { "Actions" } } }
                tbody {
                    @for e in &endpoints {
                        tr data-webhook=(e.id) {
                            td { a href={"/console/webhooks/" (e.id)} { (e.url) } @if !e.description.is_empty() { br; small { (e.description) } } }
                            td { (e.event_types.join(", ")) }
                            td {
                                @if e.is_active { span.health.healthy { "enabled" } } @else { span.health.disabled { "disabled" } }
                                @if let Some(reason) = &e.disabled_reason { br; small { (reason) } }
                                @if let Some(since) = e.failing_since { br; small { "failing since " (when(&since)) } }
                            }
                            td { (when(&e.created_at)) }
                            td.actions { (actions(session, e.id, e.is_active, &e.url)) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="create" {
            h2 #create { "Add an endpoint" }
            @if let Some(error) = error { (error_box(error)) }
            form.card #create-webhook method="post" action="/console/webhooks" {
                (session.csrf_field())
                div.grid {
                    p { label for="url" { "URL (http or https)" } input #url name="url" type="text" inputmode="url" required placeholder="https://hooks.example.com/notify" value=(form.url) aria-invalid=[invalid(error, "url")]; }
                    p { label for="description" { "Description" } input #description name="description" type="text" value=(form.description) aria-invalid=[invalid(error, "description")]; }
                }
                fieldset aria-invalid=[invalid(error, "event_types")] {
                    legend { "Events" }
                    @for t in &types {
                        label { input type="checkbox" name="event_types" value=(t) checked[form.event_types.iter().any(|c| c == t)]; " " (t) }
                    }
                }
                p { button type="submit" { "Add endpoint" } }
            }
        }
    };
    respond(status, layout(Some(session), Nav::Webhooks, TITLE, body))
}

/// Enable/disable and delete buttons of an endpoint (also on its page).
pub fn actions(session: &Session, id: Uuid, active: bool, url: &str) -> Markup {
    html! {
        form method="post" action={"/console/webhooks/" (id) "/active"} {
            (session.csrf_field())
            @if active {
                input type="hidden" name="active" value="false";
                button type="submit" aria-label={"Disable " (url)} { "Disable" }
            } @else {
                input type="hidden" name="active" value="true";
                button type="submit" aria-label={"Enable " (url)} { "Enable" }
            }
        }
        form method="post" action={"/console/webhooks/" (id) "/delete"} {
            (session.csrf_field())
            button.danger type="submit" aria-label={"Delete " (url)} { "Delete" }
        }
    }
}

/// `POST /api/v1/webhooks`; the answer shows the signing secret this once.
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let form = CreateForm::from_pairs(pairs);
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Webhooks, TITLE, e),
    };
    let result = match form.request() {
        Ok(request) => rest::create(State(state.clone()), actor, JsonBody(request)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((_, axum::Json(created))) => {
            let created = created.data;
            let top = html! {
                div.secret role="status" {
                    p { strong { "Endpoint added. Copy its signing secret now: it is not shown again." } }
                    dl.facts {
                        dt { "Endpoint" } dd { a href={"/console/webhooks/" (created.webhook.id)} { (created.webhook.url) } }
                        dt { "Signing secret" } dd { code #new-webhook-secret { (created.secret) } }
                    }
                    p.hint { "Receivers verify each delivery's " code { "webhook-signature" } " with it (Standard Webhooks)." }
                }
            };
            let mut response = render(
                &state,
                &session,
                StatusCode::CREATED,
                top,
                &CreateForm::default(),
                None,
            )
            .await;
            // The secret must not stay in a cache.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => {
            render(
                &state,
                &session,
                status_of(&error),
                html! {},
                &form,
                Some(&error),
            )
            .await
        }
    }
}

/// `PATCH /api/v1/webhooks/{id}` with `is_active`.
pub async fn set_active(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Form(form): Form<ActiveForm>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Webhooks, TITLE, e),
    };
    let patch = UpdateWebhook {
        url: None,
        event_types: None,
        description: None,
        is_active: Some(form.active),
    };
    match rest::update(State(state), actor, PathParam(id), JsonBody(patch)).await {
        Ok(_) => Redirect::to(if form.active {
            "/console/webhooks?done=enabled"
        } else {
            "/console/webhooks?done=disabled"
        })
        .into_response(),
        Err(e) => error_page(Some(&session), Nav::Webhooks, TITLE, e),
    }
}

/// `DELETE /api/v1/webhooks/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Webhooks, TITLE, e),
    };
    match rest::delete(State(state), actor, PathParam(id)).await {
        Ok(_) => Redirect::to("/console/webhooks?done=deleted").into_response(),
        Err(e) => error_page(Some(&session), Nav::Webhooks, TITLE, e),
    }
}
