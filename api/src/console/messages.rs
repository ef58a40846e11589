//! Messages: search with cursor paging (`GET /api/v1/messages`), a
//! message's page with its timeline (`GET /api/v1/messages/{id}/events`),
//! the rendered email in a sandboxed frame, and cancel.

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::{error_box, error_page, invalid, layout, respond, short_id, when, Nav, Session};
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::routes::messages::{self as rest, ListMessagesQuery, MessageView};
use crate::routes::timelines::{self, TimelineQuery};
use crate::state::AppState;

/// The email's own policy: no script, no request anywhere (images only
/// from `data:`), inline styles allowed; framed only by the console.
const BODY_CSP: &str =
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'";

const STATUSES: [&str; 7] = [
    "scheduled",
    "queued",
    "sending",
    "sent",
    "failed",
    "suppressed",
    "cancelled",
];

/// The search form as typed (`datetime-local` values are UTC).
#[derive(Debug, Default, Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    pub recipient: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub campaign_id: String,
    #[serde(default)]
    pub created_after: String,
    #[serde(default)]
    pub created_before: String,
    pub cursor: Option<String>,
}

impl SearchForm {
    fn query(&self) -> Result<ListMessagesQuery, ApiError> {
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(ListMessagesQuery {
            status: text(&self.status),
            recipient: text(&self.recipient),
            created_after: time("created_after", &self.created_after)?,
            created_before: time("created_before", &self.created_before)?,
            campaign_id: text(&self.campaign_id)
                .map(|c| {
                    c.parse().map_err(|_| {
                        ApiError::validation("campaign_id", "campaign_id must be a UUID")
                    })
                })
                .transpose()?,
            limit: Some(50),
            cursor: self.cursor.clone().filter(|c| !c.is_empty()),
        })
    }

    /// This search's query string with another cursor.
    fn with_cursor(&self, cursor: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("recipient", &self.recipient),
            ("status", &self.status),
            ("campaign_id", &self.campaign_id),
            ("created_after", &self.created_after),
            ("created_before", &self.created_before),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("cursor", cursor);
        q.finish()
    }
}

/// A `datetime-local` value (UTC) or RFC 3339.
pub(super) fn time(field: &str, raw: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| {
            ApiError::validation(field, format!("{field} must be a date and time (UTC)"))
        })
}

pub async fn search(
    State(state): State<AppState>,
    session: Session,
    Query(form): Query<SearchForm>,
) -> Response {
    let result = match form.query() {
        Ok(query) => rest::list(
            State(state.clone()),
            session.principal.clone(),
            QueryParams(query),
        )
        .await
        .map(|axum::Json(data)| data.data),
        Err(e) => Err(e),
    };
    let (status, error, page) = match result {
        Ok(page) => (StatusCode::OK, None, Some(page)),
        Err(e) => (super::status_of(&e), Some(e), None),
    };
    let error = error.as_ref();
    let body = html! {
        form.card.search method="get" action="/console/messages" role="search" {
            div.grid {
                p { label for="recipient" { "Recipient" } input #recipient name="recipient" type="text" value=(form.recipient) aria-invalid=[invalid(error, "recipient")]; }
                p {
                    label for="status" { "Status" }
                    select #status name="status" aria-invalid=[invalid(error, "status")] {
                        option value="" { "any" }
                        @for s in STATUSES { option value=(s) selected[form.status == s] { (s) } }
                    }
                }
                p { label for="campaign_id" { "Campaign id" } input #campaign_id name="campaign_id" type="text" value=(form.campaign_id) aria-invalid=[invalid(error, "campaign_id")]; }
                p { label for="created_after" { "Created after (UTC)" } input #created_after name="created_after" type="datetime-local" value=(form.created_after) aria-invalid=[invalid(error, "created_after")]; }
                p { label for="created_before" { "Created before (UTC)" } input #created_before name="created_before" type="datetime-local" value=(form.created_before) aria-invalid=[invalid(error, "created_before")]; }
            }
            p { button type="submit" { "Search" } }
        }
        @if let Some(error) = error { (error_box(error)) }
        @if let Some(page) = page {
            @if page.items.is_empty() { p { "No message matches." } }
            @else {
                table #messages-table {
                    thead { tr { th scope="col" { "Created" } th scope="col" { "To" } th scope="col" { "Subject" } th scope="col" { "Status" } th scope="col" { "Account" } } }
                    tbody {
                        @for m in &page.items {
                            tr {
                                td { a href={"/console/messages/" (m.id)} { (when(&m.created_at)) } }
                                td { (m.to.join(", ")) }
                                td { (m.subject) }
                                td { span class={"status " (m.status)} { (m.status) } }
                                td { (m.account_email.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
                @if let Some(next) = &page.next_cursor {
                    p { a rel="next" href={"/console/messages?" (form.with_cursor(next))} { "Older messages →" } }
                }
            }
        }
    };
    respond(
        status,
        layout(Some(&session), Nav::Messages, "Messages", body),
    )
}

/// The parts of a message's page that change: its status and timeline.
async fn live_parts(
    state: &AppState,
    session: &Session,
    id: Uuid,
) -> Result<(MessageView, Markup), ApiError> {
    let axum::Json(message) = rest::get(
        State(state.clone()),
        session.principal.clone(),
        PathParam(id),
    )
    .await?;
    let message = message.data;
    let axum::Json(events) = timelines::list(
        State(state.clone()),
        session.principal.clone(),
        PathParam(id),
        QueryParams(TimelineQuery {
            limit: Some(100),
            cursor: None,
        }),
    )
    .await?;
    let final_state = matches!(
        message.status.as_str(),
        "sent" | "failed" | "suppressed" | "cancelled"
    );
    let markup = html! {
        div #message-live hx-get=[(!final_state).then(|| format!("/console/messages/{id}/live"))]
            hx-trigger=[(!final_state).then_some("every 2s")] hx-swap="outerHTML" {
            dl.facts {
                dt { "Status" } dd { span #status class={"status " (message.status)} { (message.status) } }
                dt { "Attempts" } dd { (message.attempts) }
                dt { "Account" } dd { (message.account_email.as_deref().unwrap_or("—")) }
                @if let Some(reply) = &message.smtp_response { dt { "SMTP reply" } dd { code { (reply) } } }
                @if let Some(e) = &message.error { dt { "Error" } dd { (e) } }
            }
            h2 { "Timeline" }
            ol.timeline {
                @for e in &events.data.items {
                    li {
                        time datetime=(e.at.to_rfc3339()) { (when(&e.at)) }
                        " " strong { (e.event) } " → " (e.status)
                        @if e.detail.as_object().is_some_and(|o| !o.is_empty()) {
                            br; code.detail { (e.detail.to_string()) }
                        }
                    }
                }
            }
        }
    };
    Ok((message, markup))
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let (message, live) = match live_parts(&state, &session, id).await {
        Ok(parts) => parts,
        Err(e) => return error_page(Some(&session), Nav::Messages, "Message", e),
    };
    let cancellable = matches!(message.status.as_str(), "scheduled" | "queued");
    let body = html! {
        dl.facts {
            dt { "Id" } dd { code { (message.id) } }
            dt { "To" } dd { (message.to.join(", ")) }
            @if !message.cc.is_empty() { dt { "Cc" } dd { (message.cc.join(", ")) } }
            dt { "Subject" } dd { (message.subject) }
            dt { "Created" } dd { (when(&message.created_at)) }
            @if let Some(c) = message.campaign_id { dt { "Campaign" } dd { code { (c) } } }
        }
        @if cancellable {
            form method="post" action={"/console/messages/" (id) "/cancel"} {
                (session.csrf_field())
                button type="submit" { "Cancel this message" }
            }
        }
        (live)
        h2 { "The email" }
        p.hint { "Shown without scripts and without loading anything from elsewhere." }
        iframe.email #email-frame title={"The email: " (message.subject)} sandbox="" referrerpolicy="no-referrer"
            src={"/console/messages/" (id) "/body"} {}
    };
    respond(
        StatusCode::OK,
        layout(
            Some(&session),
            Nav::Messages,
            &format!("Message {}", short_id(&id.to_string())),
            body,
        ),
    )
}

pub async fn live(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    match live_parts(&state, &session, id).await {
        Ok((_, markup)) => respond(StatusCode::OK, markup),
        Err(e) => respond(super::status_of(&e), error_box(&e)),
    }
}

/// The email's HTML as stored, under a policy that runs no script and
/// fetches nothing; the frame showing it is sandboxed as well.
pub async fn body(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    // The same read rule as `GET /api/v1/messages/{id}`.
    let allowed = session
        .principal
        .require_or(crate::auth::Scope::Read, &[crate::auth::Scope::Admin]);
    let found = match allowed {
        Ok(()) => rest::find(&state, id, session.principal.owner_filter()).await,
        Err(e) => Err(e),
    };
    let html = match found {
        Ok(message) => message.html_body,
        Err(e) => return respond(super::status_of(&e), error_box(&e)),
    };
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(BODY_CSP),
    );
    response
}

/// `POST /api/v1/messages/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    match rest::cancel(State(state), session.principal.clone(), PathParam(id)).await {
        Ok(_) => Redirect::to(&format!("/console/messages/{id}")).into_response(),
        Err(e) => error_page(Some(&session), Nav::Messages, "Message", e),
    }
}
