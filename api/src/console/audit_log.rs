//! Audit log (admin): who changed what, newest first, filtered by action,
//! actor key and target, paged (`GET /api/v1/admin/audit-log`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::{error_box, error_page, invalid, layout, respond, status_of, when, Nav, Session};
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::routes::audit_log::{self as rest, AuditQuery};
use crate::state::AppState;

const TITLE: &str = "Audit log";

/// The filter form as typed.
#[derive(Debug, Default, Deserialize)]
pub struct FilterForm {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub target: String,
    pub cursor: Option<String>,
}

impl FilterForm {
    fn query(&self) -> Result<AuditQuery, ApiError> {
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(AuditQuery {
            actor: text(&self.actor)
                .map(|a| {
                    a.parse().map_err(|_| {
                        ApiError::validation("actor", "actor must be an API key id (a UUID)")
                    })
                })
                .transpose()?,
            action: text(&self.action),
            target: text(&self.target),
            created_after: None,
            created_before: None,
            limit: Some(50),
            cursor: self.cursor.clone().filter(|c| !c.is_empty()),
        })
    }

    fn with_cursor(&self, cursor: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("action", &self.action),
            ("actor", &self.actor),
            ("target", &self.target),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("cursor", cursor);
        format!("/console/audit-log?{}", q.finish())
    }
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
    Query(form): Query<FilterForm>,
) -> Response {
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => return error_page(Some(&session), Nav::AuditLog, TITLE, e),
    };
    let result = match form.query() {
        Ok(query) => rest::list(State(state), admin, QueryParams(query))
            .await
            .map(|axum::Json(data)| data.data),
        Err(e) => Err(e),
    };
    let (status, page, error) = match result {
        Ok(page) => (StatusCode::OK, Some(page), None),
        Err(e) => (status_of(&e), None, Some(e)),
    };
    let error = error.as_ref();
    let body = html! {
        form.card.search method="get" action="/console/audit-log" role="search" {
            div.grid {
                p { label for="action" { "Action (e.g. suppression.create)" } input #action name="action" type="text" value=(form.action) aria-invalid=[invalid(error, "action")]; }
                p { label for="actor" { "Actor key id" } input #actor name="actor" type="text" value=(form.actor) aria-invalid=[invalid(error, "actor")]; }
                p { label for="target" { "Target id" } input #target name="target" type="text" value=(form.target) aria-invalid=[invalid(error, "target")]; }
            }
            p { button type="submit" { "Filter" } }
        }
        @if let Some(e) = error { (error_box(e)) }
        @if let Some(page) = &page {
            @if page.items.is_empty() { p { "No entry." } }
            @else {
                table #audit-table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Action" } th scope="col" { "Actor key" } th scope="col" { "Target" } th scope="col" { "Details" } th scope="col" { "Client" } } }
                    tbody {
                        @for e in &page.items {
                            tr data-action=(e.action) {
                                td { (when(&e.created_at)) }
                                td { code { (e.action) } }
                                td { @if let Some(k) = e.actor_key_id { code { (k) } } @else { "—" } }
                                td { (e.target_type) br; small { (e.target_id) } }
                                td { code.detail { (e.details) } }
                                td { (e.client_addr.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = &page.next_cursor {
                p { a rel="next" href=(form.with_cursor(cursor)) { "Older →" } }
            }
        }
    };
    respond(status, layout(Some(&session), Nav::AuditLog, TITLE, body))
}
