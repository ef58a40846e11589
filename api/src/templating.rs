//! Email templates: the renderer lives in `platform::templating` (the
//! scheduler renders campaigns with it too); here its errors become 422s.

use platform::db::templates::Template;
pub use platform::templating::{Rendered, Sources, MAX_VARIABLES};
use serde_json::{Map, Value};

use crate::error::ApiError;

fn api_error(e: platform::templating::TemplateError) -> ApiError {
    ApiError::invalid(e.code, e.field, e.message)
}

/// Rendering, bounded by the renderer's limits, may still take tens of
/// milliseconds of CPU: it runs on the blocking pool, never on the async
/// workers that answer every other request.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, platform::templating::TemplateError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template rendering task: {e}")))?
        .map_err(api_error)
}

/// Checks a template's syntax, that it uses only declared variables, and
/// that it stays within the rendering limits with placeholder values.
pub async fn check(
    subject: String,
    html: String,
    text: Option<String>,
    declared: Vec<String>,
) -> Result<(), ApiError> {
    off_runtime(move || {
        let sources = Sources {
            subject: &subject,
            html: &html,
            text: text.as_deref(),
        };
        platform::templating::check(&sources, &declared)
    })
    .await
}

/// Renders a stored template with `variables`, which must hold exactly
/// the ones it declares: what a templated send and `POST .../render` do.
pub async fn render(
    template: Template,
    variables: Map<String, Value>,
) -> Result<Rendered, ApiError> {
    off_runtime(move || {
        let sources = Sources {
            subject: &template.subject,
            html: &template.html_body,
            text: template.text_body.as_deref(),
        };
        platform::templating::render(&sources, &template.variables, &variables)
    })
    .await
}

/// Renders sources that are not saved yet, with `variables`: the checks of
/// a save (syntax, only declared variables, limits), then the render of a
/// send and `POST .../render`. The console's live preview.
pub async fn preview(
    subject: String,
    html: String,
    text: Option<String>,
    declared: Vec<String>,
    variables: Map<String, Value>,
) -> Result<Rendered, ApiError> {
    off_runtime(move || {
        let sources = Sources {
            subject: &subject,
            html: &html,
            text: text.as_deref(),
        };
        platform::templating::check(&sources, &declared)?;
        platform::templating::render(&sources, &declared, &variables)
    })
    .await
}
