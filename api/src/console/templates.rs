//! Templates: list, create, edit, with a live preview. As the operator
//! types, htmx posts the form to a fragment that renders it through the
//! API's renderer (the checks of a save, then the render of
//! `POST /api/v1/templates/{id}/render`) with the sample variables; the
//! rendered HTML is shown in a sandboxed frame (`sandbox=""`: no script,
//! and the page's own policy, which the frame's `srcdoc` document inherits,
//! lets it load nothing from elsewhere). Which templates a key sees and may
//! change is the REST API's rule: its own, or all with the admin scope.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::accounts::Done;
use super::{
    error_box, error_page, invalid, layout, notice, respond, status_of, when, Nav, Session,
};
use crate::audit::SendActor;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::routes::templates::{self as rest, ListTemplatesQuery, TemplateRequest, TemplateView};
use crate::state::AppState;
use crate::templating;

const TITLE: &str = "Templates";

#[derive(Debug, Default, Deserialize)]
pub struct ListPage {
    pub cursor: Option<String>,
    pub done: Option<String>,
}

/// The editor as typed.
#[derive(Debug, Default, Deserialize)]
pub struct TemplateForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub html_body: String,
    #[serde(default)]
    pub text_body: String,
    /// Declared variable names, separated by commas or spaces.
    #[serde(default)]
    pub variables: String,
    /// Sample values for the preview: a JSON object.
    #[serde(default)]
    pub sample: String,
}

impl TemplateForm {
    fn from_view(t: &TemplateView) -> TemplateForm {
        let sample: Map<String, Value> = t
            .variables
            .iter()
            .map(|v| (v.clone(), Value::String(String::new())))
            .collect();
        TemplateForm {
            name: t.name.clone(),
            subject: t.subject.clone(),
            html_body: t.html_body.clone(),
            text_body: t.text_body.clone().unwrap_or_default(),
            variables: t.variables.join(", "),
            sample: Value::Object(sample).to_string(),
        }
    }

    fn declared(&self) -> Vec<String> {
        self.variables
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn text_body(&self) -> Option<String> {
        Some(self.text_body.clone()).filter(|t| !t.trim().is_empty())
    }

    fn request(&self) -> TemplateRequest {
        TemplateRequest {
            name: self.name.clone(),
            subject: self.subject.clone(),
            html_body: self.html_body.clone(),
            text_body: self.text_body(),
            variables: self.declared(),
        }
    }

    /// The sample values; an empty box gives every declared variable "".
    fn sample(&self) -> Result<Map<String, Value>, ApiError> {
        if self.sample.trim().is_empty() {
            return Ok(self
                .declared()
                .into_iter()
                .map(|v| (v, Value::String(String::new())))
                .collect());
        }
        match serde_json::from_str::<Value>(&self.sample) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ApiError::validation(
                "sample",
                "the sample variables must be a JSON object, e.g. {\"name\": \"Ann\"}",
            )),
            Err(e) => Err(ApiError::validation(
                "sample",
                format!("the sample variables are not valid JSON: {e}"),
            )),
        }
    }
}

fn done_text(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "created" => Some("Template created."),
        "saved" => Some("Template saved."),
        _ => None,
    }
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<ListPage>,
) -> Response {
    let listed = rest::list(
        State(state),
        session.principal.clone(),
        QueryParams(ListTemplatesQuery {
            limit: Some(50),
            cursor: query.cursor.clone().filter(|c| !c.is_empty()),
        }),
    )
    .await;
    let page = match listed {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(&session), Nav::Templates, TITLE, e),
    };
    let body = html! {
        (notice(done_text(query.done.as_deref())))
        p { a.button href="/console/templates/new" { "New template" } }
        @if page.items.is_empty() { p { "No template yet." } }
        @else {
            table #templates-table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Subject" } th scope="col" { "Variables" } th scope="col" { "Updated" } } }
                tbody {
                    @for t in &page.items {
                        tr data-template=(t.name) {
                            td { a href={"/console/templates/" (t.id)} { (t.name) } }
                            td { code { (t.subject) } }
                            td { (t.variables.join(", ")) }
                            td { (when(&t.updated_at)) }
                        }
                    }
                }
            }
            @if let Some(next) = &page.next_cursor {
                p { a rel="next" href={"/console/templates?cursor=" (url_part(next))} { "More templates →" } }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(Some(&session), Nav::Templates, TITLE, body),
    )
}

fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The editor: `id` is the template being edited (none for a new one).
fn editor(
    session: &Session,
    id: Option<Uuid>,
    form: &TemplateForm,
    error: Option<&ApiError>,
    preview: Markup,
) -> Markup {
    let action = match id {
        Some(id) => format!("/console/templates/{id}"),
        None => "/console/templates".to_string(),
    };
    html! {
        p { a href="/console/templates" { "← All templates" } }
        @if let Some(error) = error { (error_box(error)) }
        div.columns {
            form.card #template-form method="post" action=(action)
                hx-post="/console/templates/preview" hx-trigger="input delay:300ms"
                hx-target="#preview" hx-sync="this:replace" {
                (session.csrf_field())
                p { label for="name" { "Name" } input #name name="name" type="text" required maxlength="128" value=(form.name) aria-invalid=[invalid(error, "name")] aria-describedby="name-help"; }
                p.hint #name-help { "Letters, digits, " code { "_ - ." } "; a send names the template by it." }
                p { label for="subject" { "Subject" } input #subject name="subject" type="text" required value=(form.subject) aria-invalid=[invalid(error, "subject")]; }
                p { label for="html_body" { "HTML body (HTML-escaped values)" } textarea #html_body name="html_body" rows="6" required aria-invalid=[invalid(error, "html_body")] { (form.html_body) } }
                p { label for="text_body" { "Text body (optional)" } textarea #text_body name="text_body" rows="3" aria-invalid=[invalid(error, "text_body")] { (form.text_body) } }
                p { label for="variables" { "Variables (names, separated by commas)" } input #variables name="variables" type="text" value=(form.variables) aria-invalid=[invalid(error, "variables")]; }
                p { label for="sample" { "Sample variables for the preview (JSON)" } textarea #sample name="sample" rows="2" aria-describedby="sample-help" { (form.sample) } }
                p.hint #sample-help { "Not saved: only for the preview, e.g. " code { "{\"name\": \"Ann\"}" } "." }
                p { button type="submit" { @if id.is_some() { "Save template" } @else { "Create template" } } }
            }
            section aria-labelledby="preview-title" {
                h2 #preview-title { "Preview" }
                div #preview aria-live="polite" { (preview) }
            }
        }
    }
}

/// The preview of `form`: its rendered subject, HTML (framed) and text, or
/// why it does not render, in words.
async fn preview_of(form: &TemplateForm) -> Markup {
    let rendered = match form.sample() {
        Ok(sample) => {
            templating::preview(
                form.subject.clone(),
                form.html_body.clone(),
                form.text_body(),
                form.declared(),
                sample,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match rendered {
        Ok(r) => html! {
            dl.facts {
                dt { "Subject" } dd #preview-subject { (r.subject) }
            }
            iframe.email #preview-frame title="The rendered email" sandbox="" referrerpolicy="no-referrer" srcdoc=(r.html) {}
            @if let Some(text) = &r.text {
                h3 { "Text part" }
                pre.text-part #preview-text { (text) }
            }
        },
        Err(e) => error_box(&e),
    }
}

pub async fn new(session: Session) -> Response {
    let form = TemplateForm::default();
    let preview = html! { p.hint { "Type a subject and body to see them rendered." } };
    respond(
        StatusCode::OK,
        layout(
            Some(&session),
            Nav::Templates,
            "New template",
            editor(&session, None, &form, None, preview),
        ),
    )
}

/// `POST /api/v1/templates`.
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    Form(form): Form<TemplateForm>,
) -> Response {
    let result = match actor {
        Ok(actor) => rest::create(State(state), actor, JsonBody(form.request()))
            .await
            .map(|(_, axum::Json(data))| data.data.id),
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Redirect::to("/console/templates?done=created").into_response(),
        Err(e) => {
            let preview = preview_of(&form).await;
            respond(
                status_of(&e),
                layout(
                    Some(&session),
                    Nav::Templates,
                    "New template",
                    editor(&session, None, &form, Some(&e), preview),
                ),
            )
        }
    }
}

/// A template's editor, filled from `GET /api/v1/templates/{id}`.
pub async fn edit(
    State(state): State<AppState>,
    session: Session,
    PathParam(id): PathParam<Uuid>,
    Query(done): Query<Done>,
) -> Response {
    let template = match rest::get(State(state), session.principal.clone(), PathParam(id)).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(&session), Nav::Templates, TITLE, e),
    };
    let form = TemplateForm::from_view(&template);
    let preview = preview_of(&form).await;
    let body = html! {
        (notice(done_text(done.done.as_deref())))
        (editor(&session, Some(id), &form, None, preview))
    };
    respond(
        StatusCode::OK,
        layout(
            Some(&session),
            Nav::Templates,
            &format!("Template {}", template.name),
            body,
        ),
    )
}

/// `PUT /api/v1/templates/{id}`.
pub async fn save(
    State(state): State<AppState>,
    session: Session,
    actor: Result<SendActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Form(form): Form<TemplateForm>,
) -> Response {
    let result = match actor {
        Ok(actor) => rest::replace(State(state), actor, PathParam(id), JsonBody(form.request()))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Redirect::to(&format!("/console/templates/{id}?done=saved")).into_response(),
        Err(ApiError::NotFound(what)) => error_page(
            Some(&session),
            Nav::Templates,
            TITLE,
            ApiError::NotFound(what),
        ),
        Err(e) => {
            let preview = preview_of(&form).await;
            respond(
                status_of(&e),
                layout(
                    Some(&session),
                    Nav::Templates,
                    &format!("Template {}", form.name),
                    editor(&session, Some(id), &form, Some(&e), preview),
                ),
            )
        }
    }
}

/// The live preview fragment (htmx). Rendering needs read access to
/// templates, as `POST .../render` does.
pub async fn preview(session: Session, Form(form): Form<TemplateForm>) -> Response {
    if let Err(e) = session.principal.require_read() {
        return respond(status_of(&e), error_box(&e));
    }
    respond(StatusCode::OK, preview_of(&form).await)
}
