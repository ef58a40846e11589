//! The OpenAPI document, served at `/openapi.json` and browsable at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Notification platform API", description = "Transactional email through a pool of SMTP accounts. \
        Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}` with a machine-readable code."),
    paths(
        routes::health::live, routes::health::ready, routes::health::version,
        routes::auth::issue_token, routes::auth::refresh,
        routes::email_accounts::create, routes::email_accounts::list, routes::email_accounts::get,
        routes::email_accounts::update, routes::email_accounts::delete,
        routes::messages::send, routes::messages::get,
        routes::dead_letters::list, routes::dead_letters::requeue,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "API keys for JWTs"),
        (name = "messages", description = "Sending email and following its delivery"),
        (name = "email-accounts", description = "The SMTP account pool (admin)"),
        (name = "dead-letters", description = "Tasks the worker gave up on (admin)"),
        (name = "health", description = "Liveness, readiness, version"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
