//! `/api/v1/templates`: email templates (minijinja; HTML auto-escaped).
//! Reading takes the `read` or `send` scope, changing them `send`; every
//! change is in the audit log.
//!
//! A template belongs to the key that created it: other non-admin keys
//! neither see nor use it (404, or `unknown_template` in a send). Admin keys
//! see and change every template, and a template that a campaign mails can
//! be changed or deleted only by an admin key (403 `template_used_by_campaign`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::templates::{self, Template, TemplateContent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::SendActor;
use crate::auth::{Principal, Scope};
use crate::docs::responses::{
    BadJson, BadPage, BadPath, BadPathOrJson, BadQuery, NotFound, ReadAccess, SendAccess,
    TemplateRefused,
};
use crate::error::{on_unique, ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::pagination::{self, Page};
use crate::state::AppState;
use crate::templating::{self, Rendered, MAX_VARIABLES};
use crate::validate;

/// Largest subject or body source, in bytes.
const MAX_SOURCE: usize = 1024 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "welcome", "subject": "Welcome, {{ name }}",
    "html_body": "<p>Hello {{ name }}</p>", "text_body": "Hello {{ name }}", "variables": ["name"]}))]
pub struct TemplateRequest {
    /// Unique; 1 to 128 of `A-Z a-z 0-9 _ - .`
    #[schema(pattern = r"^\s*[A-Za-z0-9_.-]{1,128}\s*$")]
    pub name: String,
    /// Rendered without escaping; must render to one line. At most 4096
    /// characters, no control characters.
    #[schema(
        max_length = 4096,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub subject: String,
    /// Rendered with HTML auto-escaping. Not blank; at most 1 MiB.
    #[schema(pattern = r"\S")]
    pub html_body: String,
    /// Rendered without escaping. At most 1 MiB.
    pub text_body: Option<String>,
    /// The variables a send must supply (at most 100 identifiers, each
    /// declared once); the template may use no others.
    #[serde(default)]
    #[schema(value_type = crate::docs::schemas::VariableNames)]
    pub variables: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: Option<String>,
    pub variables: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        TemplateView {
            id: t.id,
            name: t.name,
            subject: t.subject,
            html_body: t.html_body,
            text_body: t.text_body,
            variables: t.variables,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderRequest {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RenderedView {
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
}

impl From<Rendered> for RenderedView {
    fn from(r: Rendered) -> Self {
        RenderedView {
            subject: r.subject,
            html: r.html,
            text: r.text,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTemplatesQuery {
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

fn duplicate() -> ApiError {
    ApiError::conflict(
        "template_exists",
        "a template with this name already exists",
    )
}

async fn content(req: TemplateRequest) -> Result<TemplateContent, ApiError> {
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(ApiError::validation(
            "name",
            "name must be 1 to 128 of A-Z a-z 0-9 _ - .",
        ));
    }
    for (field, value) in [
        ("subject", Some(&req.subject)),
        ("html_body", Some(&req.html_body)),
        ("text_body", req.text_body.as_ref()),
    ] {
        if value.is_some_and(|v| v.len() > MAX_SOURCE) {
            return Err(ApiError::validation(
                field,
                format!("{field} must be at most {MAX_SOURCE} bytes"),
            ));
        }
    }
    validate::header_text("subject", &req.subject, true, 4096)?;
    if req.html_body.trim().is_empty() {
        return Err(ApiError::validation(
            "html_body",
            "html_body must not be empty",
        ));
    }
    if req.variables.len() > MAX_VARIABLES {
        return Err(ApiError::validation(
            "variables",
            format!("at most {MAX_VARIABLES} variables"),
        ));
    }
    let mut variables = Vec::with_capacity(req.variables.len());
    for (i, v) in req.variables.iter().enumerate() {
        let ident = !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(ApiError::validation(
                format!("variables[{i}]"),
                "a variable name is an identifier: letters, digits and _",
            ));
        }
        if variables.contains(v) {
            return Err(ApiError::validation(
                format!("variables[{i}]"),
                format!("variable {v:?} is declared twice"),
            ));
        }
        variables.push(v.clone());
    }
    templating::check(
        req.subject.clone(),
        req.html_body.clone(),
        req.text_body.clone(),
        variables.clone(),
    )
    .await?;
    Ok(TemplateContent {
        name,
        subject: req.subject,
        html_body: req.html_body,
        text_body: req.text_body,
        variables,
    })
}

/// Checks that `principal` may change the template `id`: 404 when it cannot
/// see it, 403 when a campaign mails it and the caller is not an admin.
/// The row is locked until `tx` ends, so a campaign cannot start using it
/// between this check and the change.
async fn changeable(
    tx: &mut sqlx::PgConnection,
    principal: &Principal,
    id: Uuid,
) -> Result<(), ApiError> {
    let visible: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM templates WHERE id = $1 AND ($2::uuid IS NULL OR created_by = $2)
         FOR UPDATE",
    )
    .bind(id)
    .bind(principal.owner_filter())
    .fetch_optional(&mut *tx)
    .await?;
    if visible.is_none() {
        return Err(ApiError::NotFound("template"));
    }
    if !principal.has(Scope::Admin) && templates::used_by_campaign(&mut *tx, id).await? {
        return Err(ApiError::forbidden_because(
            "template_used_by_campaign",
            "a campaign mails this template; only an admin key may change or delete it",
        ));
    }
    Ok(())
}

fn summary(t: &Template) -> Value {
    json!({"name": t.name, "variables": t.variables})
}

/// Creates a template. Its syntax is checked, and it may use only the
/// variables it declares.
#[utoipa::path(post, path = "/api/v1/templates", tag = "templates", request_body = TemplateRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Data<TemplateView>), SendAccess, BadJson, TemplateRefused))]
pub async fn create(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    JsonBody(req): JsonBody<TemplateRequest>,
) -> Result<(StatusCode, Json<Data<TemplateView>>), ApiError> {
    let content = content(req).await?;
    let mut tx = state.pool.begin().await?;
    let template = templates::insert(&mut *tx, &content, actor.principal.key_id)
        .await
        .map_err(on_unique("templates_name_key", duplicate))?;
    actor
        .commit(
            tx,
            "template.create",
            "template",
            template.id,
            summary(&template),
        )
        .await?;
    Ok((StatusCode::CREATED, Data::new(template.into())))
}

/// Lists templates by name.
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates", security(("bearer" = [])),
    params(ListTemplatesQuery),
    responses((status = 200, body = Data<Page<TemplateView>>), ReadAccess, BadQuery, BadPage))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<ListTemplatesQuery>,
) -> Result<Json<Data<Page<TemplateView>>>, ApiError> {
    principal.require_read()?;
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    let rows = templates::list(
        &state.pool,
        principal.owner_filter(),
        after.as_deref(),
        limit + 1,
    )
    .await?;
    Ok(Data::new(Page::from_rows(rows, limit, |t| {
        pagination::encode(&t.name)
    })))
}

#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "templates", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<TemplateView>), ReadAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<TemplateView>>, ApiError> {
    principal.require_read()?;
    let template = templates::get(&state.pool, id, principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("template"))?;
    Ok(Data::new(template.into()))
}

/// Replaces a template (every field, as for create).
#[utoipa::path(put, path = "/api/v1/templates/{id}", tag = "templates", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = TemplateRequest,
    responses((status = 200, body = Data<TemplateView>), SendAccess, BadPathOrJson, NotFound, TemplateRefused))]
pub async fn replace(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<TemplateRequest>,
) -> Result<Json<Data<TemplateView>>, ApiError> {
    let content = content(req).await?;
    let mut tx = state.pool.begin().await?;
    changeable(&mut tx, &actor.principal, id).await?;
    let template = templates::replace(&mut *tx, id, &content)
        .await
        .map_err(on_unique("templates_name_key", duplicate))?
        .ok_or(ApiError::NotFound("template"))?;
    actor
        .commit(tx, "template.update", "template", id, summary(&template))
        .await?;
    Ok(Data::new(template.into()))
}

#[utoipa::path(delete, path = "/api/v1/templates/{id}", tag = "templates", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), SendAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    SendActor(actor): SendActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    changeable(&mut tx, &actor.principal, id).await?;
    let template = templates::delete(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound("template"))?;
    actor
        .commit(tx, "template.delete", "template", id, summary(&template))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Renders a template with the given variables, as a send would, without sending.
#[utoipa::path(post, path = "/api/v1/templates/{id}/render", tag = "templates", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = RenderRequest,
    responses((status = 200, body = Data<RenderedView>), ReadAccess, BadPathOrJson, NotFound,
        (status = 422, body = ErrorBody, description = "`missing_variable`, `unknown_variable`, `template_render_error`, `template_too_costly`, `template_output_too_large`, `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn render(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<RenderRequest>,
) -> Result<Json<Data<RenderedView>>, ApiError> {
    principal.require_read()?;
    let template = templates::get(&state.pool, id, principal.owner_filter())
        .await?
        .ok_or(ApiError::NotFound("template"))?;
    let rendered = templating::render(template, req.variables).await?;
    Ok(Data::new(rendered.into()))
}
