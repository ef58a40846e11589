//! One webhook endpoint: its settings, its recent deliveries (status,
//! latency, the start of the response), following them while any is
//! pending, and "send test" (`POST /api/v1/webhooks/{id}/test`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use uuid::Uuid;

use super::accounts::Done;
use super::webhooks::{actions, TITLE};
use super::{
    error_box, error_page, layout, notice, respond, short_id, status_of, when, Nav, Session,
};
use crate::audit::SendActor;
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::routes::webhooks::{self as rest, DeliveryView, PageQuery};
use crate::state::AppState;

/// Deliveries shown, newest first.
const RECENT: i64 = 25;
/// Characters of a response body shown.
const SNIPPET: usize = 200;

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
    Query(done): Query<Done>,
) -> Response {
    let endpoint = match rest::get(
        State(state.clone()),
        session.principal.clone(),
        PathParam(id),
    )
    .await
    {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(&session), Nav::Webhooks, TITLE, e),
    };
    let deliveries = deliveries(&state, &session, id).await;
    let top = notice(match done.done.as_deref() {
        Some("test") => Some("Test event queued: it appears below when it is sent."),
        _ => None,
    });
    let body = html! {
        p { a href="/console/webhooks" { "← All endpoints" } }
        (top)
        dl.facts {
            dt { "URL" } dd { code { (endpoint.url) } }
            dt { "Description" } dd { (endpoint.description) }
            dt { "Events" } dd { (endpoint.event_types.join(", ")) }
            dt { "State" } dd {
                @if endpoint.is_active { "enabled" } @else { "disabled" }
                @if let Some(reason) = &endpoint.disabled_reason { " (" (reason) ")" }
            }
            dt { "Created" } dd { (when(&endpoint.created_at)) }
        }
        div.actions-row {
            form method="post" action={"/console/webhooks/" (id) "/test"} {
                (session.csrf_field())
                button type="submit" #send-test { "Send test event" }
            }
            (actions(&session, id, endpoint.is_active, &endpoint.url))
        }
        h2 { "Recent deliveries" }
        (deliveries)
    };
    respond(
        StatusCode::OK,
        layout(Some(&session), Nav::Webhooks, "Webhook endpoint", body),
    )
}

/// The deliveries fragment alone (polled while one is pending).
pub async fn live(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let fragment = deliveries(&state, &session, id).await;
    respond(StatusCode::OK, fragment)
}

async fn deliveries(state: &AppState, session: &Session, id: Uuid) -> Markup {
    let listed = rest::deliveries(
        State(state.clone()),
        session.principal.clone(),
        PathParam(id),
        QueryParams(PageQuery {
            limit: Some(RECENT),
            cursor: None,
        }),
    )
    .await;
    let rows = match listed {
        Ok(axum::Json(data)) => data.data.items,
        Err(e) => {
            let _ = status_of(&e);
            return html! { div #deliveries { (error_box(&e)) } };
        }
    };
    let pending = rows.iter().any(|d| d.status == "pending");
    html! {
        div #deliveries hx-get=[pending.then(|| format!("/console/webhooks/{id}/deliveries"))]
            hx-trigger=[pending.then_some("every 2s")] hx-swap="outerHTML" {
            @if rows.is_empty() { p { "No delivery yet." } }
            @else {
                table #deliveries-table {
                    thead { tr {
                        th scope="col" { "Created" } th scope="col" { "Event" } th scope="col" { "Status" }
                        th scope="col" .num { "Attempts" } th scope="col" .num { "HTTP" } th scope="col" .num { "Latency" }
                        th scope="col" { "Response" }
                    } }
                    tbody { @for d in &rows { (row(d)) } }
                }
            }
        }
    }
}

fn row(d: &DeliveryView) -> Markup {
    let class = match d.status.as_str() {
        "delivered" => "status sent",
        "failed" => "status failed",
        _ => "status queued",
    };
    let snippet: Option<String> = d
        .last_response
        .as_deref()
        .map(|r| r.chars().take(SNIPPET).collect());
    html! {
        tr data-delivery=(d.id) data-status=(d.status) {
            td { (when(&d.created_at)) }
            td { code { (d.event_type) } @if let Some(m) = d.message_id { br; a href={"/console/messages/" (m)} { small { (short_id(&m.to_string())) } } } }
            td { span class=(class) { (d.status) } @if let Some(at) = d.next_attempt_at { br; small { "next try " (when(&at)) } } }
            td.num { (d.attempts) }
            td.num { (d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())) }
            td.num { @if let Some(ms) = d.last_latency_ms { (ms) " ms" } @else { "—" } }
            td {
                @if let Some(s) = &snippet { code.detail { (s) } }
                @if let Some(e) = &d.last_error { br; small { (e) } }
            }
        }
    }
}

/// `POST /api/v1/webhooks/{id}/test`: a `webhook.test` event for it.
pub async fn test(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Webhooks, TITLE, e),
    };
    match rest::test(State(state), actor, PathParam(id)).await {
        Ok(_) => Redirect::to(&format!("/console/webhooks/{id}?done=test")).into_response(),
        Err(e) => error_page(Some(&session), Nav::Webhooks, TITLE, e),
    }
}
