//! The error responses many routes document alike, each written once.
//!
//! A route lists in `responses(...)`, after its success response, the sets
//! that apply to it: its access ([`AdminAccess`], [`SendAccess`] or
//! [`ReadAccess`]: what the bearer-token check answers), what its path,
//! query and body extractors refuse ([`BadPath`], [`BadQuery`],
//! [`BadJson`] and their combinations), [`NotFound`] and [`BadPage`]; then
//! its own errors. Every error response has the [`ErrorBody`] schema.

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};

use crate::error::ErrorBody;

type Responses = BTreeMap<String, RefOr<Response>>;

/// Error responses, by status, each with its description (the codes it
/// may carry, in backticks).
fn errors(list: &[(&str, &str)]) -> Responses {
    let schema = Ref::from_schema_name(ErrorBody::name());
    list.iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(schema.clone())).build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// What a route behind a bearer token answers before its handler runs:
/// no usable token (401), a key without the scope (403, described by
/// `forbidden`), or a key whose rate limit is spent (429).
fn access(forbidden: &str) -> Responses {
    errors(&[
        (
            "401",
            "`missing_token`, `invalid_token`, `token_expired`, `key_revoked`",
        ),
        ("403", forbidden),
        ("429", "`rate_limited`, with Retry-After"),
    ])
}

/// What [`JsonBody`](crate::extract::JsonBody) refuses before the route
/// sees the body, with `bad_request` describing the 400. (Its 422s,
/// `invalid_body` and `invalid_text`, each route lists with its own.)
fn json_body(bad_request: &str) -> Responses {
    errors(&[
        ("400", bad_request),
        ("413", "`payload_too_large`"),
        ("415", "`unsupported_media_type`"),
    ])
}

/// Declares each set: a unit struct whose responses are the expression.
macro_rules! response_sets {
    ($($(#[$doc:meta])* $name:ident => $responses:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> Responses {
                $responses
            }
        }
    )*};
}

response_sets! {
    /// A route for admin keys ([`Admin`](crate::auth::Admin),
    /// [`AdminActor`](crate::audit::AdminActor)): 401, 403, 429.
    AdminAccess => access("`insufficient_scope`: not an admin key");
    /// A route for keys with the `send` scope: 401, 403, 429.
    SendAccess => access("`insufficient_scope`: key lacks `send`");
    /// A route for keys with the `read` scope (or one that reading allows
    /// too): 401, 403, 429.
    ReadAccess => access("`insufficient_scope`: key lacks `read`");
    /// A route with a [`PathParam`](crate::extract::PathParam): 400.
    BadPath => errors(&[("400", "`invalid_path`")]);
    /// A route with [`QueryParams`](crate::extract::QueryParams): 400.
    BadQuery => errors(&[(
        "400",
        "`invalid_query`: an unknown parameter or a malformed value",
    )]);
    /// A route with a path and query parameters: 400.
    BadPathOrQuery => errors(&[("400", "`invalid_path`, `invalid_query`")]);
    /// A route with a [`JsonBody`](crate::extract::JsonBody): 400, 413, 415.
    BadJson => json_body("`invalid_json`");
    /// A route with a path parameter and a JSON body: 400, 413, 415.
    BadPathOrJson => json_body("`invalid_json`, `invalid_path`");
    /// A route about one thing, which may not exist: 404.
    NotFound => errors(&[("404", "`not_found`")]);
    /// A route paginated with `limit` and `cursor` (see
    /// [`pagination`](crate::pagination)): 422.
    BadPage => errors(&[("422", "`invalid_limit`, `invalid_cursor`")]);
}

// What a resource's create and replace (or update) refuse alike.
response_sets! {
    /// A body whose fields fail validation: 422.
    InvalidFields => errors(&[(
        "422",
        "`validation_error`, `invalid_body`, `invalid_text` (NUL in text)",
    )]);
    /// An email account whose address another account has: 409.
    AccountExists => errors(&[("409", "`account_exists`")]);
    /// A campaign's settings refused: 422.
    CampaignRefused => errors(&[(
        "422",
        "`invalid_cron` (field `cron`), `invalid_time_zone` (field `time_zone`), `unknown_template`, `unknown_list`, `validation_error` (with `field`), `invalid_body`, `invalid_text` (NUL in text)",
    )]);
    /// A periodic task refused: its name taken (409) or its settings (422).
    PeriodicTaskRefused => errors(&[
        ("409", "`periodic_task_exists`"),
        (
            "422",
            "`invalid_cron` (field `cron`), `invalid_time_zone` (field `time_zone`), `unknown_queue`, `validation_error` (with `field`), `invalid_body`, `invalid_text` (NUL in text)",
        ),
    ]);
    /// A template refused: its name taken (409) or its content (422).
    TemplateRefused => errors(&[
        ("409", "`template_exists`"),
        (
            "422",
            "`validation_error`, `template_syntax_error`, `undeclared_variable`, `template_too_costly` or `template_output_too_large` (a rendering limit met with placeholder values), `invalid_body`, `invalid_text` (NUL in text)",
        ),
    ]);
}
