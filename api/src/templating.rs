//! Email templates: the renderer lives in `platform::templating` (the
//! scheduler renders campaigns with it too); here its errors become 422s.

use platform::db::templates::Template;
pub use platform::templating::{Rendered, Sources, MAX_VARIABLES};
use serde_json::{Map, Value};

use crate::error::ApiError;

fn api_error(e: platform::templating::TemplateError) -> ApiError {
    ApiError::invalid(e.code, e.field, e.message)
}

/// Checks a template's syntax and that it uses only declared variables.
pub fn check(sources: &Sources<'_>, declared: &[String]) -> Result<(), ApiError> {
    platform::templating::check(sources, declared).map_err(api_error)
}

/// Renders a stored template with `variables`, which must hold exactly
/// the ones it declares: what a templated send and `POST .../render` do.
pub fn render(template: &Template, variables: &Map<String, Value>) -> Result<Rendered, ApiError> {
    let sources = Sources {
        subject: &template.subject,
        html: &template.html_body,
        text: template.text_body.as_deref(),
    };
    platform::templating::render(&sources, &template.variables, variables).map_err(api_error)
}
