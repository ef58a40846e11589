//! The OpenAPI document, served at `/openapi.json` and browsable at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::routes;

pub mod events;
pub mod responses;
pub mod schemas;

#[derive(OpenApi)]
#[openapi(
    info(title = "Notification platform API", description = "Transactional email through a pool of SMTP accounts. \
        Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}` with a machine-readable code; \
        data is `{\"data\": ...}`. Authenticated responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` \
        and `X-RateLimit-Reset`; every response carries `x-request-id`.\n\n\
        **Ownership.** Scopes say what a key may do (`send`, `read`, `admin`); ownership says to what. \
        Messages, templates, suppressions and webhook endpoints belong to the key that created them: a key without `admin` \
        sees and changes only its own (another key's is answered 404, or `unknown_template` in a send), \
        and admin keys see and change all. Suppressions hold for every key, whoever added them; removing \
        one takes `admin`. A template that a campaign mails can be changed or deleted only by an admin \
        key (403 `template_used_by_campaign`). Lists, campaigns, accounts, keys, dead letters, periodic \
        tasks and the audit log are admin resources, so a send may name a `campaign_id` only with an \
        admin key (`unknown_campaign` otherwise).\n\n\
        **Sessions.** `/auth/token` returns an access token and a refresh token. Each refresh token \
        works once; presenting a used one revokes every token of that sign-in. A refresh reads scopes \
        from the key and keeps the sign-in's expiry. Failed sign-ins are throttled per client address \
        and per key (429 `too_many_attempts`)."),
    paths(
        routes::health::live, routes::health::ready, routes::health::version, metrics,
        routes::auth::issue_token, routes::auth::refresh,
        routes::email_accounts::create, routes::email_accounts::list, routes::email_accounts::get,
        routes::email_accounts::update, routes::email_accounts::delete,
        routes::dead_letters::list, routes::dead_letters::requeue,
        routes::email_accounts::import, routes::email_accounts::test,
        routes::dkim_keys::create, routes::dkim_keys::list, routes::dkim_keys::get,
        routes::dkim_keys::update, routes::dkim_keys::delete,
        routes::domain_throttles::list, routes::domain_throttles::create,
        routes::domain_throttles::get, routes::domain_throttles::replace,
        routes::domain_throttles::update, routes::domain_throttles::delete,
        routes::messages::send, routes::messages::send_batch, routes::messages::get,
        routes::messages::cancel, routes::messages::list, routes::messages::stats,
        routes::timelines::list,
        routes::templates::create, routes::templates::list, routes::templates::get,
        routes::templates::replace, routes::templates::delete, routes::templates::render,
        routes::suppressions::list, routes::suppressions::create, routes::suppressions::delete,
        routes::api_keys::create, routes::api_keys::list, routes::api_keys::revoke,
        routes::audit_log::list, routes::queues::list,
        routes::lists::create, routes::lists::list, routes::lists::get, routes::lists::delete,
        routes::lists::add_members, routes::lists::members, routes::lists::remove_member,
        routes::campaigns::create, routes::campaigns::list, routes::campaigns::get,
        routes::campaigns::replace, routes::campaigns::delete, routes::campaigns::run,
        routes::campaigns::runs,
        routes::periodic_tasks::create, routes::periodic_tasks::list, routes::periodic_tasks::get,
        routes::periodic_tasks::replace, routes::periodic_tasks::delete,
        routes::webhooks::create, routes::webhooks::list, routes::webhooks::get,
        routes::webhooks::update, routes::webhooks::delete, routes::webhooks::rotate_secret,
        routes::webhooks::deliveries, routes::webhooks::redeliver, routes::webhooks::test,
        routes::unsubscribe::page, routes::unsubscribe::unsubscribe,
        routes::bounces::list, routes::bounces::get_mailbox, routes::bounces::put_mailbox,
        routes::bounces::delete_mailbox, routes::inbound::receive,
    ),
    components(schemas(ErrorBody, events::EmailEvent, events::CampaignRunEvent,
        events::AccountEvent, events::EndpointDisabledEvent, events::WebhookTestEvent)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "API keys for JWTs"),
        (name = "messages", description = "Sending email (single, batch, templated, scheduled, with attachments) and following its delivery"),
        (name = "templates", description = "Email templates (minijinja, HTML auto-escaped)"),
        (name = "webhooks", description = "Signed event webhooks (Standard Webhooks): endpoints, secrets, deliveries"),
        (name = "suppressions", description = "Addresses that never receive mail (removal: admin)"),
        (name = "email-accounts", description = "The SMTP account pool (admin)"),
        (name = "bounces", description = "Bounces and complaints read from the accounts' mailboxes (IMAP) or posted by providers (SES, SendGrid, Postmark, Mailgun: public, each authenticated by its provider's signature or credentials), and each account's IMAP side (admin)"),
        (name = "dkim", description = "DKIM keys of the sending domains (admin)"),
        (name = "domain-throttles", description = "Limits on mail to one recipient domain, held across all workers (admin)"),
        (name = "dead-letters", description = "Tasks the worker gave up on (admin)"),
        (name = "api-keys", description = "API keys (admin)"),
        (name = "audit", description = "The audit log of admin changes (admin)"),
        (name = "campaigns", description = "Mailing lists and scheduled campaigns (admin)"),
        (name = "periodic-tasks", description = "Celery tasks the scheduler publishes on a schedule (admin)"),
        (name = "queues", description = "RabbitMQ queue depths (admin)"),
        (name = "unsubscribe", description = "One-click unsubscribe links (RFC 8058) in campaign mail: public, the signed token is the credential"),
        (name = "health", description = "Liveness, readiness, version, metrics"),
    )
)]
pub struct ApiDoc;

/// The document as served: [`ApiDoc`] and the `webhooks` section (the
/// events the platform posts), which utoipa has no field for.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(root) = doc.as_object_mut() {
        root.insert("webhooks".into(), events::webhooks_section());
    }
    doc
}

/// Prometheus metrics in the text exposition format: HTTP requests by
/// route and status, latencies, accepted messages by kind, outbox depth.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

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
