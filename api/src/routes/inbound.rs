//! `POST /api/v1/webhooks/inbound/{provider}`: bounces and complaints that
//! Amazon SES (through SNS), SendGrid, Postmark and Mailgun post. No bearer
//! token (providers cannot send one): each request is authenticated by its
//! provider's own mechanism (`platform::bounces::providers`), and a
//! provider left unconfigured answers 404 `provider_not_configured`.
//!
//! Each recipient of each event is one report, applied like the mailbox
//! reader's (`platform::db::bounces::apply`, `source` the provider's name)
//! and once however often the provider retries. Events about no message
//! of ours are recorded and answered 200 like the rest: providers retry
//! anything else.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use platform::bounces::providers::{
    mailgun, postmark, sendgrid, ses, sns, Events, InboundError, Provider,
};
use platform::config::{BounceSettings, InboundSettings};
use platform::db::bounces::{Applied, Incoming};
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;

use super::Data;
use crate::error::{ApiError, ErrorBody};
use crate::extract::PathParam;
use crate::state::AppState;

/// Provider payloads are small (SendGrid batches stay well under this).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What a webhook request amounted to.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct InboundReceipt {
    /// Reports in the request: one per recipient of each bounce or complaint.
    pub reports: usize,
    /// Applied now (the message marked, the address suppressed as due).
    pub applied: usize,
    /// Applied before: the provider sent the event again.
    pub duplicates: usize,
    /// About no message of this platform's: recorded, nothing else done.
    pub unmatched: usize,
    /// Events that are no bounce or complaint (deliveries, opens, ...).
    pub ignored: usize,
    /// SNS only: `confirmed` (a SubscriptionConfirmation, confirmed by a GET
    /// on its SubscribeURL) or `unsubscribed` (an UnsubscribeConfirmation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<&'static str>,
}

/// Takes a provider's bounce and complaint events.
///
/// - `ses`: SNS messages (`Notification`, `SubscriptionConfirmation`,
///   `UnsubscribeConfirmation`) from a topic in `SES_SNS_TOPIC_ARNS`, their
///   signature verified with the certificate at `SigningCertURL` (https on
///   `sns.<region>.amazonaws.com`). A subscription is confirmed at once.
/// - `sendgrid`: the Event Webhook's array, signed (ECDSA P-256) under
///   `SENDGRID_WEBHOOK_PUBLIC_KEY`.
/// - `postmark`: Bounce and SpamComplaint webhooks, with the basic
///   credentials `POSTMARK_WEBHOOK_USERNAME`/`POSTMARK_WEBHOOK_PASSWORD`
///   in the webhook URL.
/// - `mailgun`: `failed` and `complained` events, signed (HMAC-SHA256)
///   under `MAILGUN_WEBHOOK_SIGNING_KEY`.
///
/// Signed timestamps older than `INBOUND_WEBHOOK_MAX_AGE_SECONDS` are
/// refused. A message is found by its `X-Notify-Message-Id` or Message-ID,
/// or by the metadata `notify_message_id`.
#[utoipa::path(post, path = "/api/v1/webhooks/inbound/{provider}", tag = "bounces",
    params(("provider" = String, Path, description = "`ses`, `sendgrid`, `postmark` or `mailgun`",
        pattern = "^(ses|sendgrid|postmark|mailgun)$")),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "The provider's payload as it posts it (SNS posts `text/plain`; any content type is read as JSON), at most 1 MiB"),
    responses(
        (status = 200, description = "Taken: every report applied, already applied, or recorded as about no message of ours",
            body = Data<InboundReceipt>),
        (status = 400, description = "`invalid_payload`: not the provider's format; `invalid_path`; `invalid_body`", body = ErrorBody),
        (status = 401, description = "`invalid_signature` (a signature or basic credentials that do not verify, or are missing), \
            `stale_timestamp` (signed longer ago than INBOUND_WEBHOOK_MAX_AGE_SECONDS), \
            `untrusted_certificate_url` (an SNS SigningCertURL or SubscribeURL not https on an SNS host)", body = ErrorBody),
        (status = 403, description = "`unknown_topic`: an SNS topic not in SES_SNS_TOPIC_ARNS", body = ErrorBody),
        (status = 404, description = "`not_found`: no such provider; `provider_not_configured`: the provider's settings are not set", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 1 MiB", body = ErrorBody),
        (status = 503, description = "`service_unavailable`: the SNS signing certificate or SubscribeURL could not be fetched; SNS retries", body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    PathParam(provider): PathParam<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let provider = Provider::parse(&provider).ok_or(ApiError::NotFound("provider"))?;
    let bounces = state
        .settings
        .bounces
        .as_ref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("bounce settings are not loaded")))?;
    let inbound = &bounces.inbound;
    let not_configured = || ApiError::NotOffered {
        code: "provider_not_configured",
        message: format!("{} webhooks are not configured here", provider.as_str()),
    };
    let body = body.map_err(crate::extract::body_rejection)?;
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let events = match provider {
        Provider::Ses => {
            let topics = inbound.ses_topic_arns.as_ref().ok_or_else(not_configured)?;
            match from_sns(&state, topics, &body).await? {
                FromSns::Events(events) => events,
                FromSns::Subscription(what) => {
                    return Ok(Data::new(InboundReceipt {
                        subscription: Some(what),
                        ..Default::default()
                    })
                    .into_response())
                }
            }
        }
        Provider::SendGrid => {
            let key = inbound.sendgrid_key.as_ref().ok_or_else(not_configured)?;
            sendgrid::verify(
                key,
                header(sendgrid::SIGNATURE_HEADER),
                header(sendgrid::TIMESTAMP_HEADER),
                &body,
                inbound.max_age,
            )?;
            sendgrid::events(&body)?
        }
        Provider::Postmark => {
            let (user, password) = inbound.postmark.as_ref().ok_or_else(not_configured)?;
            if let Err(e) = postmark::check_basic_auth(
                header(AUTHORIZATION.as_str()),
                user,
                password.expose_secret(),
            ) {
                return Ok(basic_challenge(e));
            }
            postmark::events(&body)?
        }
        Provider::Mailgun => {
            let key = inbound.mailgun_key.as_ref().ok_or_else(not_configured)?;
            let webhook = mailgun::Webhook::parse(&body)?;
            webhook.verify(key.expose_secret().as_bytes(), inbound.max_age)?;
            webhook.events()?
        }
    };
    let receipt = apply(&state, bounces, provider, events).await?;
    Ok(Data::new(receipt).into_response())
}

/// A 401 that asks for basic credentials, as Postmark's URL carries them.
fn basic_challenge(e: InboundError) -> Response {
    let mut response = ApiError::from(e).into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"postmark\""),
    );
    response
}

enum FromSns {
    Events(Events),
    Subscription(&'static str),
}

/// Verifies an SNS message from an allowed topic; confirms a subscription
/// (the message is Amazon's and the topic ours, so confirming is what the
/// operator asked for by subscribing), or reads the SES notification.
async fn from_sns(state: &AppState, topics: &[String], body: &[u8]) -> Result<FromSns, ApiError> {
    let envelope = sns::Envelope::parse(body)?;
    if !topics.contains(&envelope.topic_arn) {
        return Err(InboundError::UnknownTopic(envelope.topic_arn).into());
    }
    state.sns.verify(&envelope).await?;
    match envelope.kind.as_str() {
        "SubscriptionConfirmation" => {
            state.sns.confirm(&envelope).await?;
            tracing::info!(topic = %envelope.topic_arn, "SNS subscription confirmed");
            Ok(FromSns::Subscription("confirmed"))
        }
        "UnsubscribeConfirmation" => {
            tracing::warn!(topic = %envelope.topic_arn,
                "SNS subscription ended: SES notifications from this topic stop");
            Ok(FromSns::Subscription("unsubscribed"))
        }
        _ => Ok(FromSns::Events(ses::events(
            &envelope.message,
            &envelope.message_id,
        )?)),
    }
}

/// Applies each report, then checks the rates of the accounts that sent
/// the messages.
async fn apply(
    state: &AppState,
    bounces: &BounceSettings,
    provider: Provider,
    events: Events,
) -> Result<InboundReceipt, ApiError> {
    let source = provider.as_str();
    let mut receipt = InboundReceipt {
        reports: events.events.len(),
        ignored: events.ignored,
        ..Default::default()
    };
    let mut accounts = BTreeSet::new();
    for event in &events.events {
        let incoming = Incoming {
            source,
            source_ref: event.source_ref.clone(),
            account_id: None,
            record_id: event.original.record_id(),
            feedback: &event.feedback,
        };
        let applied = platform::db::bounces::apply(&state.pool, &incoming, bounces.soft).await?;
        match &applied {
            Applied::Applied {
                account_id,
                suppressed,
                ..
            } => {
                receipt.applied += 1;
                accounts.extend(*account_id);
                let kind = event.feedback.kind.as_str();
                metrics::counter!("bounces_total", "kind" => kind, "source" => source).increment(1);
                if suppressed.is_some() {
                    metrics::counter!("bounce_suppressions_total", "kind" => kind).increment(1);
                }
            }
            Applied::Duplicate => receipt.duplicates += 1,
            Applied::Unmatched => receipt.unmatched += 1,
        }
        tracing::debug!(provider = source, source_ref = %event.source_ref, ?applied, "provider report");
    }
    for (outcome, n) in [
        ("applied", receipt.applied),
        ("unmatched", receipt.unmatched),
        ("ignored", receipt.ignored),
    ] {
        if n > 0 {
            metrics::counter!("bounce_reports_total", "outcome" => outcome).increment(n as u64);
        }
    }
    let today = platform::today(state.settings.settings());
    for account in accounts {
        if let Some(reason) =
            platform::db::bounces::pause_if_over(&state.pool, account, today, bounces.pause).await?
        {
            metrics::counter!("accounts_auto_paused_total").increment(1);
            tracing::warn!(%account, %reason, "account paused for its bounce or complaint rate");
        }
    }
    Ok(receipt)
}

/// The SNS certificate cache, as the settings allow its URLs.
pub fn certificates(inbound: Option<&InboundSettings>) -> anyhow::Result<sns::Certificates> {
    let allow_loopback = inbound.is_some_and(|i| i.allow_loopback);
    Ok(sns::Certificates::new(allow_loopback)?)
}
