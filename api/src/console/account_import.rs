//! Importing SMTP accounts (admin): a pasted JSON array or CSV (a header
//! row naming the API's fields, then one account per row), sent as
//! `POST /api/v1/admin/email-accounts/import`, answered with a report of
//! every row: imported, or rejected and why (in words, with the field).
//! The pasted text holds passwords: no answer puts it back in the page.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{error_box, error_page, layout, respond, status_of, Nav, Session};
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::email_accounts::{self, ImportReport};
use crate::state::AppState;

const TITLE: &str = "Import accounts";

/// CSV columns read as numbers (a cell that is not one is passed on as
/// text, and the API rejects that row naming the field).
const NUMBER_COLUMNS: [&str; 5] = [
    "smtp_port",
    "daily_limit",
    "priority",
    "rate_limit_per_minute",
    "max_connections",
];

/// Never `Debug`: it holds passwords.
#[derive(Default, Deserialize)]
pub struct ImportForm {
    #[serde(default)]
    pub data: String,
}

/// Pasted text as it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The entries of a pasted JSON array or CSV text.
fn entries(text: &str) -> Result<(Format, Vec<Value>), ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::validation(
            "data",
            "paste a JSON array or CSV with a header row",
        ));
    }
    if text.starts_with('[') {
        let entries: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| ApiError::validation("data", format!("data is not a JSON array: {e}")))?;
        return Ok((Format::Json, entries));
    }
    let mut rows = super::csv::records(text)
        .map_err(|e| ApiError::validation("data", format!("data is not CSV: {e}")))?
        .into_iter();
    let header: Vec<String> = rows
        .next()
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut entries = Vec::new();
    for (n, row) in rows.enumerate() {
        if row.len() > header.len() {
            return Err(ApiError::validation(
                "data",
                format!(
                    "CSV row {} has {} cells; the header names {}",
                    n + 1,
                    row.len(),
                    header.len()
                ),
            ));
        }
        let mut entry = Map::new();
        for (name, cell) in header.iter().zip(row) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            let value = match (NUMBER_COLUMNS.contains(&name.as_str()), cell.parse::<i64>()) {
                (true, Ok(n)) => Value::from(n),
                _ if name == "is_active" && matches!(cell, "true" | "false") => {
                    Value::from(cell == "true")
                }
                _ => Value::from(cell),
            };
            entry.insert(name.clone(), value);
        }
        entries.push(Value::Object(entry));
    }
    Ok((Format::Csv, entries))
}

pub async fn form(session: Session, admin: Result<Admin, ApiError>) -> Response {
    if let Err(e) = admin {
        return error_page(Some(&session), Nav::Accounts, TITLE, e);
    }
    render(&session, StatusCode::OK, html! {}, None)
}

fn render(
    session: &Session,
    status: StatusCode,
    top: Markup,
    error: Option<&ApiError>,
) -> Response {
    let body = html! {
        p { a href="/console/accounts" { "← All accounts" } }
        (top)
        @if let Some(error) = error { (error_box(error)) }
        form.card #import-accounts method="post" action="/console/accounts/import" {
            (session.csrf_field())
            p {
                label for="data" { "Accounts (JSON array or CSV)" }
                textarea #data name="data" rows="10" required spellcheck="false" autocomplete="off"
                    aria-describedby="import-hint" aria-invalid=[super::invalid(error, "data")] {}
            }
            div #import-hint .hint {
                p { "CSV: a header row with the API's field names, then one account per row, e.g." }
                pre { code { "email,smtp_host,smtp_port,smtp_password,tls_mode,daily_limit\nsales@example.com,smtp.example.com,587,app-password,starttls,500" } }
                p { "JSON: an array of objects as " code { "POST /api/v1/admin/email-accounts" } " takes them. Each row is checked like a create; the others are imported." }
            }
            p { button type="submit" { "Import" } }
        }
    };
    respond(status, layout(Some(session), Nav::Accounts, TITLE, body))
}

/// The report: every row with what became of it.
fn report(format: Format, entries: &[Value], report: &ImportReport) -> Markup {
    // A CSV row's line in the pasted text (after the header).
    let row_name = |index: usize| match format {
        Format::Json => format!("entry {}", index + 1),
        Format::Csv => format!("row {}", index + 1),
    };
    html! {
        div.notice #import-report role="status" {
            p { strong { (report.imported) " imported, " (report.rejected) " rejected." } }
        }
        table #import-table {
            thead { tr { th scope="col" { "Row" } th scope="col" { "Address" } th scope="col" { "Outcome" } } }
            tbody {
                @for item in &report.results {
                    @let email = entries.get(item.index).and_then(|e| e.get("email")).and_then(Value::as_str).unwrap_or("—");
                    tr data-outcome=(if item.error.is_some() { "rejected" } else { "imported" }) {
                        td { (row_name(item.index)) }
                        td { (email) }
                        td {
                            @if let Some(e) = &item.error {
                                span.status.failed { "rejected" } " " (e.message)
                                @if let Some(field) = &e.field { " (field: " code { (field) } ")" }
                                br; small { "error code: " code { (e.code) } }
                            } @else if let Some(id) = item.id {
                                span.status.sent { "imported" } " " a href={"/console/accounts/" (id) "/edit"} aria-label={"Edit " (email)} { "edit" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /api/v1/admin/email-accounts/import` with the parsed entries.
pub async fn import(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    Form(form): Form<ImportForm>,
) -> Response {
    let actor = match actor {
        Ok(actor) => actor,
        Err(e) => return error_page(Some(&session), Nav::Accounts, TITLE, e),
    };
    let (format, parsed) = match entries(&form.data) {
        Ok(parsed) => parsed,
        Err(error) => return render(&session, status_of(&error), html! {}, Some(&error)),
    };
    // What the report shows of each entry: its address, never the rest.
    let shown: Vec<Value> = parsed
        .iter()
        .map(|e| serde_json::json!({ "email": e.get("email").cloned().unwrap_or(Value::Null) }))
        .collect();
    match email_accounts::import(State(state), actor, JsonBody(parsed)).await {
        Ok(axum::Json(data)) => render(
            &session,
            StatusCode::OK,
            report(format, &shown, &data.data),
            None,
        ),
        Err(error) => render(&session, status_of(&error), html! {}, Some(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_api_entries_with_numbers_and_no_empty_cells() {
        let (format, got) = entries(
            "email,smtp_host,smtp_port,smtp_password,daily_limit\na@example.com,h,587,pw,\nb@example.com,h,x,pw,10\n",
        )
        .unwrap();
        assert_eq!(format, Format::Csv);
        assert_eq!(
            got,
            vec![
                serde_json::json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 587, "smtp_password": "pw"}),
                serde_json::json!({"email": "b@example.com", "smtp_host": "h", "smtp_port": "x", "smtp_password": "pw", "daily_limit": 10}),
            ]
        );
    }

    #[test]
    fn json_must_be_an_array_and_the_field_is_named() {
        assert_eq!(
            entries("[{\"email\": \"a@example.com\"}]").unwrap().0,
            Format::Json
        );
        let e = entries("[{").unwrap_err();
        assert_eq!(e.detail().field.as_deref(), Some("data"));
    }
}
