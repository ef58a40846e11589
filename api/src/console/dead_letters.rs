//! Dead letters (admin): what the worker gave up on, newest first, and
//! requeueing (`POST /api/v1/admin/dead-letters/{id}/requeue`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{error_page, layout, notice, respond, when, Nav, Session};
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::PathParam;
use crate::routes::dead_letters::{self, ListQuery};
use crate::state::AppState;

const TITLE: &str = "Dead letters";

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub before: Option<i64>,
    pub done: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
    Query(query): Query<PageQuery>,
) -> Response {
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => return error_page(Some(&session), Nav::DeadLetters, TITLE, e),
    };
    let limit = 50;
    let listed = dead_letters::list(
        State(state),
        admin,
        Ok(Query(ListQuery {
            limit: Some(limit),
            before: query.before,
        })),
    )
    .await;
    let rows = match listed {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(&session), Nav::DeadLetters, TITLE, e),
    };
    let body = html! {
        (notice(match query.done.as_deref() { Some("requeued") => Some("Requeued: the task is published again with its retries reset."), _ => None }))
        @if rows.is_empty() { p { "No dead letter." } }
        @else {
            table #dead-letters-table {
                thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Task" } th scope="col" { "Message" } th scope="col" { "Reason" } th scope="col" { "Retries" } th scope="col" { "Actions" } } }
                tbody {
                    @for d in &rows {
                        tr data-dead-letter=(d.id) {
                            td { (d.id) }
                            td { (when(&d.created_at)) }
                            td { code { (d.task_name.as_deref().unwrap_or("?")) } br; small { (d.task_id.as_deref().unwrap_or("")) } }
                            td { @if let Some(m) = d.message_id { a href={"/console/messages/" (m)} { code { (super::short_id(&m.to_string())) } } } @else { "—" } }
                            td { (d.reason) }
                            td { (d.retries.map(|r| r.to_string()).unwrap_or_default()) }
                            td.actions {
                                @if let Some(at) = d.requeued_at { "requeued " (when(&at)) }
                                @else {
                                    form method="post" action={"/console/dead-letters/" (d.id) "/requeue"} {
                                        (session.csrf_field())
                                        button type="submit" aria-label={"Requeue dead letter " (d.id)} { "Requeue" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if rows.len() as i64 == limit {
                @if let Some(last) = rows.last() {
                    p { a rel="next" href={"/console/dead-letters?before=" (last.id)} { "Older →" } }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(Some(&session), Nav::DeadLetters, TITLE, body),
    )
}

pub async fn requeue(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    PathParam(id): PathParam<i64>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::DeadLetters, TITLE, e),
    };
    match dead_letters::requeue(State(state), actor, PathParam(id)).await {
        Ok(_) => Redirect::to("/console/dead-letters?done=requeued").into_response(),
        Err(e) => error_page(Some(&session), Nav::DeadLetters, TITLE, e),
    }
}
