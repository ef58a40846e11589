//! Mailing lists (admin, as in the REST API): list and create, a list's
//! members page by page, and an import from CSV pasted into the page. The
//! CSV is parsed here ([`super::csv`]); its valid rows go through
//! `POST /api/v1/lists/{id}/members` (in requests of at most its
//! `MAX_IMPORT`), and the report names every rejected row by its line:
//! those the parser refused and those the API refused.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::list_csv::{self as csv, Rejected};
use super::{
    error_box, error_page, invalid, layout, notice, respond, status_of, when, Nav, Session,
};
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::routes::lists::{self as rest, ListRequest, ListView, MemberInput, MembersQuery};
use crate::state::AppState;

const TITLE: &str = "Lists";
/// Members per page.
const PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ListForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ImportForm {
    #[serde(default)]
    pub csv: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct MembersPage {
    pub after: Option<i64>,
    pub done: Option<String>,
}

/// What an import did, over all its requests.
#[derive(Debug, Default)]
struct Report {
    added: u64,
    updated: u64,
    duplicates: usize,
    rejected: Vec<Rejected>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
) -> Response {
    match admin {
        Ok(admin) => render_index(&state, &session, admin, &ListForm::default(), None).await,
        Err(e) => error_page(Some(&session), Nav::Lists, TITLE, e),
    }
}

async fn render_index(
    state: &AppState,
    session: &Session,
    admin: Admin,
    form: &ListForm,
    error: Option<&ApiError>,
) -> Response {
    let lists = match rest::list(State(state.clone()), admin).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(session), Nav::Lists, TITLE, e),
    };
    let body = html! {
        @if lists.is_empty() { p { "No list yet." } }
        @else {
            table #lists-table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Description" } th.num scope="col" { "Members" } th scope="col" { "Created" } } }
                tbody {
                    @for l in &lists {
                        tr data-list=(l.name) {
                            td { a href={"/console/lists/" (l.id)} { (l.name) } }
                            td { (l.description.as_deref().unwrap_or("")) }
                            td.num { (l.member_count) }
                            td { (when(&l.created_at)) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="new-list" {
            h2 #new-list { "Create a list" }
            @if let Some(error) = error { (error_box(error)) }
            form.card #create-list method="post" action="/console/lists" {
                (session.csrf_field())
                div.grid {
                    p { label for="name" { "Name" } input #name name="name" type="text" required maxlength="200" value=(form.name) aria-invalid=[invalid(error, "name")]; }
                    p { label for="description" { "Description" } input #description name="description" type="text" value=(form.description) aria-invalid=[invalid(error, "description")]; }
                }
                p { button type="submit" { "Create list" } }
            }
        }
    };
    let status = error.map_or(StatusCode::OK, status_of);
    respond(status, layout(Some(session), Nav::Lists, TITLE, body))
}

/// `POST /api/v1/lists`, then the new list's page (to import into it).
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    admin: Result<Admin, ApiError>,
    Form(form): Form<ListForm>,
) -> Response {
    let (actor, admin) = match (actor, admin) {
        (Ok(actor), Ok(admin)) => (actor, admin),
        (Err(e), _) | (_, Err(e)) => return error_page(Some(&session), Nav::Lists, TITLE, e),
    };
    let description = Some(form.description.trim().to_string()).filter(|d| !d.is_empty());
    let request = ListRequest {
        name: form.name.clone(),
        description,
    };
    match rest::create(State(state.clone()), actor, JsonBody(request)).await {
        Ok((_, axum::Json(data))) => {
            Redirect::to(&format!("/console/lists/{}?done=created", data.data.id)).into_response()
        }
        Err(e) => render_index(&state, &session, admin, &form, Some(&e)).await,
    }
}

/// A list's page: its members (paged by member id) and the import form.
pub async fn show(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Query(query): Query<MembersPage>,
) -> Response {
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => return error_page(Some(&session), Nav::Lists, TITLE, e),
    };
    let top = notice(match query.done.as_deref() {
        Some("created") => Some("List created. Import its members below."),
        _ => None,
    });
    render_list(
        &state,
        &session,
        admin,
        id,
        query.after,
        top,
        "",
        StatusCode::OK,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn render_list(
    state: &AppState,
    session: &Session,
    admin: Admin,
    id: Uuid,
    after: Option<i64>,
    top: Markup,
    csv_text: &str,
    status: StatusCode,
) -> Response {
    let list: ListView = match rest::get(State(state.clone()), admin.clone(), PathParam(id)).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(session), Nav::Lists, TITLE, e),
    };
    let members = match rest::members(
        State(state.clone()),
        admin,
        PathParam(id),
        QueryParams(MembersQuery {
            after,
            limit: Some(PAGE),
        }),
    )
    .await
    {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(session), Nav::Lists, TITLE, e),
    };
    let next = (members.len() as i64 == PAGE)
        .then(|| members.last().map(|m| m.id))
        .flatten();
    let limits = csv::LIMITS;
    let body = html! {
        p { a href="/console/lists" { "← All lists" } }
        (top)
        dl.facts {
            dt { "Members" } dd #member-count { (list.member_count) }
            @if let Some(d) = &list.description { dt { "Description" } dd { (d) } }
            dt { "Created" } dd { (when(&list.created_at)) }
        }
        section aria-labelledby="import" {
            h2 #import { "Import members from CSV" }
            form.card #import-csv method="post" action={"/console/lists/" (id) "/import"} {
                (session.csrf_field())
                p {
                    label for="csv" { "CSV (a header row, then one member per row)" }
                    textarea #csv name="csv" rows="10" required maxlength=(limits.max_bytes) aria-describedby="csv-help" { (csv_text) }
                }
                p.hint #csv-help {
                    "The header names an " code { "email" } " column; every other column becomes a template variable of that member, e.g. "
                    code { "email,name" } ". At most " (limits.max_rows) " rows and " (limits.max_bytes / 1024) " KiB per import. "
                    "An address already on the list has its variables replaced."
                }
                p { button type="submit" { "Import" } }
            }
        }
        section aria-labelledby="members" {
            h2 #members { "Members" }
            @if members.is_empty() { p { "No member on this page." } }
            @else {
                table #members-table {
                    thead { tr { th scope="col" { "Address" } th scope="col" { "Variables" } th scope="col" { "Added" } th scope="col" { "Unsubscribed" } } }
                    tbody {
                        @for m in &members {
                            tr {
                                td { (m.address) }
                                td { @if !m.variables.is_empty() { code.detail { (serde_json::Value::Object(m.variables.clone()).to_string()) } } }
                                td { (when(&m.created_at)) }
                                td { @if let Some(at) = m.unsubscribed_at { (when(&at)) } @else { "—" } }
                            }
                        }
                    }
                }
            }
            p {
                @if after.is_some() { a href={"/console/lists/" (id)} { "← First page" } " " }
                @if let Some(next) = next { a rel="next" href={"/console/lists/" (id) "?after=" (next)} { "More members →" } }
            }
        }
    };
    respond(
        status,
        layout(
            Some(session),
            Nav::Lists,
            &format!("List {}", list.name),
            body,
        ),
    )
}

/// Sends the parsed rows through the REST handler, at most `MAX_IMPORT`
/// per request, and maps the rows it refuses back to their lines.
async fn import(
    state: &AppState,
    actor: &AdminActor,
    id: Uuid,
    parsed: csv::Parsed,
) -> Result<Report, ApiError> {
    let mut report = Report {
        rejected: parsed.rejected,
        ..Report::default()
    };
    for chunk in parsed.rows.chunks(rest::MAX_IMPORT) {
        let entries = chunk
            .iter()
            .map(|row| MemberInput {
                address: row.email.clone(),
                variables: row.variables.clone(),
            })
            .collect();
        let axum::Json(answer) = rest::add_members(
            State(state.clone()),
            actor.clone(),
            PathParam(id),
            JsonBody(entries),
        )
        .await?;
        let result = answer.data;
        report.added += result.added;
        report.updated += result.updated;
        report.duplicates += result.duplicates;
        for refused in result.rejected {
            if let Some(row) = chunk.get(refused.index) {
                report.rejected.push(Rejected {
                    line: row.line,
                    value: row.email.clone(),
                    reason: refused.error.message,
                });
            }
        }
    }
    report.rejected.sort_by_key(|r| r.line);
    Ok(report)
}

fn report_box(report: &Report) -> Markup {
    html! {
        section.report #import-report aria-labelledby="report-title" role="status" {
            h2 #report-title { "Import report" }
            p #import-summary {
                (report.added) " added, " (report.updated) " updated, "
                (report.duplicates) " repeated in the file, " (report.rejected.len()) " rejected."
            }
            @if !report.rejected.is_empty() {
                table #rejected-rows {
                    caption { "Rejected rows" }
                    thead { tr { th.num scope="col" { "Line" } th scope="col" { "Value" } th scope="col" { "Reason" } } }
                    tbody {
                        @for r in &report.rejected {
                            tr data-line=(r.line) {
                                td.num { "line " (r.line) }
                                td { code { (r.value) } }
                                td { (r.reason) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Imports the pasted CSV and shows the list with the report on top (the
/// CSV stays in the form when the file as a whole was refused).
pub async fn import_csv(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Form(form): Form<ImportForm>,
) -> Response {
    let (actor, admin) = match (actor, admin) {
        (Ok(actor), Ok(admin)) => (actor, admin),
        (Err(e), _) | (_, Err(e)) => return error_page(Some(&session), Nav::Lists, TITLE, e),
    };
    let outcome = match csv::parse(&form.csv, csv::LIMITS) {
        Ok(parsed) if parsed.rows.is_empty() => Ok(Report {
            rejected: parsed.rejected,
            ..Report::default()
        }),
        Ok(parsed) => import(&state, &actor, id, parsed).await,
        Err(e) => Err(e.into()),
    };
    let (top, kept, status) = match outcome {
        Ok(report) => (report_box(&report), "", StatusCode::OK),
        Err(ApiError::NotFound(what)) => {
            return error_page(Some(&session), Nav::Lists, TITLE, ApiError::NotFound(what))
        }
        Err(e) => (error_box(&e), form.csv.as_str(), status_of(&e)),
    };
    render_list(&state, &session, admin, id, None, top, kept, status).await
}
