//! `templates`: named email templates (subject, HTML and text bodies) with
//! the set of variables a send must supply.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: Option<String>,
    pub variables: Vec<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A template's content, as created or replaced.
#[derive(Debug, Clone)]
pub struct TemplateContent {
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: Option<String>,
    pub variables: Vec<String>,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    content: &TemplateContent,
    created_by: Uuid,
) -> Result<Template, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO templates (id, name, subject, html_body, text_body, variables, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(&content.name)
    .bind(&content.subject)
    .bind(&content.html_body)
    .bind(&content.text_body)
    .bind(&content.variables)
    .bind(created_by)
    .fetch_one(executor)
    .await
}

pub async fn replace(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    content: &TemplateContent,
) -> Result<Option<Template>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE templates SET name = $2, subject = $3, html_body = $4, text_body = $5,
            variables = $6, updated_at = now()
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&content.name)
    .bind(&content.subject)
    .bind(&content.html_body)
    .bind(&content.text_body)
    .bind(&content.variables)
    .fetch_optional(executor)
    .await
}

/// The template `id`, if `owner` may see it: `Some(key)` sees only the
/// templates that key created, `None` (an admin, the scheduler) sees all.
#[tracing::instrument(level = "debug", skip_all, fields(template = %id))]
pub async fn get(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<Template>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM templates WHERE id = $1 AND ($2::uuid IS NULL OR created_by = $2)",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(executor)
    .await
}

/// The template named `name`, if `owner` may see it (as for [`get`]).
#[tracing::instrument(level = "debug", skip_all, fields(template = name))]
pub async fn find_by_name(
    executor: impl PgExecutor<'_>,
    name: &str,
    owner: Option<Uuid>,
) -> Result<Option<Template>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM templates WHERE name = $1 AND ($2::uuid IS NULL OR created_by = $2)",
    )
    .bind(name)
    .bind(owner)
    .fetch_optional(executor)
    .await
}

/// Templates `owner` may see (as for [`get`]) by name, after `after` (a
/// name) when given.
pub async fn list(
    executor: impl PgExecutor<'_>,
    owner: Option<Uuid>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Template>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM templates
         WHERE ($1::uuid IS NULL OR created_by = $1) AND ($2::text IS NULL OR name > $2)
         ORDER BY name LIMIT $3",
    )
    .bind(owner)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Whether a campaign mails this template: changing it then changes what
/// every member of the campaign's lists receives, which only an admin may do.
pub async fn used_by_campaign(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM campaigns WHERE template_id = $1)")
        .bind(id)
        .fetch_one(executor)
        .await
}

pub async fn delete(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Template>, sqlx::Error> {
    sqlx::query_as("DELETE FROM templates WHERE id = $1 RETURNING *")
        .bind(id)
        .fetch_optional(executor)
        .await
}
