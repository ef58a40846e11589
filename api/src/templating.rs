//! Email templates: the renderer lives in `platform::templating` (the
//! scheduler renders campaigns with it too); here its errors become 422s.

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

/// Renders with `variables`, which must hold exactly the declared ones.
pub fn render(
    sources: &Sources<'_>,
    declared: &[String],
    variables: &Map<String, Value>,
) -> Result<Rendered, ApiError> {
    platform::templating::render(sources, declared, variables).map_err(api_error)
}
