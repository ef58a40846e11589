//! API keys (admin): list, mint (the secret shown once, on the answer to
//! the mint, and never again), revoke.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::accounts::Done;
use super::{
    error_box, error_page, invalid, layout, notice, respond, short_id, status_of, when, Nav,
    Session,
};
use crate::audit::AdminActor;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::routes::api_keys::{self, CreateApiKey};
use crate::state::AppState;

const TITLE: &str = "API keys";

#[derive(Debug, Default, Deserialize)]
pub struct MintForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub scope_send: Option<String>,
    #[serde(default)]
    pub scope_read: Option<String>,
    #[serde(default)]
    pub scope_admin: Option<String>,
    #[serde(default)]
    pub rate_limit_per_minute: String,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    Query(done): Query<Done>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::ApiKeys, TITLE, e),
    };
    let top = notice(match done.done.as_deref() {
        Some("revoked") => Some("Key revoked: its tokens and console sessions stopped working."),
        _ => None,
    });
    render(
        &state,
        &session,
        actor,
        StatusCode::OK,
        top,
        &MintForm::default(),
        None,
    )
    .await
}

async fn render(
    state: &AppState,
    session: &Session,
    actor: AdminActor,
    status: StatusCode,
    top: Markup,
    form: &MintForm,
    error: Option<&ApiError>,
) -> Response {
    let keys = match api_keys::list(State(state.clone()), actor).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(session), Nav::ApiKeys, TITLE, e),
    };
    let body = html! {
        (top)
        table #keys-table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Scopes" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "State" } th scope="col" { "Actions" } } }
            tbody {
                @for k in &keys {
                    tr data-key=(k.id) {
                        td { (k.name) @if !k.description.is_empty() { br; small { (k.description) } } }
                        td { code { (k.key_prefix) "…" } }
                        td { (k.scopes.join(", ")) }
                        td { (when(&k.created_at)) }
                        td { @if let Some(at) = k.last_used_at { (when(&at)) } @else { "never" } }
                        td { @if let Some(at) = k.revoked_at { "revoked " (when(&at)) } @else if k.is_active { "active" } @else { "inactive" } }
                        td.actions {
                            @if k.revoked_at.is_none() {
                                form method="post" action={"/console/api-keys/" (k.id) "/revoke"} {
                                    (session.csrf_field())
                                    button.danger type="submit" aria-label={"Revoke key " (k.name) " " (short_id(&k.id.to_string()))} { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="mint" {
            h2 #mint { "Mint a key" }
            @if let Some(error) = error { (error_box(error)) }
            form.card #mint-key method="post" action="/console/api-keys" {
                (session.csrf_field())
                div.grid {
                    p { label for="name" { "Name" } input #name name="name" type="text" required value=(form.name) aria-invalid=[invalid(error, "name")]; }
                    p { label for="description" { "Description" } input #description name="description" type="text" value=(form.description) aria-invalid=[invalid(error, "description")]; }
                    p { label for="rate_limit_per_minute" { "Requests per minute (default: the platform's)" } input #rate_limit_per_minute name="rate_limit_per_minute" type="number" min="1" value=(form.rate_limit_per_minute) aria-invalid=[invalid(error, "rate_limit_per_minute")]; }
                }
                fieldset aria-invalid=[invalid(error, "scopes")] {
                    legend { "Scopes" }
                    label { input type="checkbox" name="scope_send" value="on" checked[form.scope_send.is_some()]; " send" }
                    label { input type="checkbox" name="scope_read" value="on" checked[form.scope_read.is_some()]; " read" }
                    label { input type="checkbox" name="scope_admin" value="on" checked[form.scope_admin.is_some()]; " admin" }
                }
                p { button type="submit" { "Mint key" } }
            }
        }
    };
    respond(status, layout(Some(session), Nav::ApiKeys, TITLE, body))
}

/// `POST /api/v1/admin/api-keys`; the answer shows the secret this once.
pub async fn mint(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    Form(form): Form<MintForm>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::ApiKeys, TITLE, e),
    };
    let scopes: Vec<String> = [
        ("send", form.scope_send.is_some()),
        ("read", form.scope_read.is_some()),
        ("admin", form.scope_admin.is_some()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(s, _)| s.to_string())
    .collect();
    let rate = form.rate_limit_per_minute.trim();
    let rate_limit_per_minute = if rate.is_empty() {
        None
    } else {
        match rate.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let error = ApiError::validation(
                    "rate_limit_per_minute",
                    "rate_limit_per_minute must be a whole number",
                );
                return render(
                    &state,
                    &session,
                    actor,
                    status_of(&error),
                    html! {},
                    &form,
                    Some(&error),
                )
                .await;
            }
        }
    };
    let request = CreateApiKey {
        name: form.name.clone(),
        description: form.description.clone(),
        scopes,
        rate_limit_per_minute,
    };
    match api_keys::create(State(state.clone()), actor.clone(), JsonBody(request)).await {
        Ok((_, axum::Json(created))) => {
            let created = created.data;
            let top = html! {
                div.secret role="status" {
                    p { strong { "Key “" (created.key.name) "” minted. Copy the secret now: it is not shown again." } }
                    dl.facts {
                        dt { "API key" } dd { code #new-api-key { (created.api_key) } }
                        dt { "API secret" } dd { code #new-api-secret { (created.api_secret) } }
                    }
                }
            };
            let mut response = render(
                &state,
                &session,
                actor,
                StatusCode::CREATED,
                top,
                &MintForm::default(),
                None,
            )
            .await;
            // The secret must not stay in a cache.
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(error) => {
            render(
                &state,
                &session,
                actor,
                status_of(&error),
                html! {},
                &form,
                Some(&error),
            )
            .await
        }
    }
}

/// `DELETE /api/v1/admin/api-keys/{id}`: its tokens, and so the console
/// sessions holding them, stop working at once.
pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::ApiKeys, TITLE, e),
    };
    match api_keys::revoke(State(state), actor, PathParam(id)).await {
        Ok(_) => Redirect::to("/console/api-keys?done=revoked").into_response(),
        Err(e) => error_page(Some(&session), Nav::ApiKeys, TITLE, e),
    }
}
