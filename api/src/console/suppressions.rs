//! Suppressions: addresses that never receive mail. List (search by
//! address, paged), add (address and reason), remove (admin keys only, as
//! the API says: mail then reaches the address again).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    error_box, error_page, invalid, layout, notice, respond, status_of, when, Nav, Session,
};
use crate::audit::{AdminActor, SendActor};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::routes::suppressions::{self as rest, ListSuppressionsQuery, SuppressionRequest};
use crate::state::AppState;

const TITLE: &str = "Suppressions";

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub address: String,
    pub cursor: Option<String>,
    pub done: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AddForm {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize)]
pub struct RemoveForm {
    pub address: String,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<PageQuery>,
) -> Response {
    let top = notice(match query.done.as_deref() {
        Some("added") => Some("Address suppressed: nothing is sent to it any more."),
        Some("removed") => Some("Suppression removed: mail reaches this address again."),
        _ => None,
    });
    render(
        &state,
        &session,
        &query,
        StatusCode::OK,
        top,
        &AddForm::default(),
        None,
    )
    .await
}

/// This search's query string with another cursor.
fn next_href(query: &PageQuery, cursor: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if !query.address.is_empty() {
        q.append_pair("address", &query.address);
    }
    q.append_pair("cursor", cursor);
    format!("/console/suppressions?{}", q.finish())
}

async fn render(
    state: &AppState,
    session: &Session,
    query: &PageQuery,
    status: StatusCode,
    top: Markup,
    form: &AddForm,
    error: Option<&ApiError>,
) -> Response {
    let listed = rest::list(
        State(state.clone()),
        session.principal.clone(),
        QueryParams(ListSuppressionsQuery {
            limit: Some(50),
            cursor: query.cursor.clone().filter(|c| !c.is_empty()),
            address: Some(query.address.clone()),
        }),
    )
    .await;
    let (page, search_error) = match listed {
        Ok(axum::Json(data)) => (Some(data.data), None),
        Err(e @ (ApiError::Forbidden(_) | ApiError::Denied { .. })) => {
            return error_page(Some(session), Nav::Suppressions, TITLE, e)
        }
        Err(e) => (None, Some(e)),
    };
    let status = match &search_error {
        Some(e) if status == StatusCode::OK => status_of(e),
        _ => status,
    };
    let admin = session.is_admin();
    let body = html! {
        (top)
        form.card.search method="get" action="/console/suppressions" role="search" {
            p {
                label for="search-address" { "Address contains" }
                input #search-address name="address" type="text" value=(query.address)
                    aria-invalid=[invalid(search_error.as_ref(), "address")];
            }
            p { button type="submit" { "Search" } }
        }
        @if let Some(e) = &search_error { (error_box(e)) }
        @if let Some(page) = &page {
            @if page.items.is_empty() { p { "No suppressed address" @if !query.address.is_empty() { " matches" } "." } }
            @else {
                table #suppressions-table {
                    thead { tr { th scope="col" { "Address" } th scope="col" { "Reason" } th scope="col" { "Added" } @if admin { th scope="col" { "Actions" } } } }
                    tbody {
                        @for s in &page.items {
                            tr data-address=(s.address) {
                                td { (s.address) }
                                td { (s.reason) }
                                td { (when(&s.created_at)) }
                                @if admin {
                                    td.actions {
                                        form method="post" action="/console/suppressions/remove" {
                                            (session.csrf_field())
                                            input type="hidden" name="address" value=(s.address);
                                            button.danger type="submit" aria-label={"Remove the suppression of " (s.address)} { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = &page.next_cursor {
                p { a rel="next" href=(next_href(query, cursor)) { "Next page →" } }
            }
        }
        section aria-labelledby="add" {
            h2 #add { "Suppress an address" }
            @if let Some(error) = error { (error_box(error)) }
            form.card #add-suppression method="post" action="/console/suppressions" {
                (session.csrf_field())
                div.grid {
                    p { label for="address" { "Address" } input #address name="address" type="email" required value=(form.address) aria-invalid=[invalid(error, "address")]; }
                    p { label for="reason" { "Reason" } input #reason name="reason" type="text" placeholder="unsubscribed" value=(form.reason) aria-invalid=[invalid(error, "reason")]; }
                }
                p { button type="submit" { "Suppress" } }
            }
        }
        @if !admin { p.hint { "Only admin keys remove suppressions; you see the addresses your key added." } }
    };
    respond(
        status,
        layout(Some(session), Nav::Suppressions, TITLE, body),
    )
}

/// `POST /api/v1/suppressions`, from the form.
pub async fn add(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    Form(form): Form<AddForm>,
) -> Response {
    let result = match actor {
        Ok(actor) => rest::create(
            State(state.clone()),
            actor,
            JsonBody(SuppressionRequest {
                address: form.address.trim().to_string(),
                reason: form.reason.trim().to_string(),
            }),
        )
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Redirect::to("/console/suppressions?done=added").into_response(),
        Err(e @ (ApiError::Forbidden(_) | ApiError::Denied { .. })) => {
            error_page(Some(&session), Nav::Suppressions, TITLE, e)
        }
        Err(error) => {
            render(
                &state,
                &session,
                &PageQuery::default(),
                status_of(&error),
                html! {},
                &form,
                Some(&error),
            )
            .await
        }
    }
}

/// `DELETE /api/v1/suppressions/{address}` (admin keys only).
pub async fn remove(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    Form(form): Form<RemoveForm>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Suppressions, TITLE, e),
    };
    match rest::delete(State(state), actor, PathParam(form.address)).await {
        Ok(_) => Redirect::to("/console/suppressions?done=removed").into_response(),
        Err(e) => error_page(Some(&session), Nav::Suppressions, TITLE, e),
    }
}
