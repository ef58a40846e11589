//! Provider webhooks in: the bounce and complaint events that Amazon SES
//! (through SNS), SendGrid, Postmark and Mailgun post, each read from its
//! documented format and authenticated by its provider's own mechanism,
//! then turned into the same [`Feedback`] the mailbox reader produces.
//!
//! One module per provider; `sns` holds the SNS envelope and its signature
//! (SES publishes through it). Each yields [`Event`]s, one per recipient,
//! with a reference unique at the provider, so a redelivered event is
//! applied once.

pub mod mailgun;
pub mod postmark;
pub mod sendgrid;
pub mod ses;
pub mod sns;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Feedback, Original};

/// The providers, by the name in the route and in `bounces.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Ses,
    SendGrid,
    Postmark,
    Mailgun,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Ses,
        Provider::SendGrid,
        Provider::Postmark,
        Provider::Mailgun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Ses => "ses",
            Provider::SendGrid => "sendgrid",
            Provider::Postmark => "postmark",
            Provider::Mailgun => "mailgun",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

/// One recipient's feedback from one provider event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The provider's event id, with the recipient's index where one event
    /// names several: unique at the provider.
    pub source_ref: String,
    pub original: Original,
    pub feedback: Feedback,
}

/// What a provider's events amount to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Events {
    pub events: Vec<Event>,
    /// Events that are no bounce or complaint (delivered, opened, ...).
    pub ignored: usize,
}

/// Why a webhook request is refused. Authentication failures name what
/// failed, never a key.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The signature does not verify, or the credentials are wrong.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A signed timestamp outside the tolerance: a replay, or a clock off.
    #[error("the signed timestamp is {age} s away from now; at most {max} s is accepted")]
    Stale { age: u64, max: u64 },
    /// An SNS certificate or subscription URL not on an SNS host.
    #[error("{0}")]
    UntrustedUrl(String),
    /// An SNS topic not on the allow-list.
    #[error("topic {0} is not on SES_SNS_TOPIC_ARNS")]
    UnknownTopic(String),
    /// The body is not the provider's format.
    #[error("{0}")]
    Malformed(String),
    /// The SNS signing certificate or the subscription URL could not be
    /// reached: the provider retries.
    #[error("{0}")]
    Unreachable(String),
}

impl InboundError {
    /// The machine-readable code of the HTTP answer.
    pub fn code(&self) -> &'static str {
        match self {
            InboundError::Unauthenticated(_) => "invalid_signature",
            InboundError::Stale { .. } => "stale_timestamp",
            InboundError::UntrustedUrl(_) => "untrusted_certificate_url",
            InboundError::UnknownTopic(_) => "unknown_topic",
            InboundError::Malformed(_) => "invalid_payload",
            InboundError::Unreachable(_) => "provider_unreachable",
        }
    }
}

/// Refuses a signed Unix timestamp further than `max` from now.
pub(crate) fn check_age(timestamp: &str, max: Duration) -> Result<(), InboundError> {
    let signed: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| InboundError::Malformed(format!("timestamp {timestamp:?} is not a number")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let age = now.abs_diff(signed);
    if age > max.as_secs() {
        return Err(InboundError::Stale {
            age,
            max: max.as_secs(),
        });
    }
    Ok(())
}

/// `<id@host>` or `id@host` → `id@host`.
pub(crate) fn bare_message_id(raw: &str) -> Option<String> {
    let id = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty() && id.contains('@')).then(|| id.to_string())
}

/// Our record id given as a tag or variable (`notify_message_id`), which
/// senders can attach where a provider rewrites the Message-ID.
pub(crate) fn notify_id(value: Option<&serde_json::Value>) -> Option<uuid::Uuid> {
    value
        .and_then(|v| v.as_str())
        .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
}

/// The metadata key (Postmark), custom argument (SendGrid) or user
/// variable (Mailgun) a sender may set to our record id.
pub const METADATA_KEY: &str = "notify_message_id";

#[cfg(test)]
mod tests;
