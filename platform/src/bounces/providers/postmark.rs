//! Postmark's bounce and spam complaint webhooks: one JSON object per
//! request, `RecordType` `Bounce` (its `Type` saying which) or
//! `SpamComplaint`. Postmark does not sign them: the webhook URL carries
//! HTTP basic credentials, checked by the API.
//!
//! Postmark replaces the Message-ID, so a sender sets the metadata key
//! `notify_message_id` to the record id; failing that, the Message-ID or
//! `X-Notify-Message-Id` quoted in the bounce's `Content` (when the
//! webhook includes it) is used.

use serde_json::Value;

use super::{notify_id, Event, Events, InboundError, METADATA_KEY};
use crate::bounces::{clip, original, Feedback, Kind, Original};

/// The bounce types that say the address is dead, and those that say it
/// failed for now; the rest (auto-responders, subscribe requests, ...)
/// are no bounces.
fn kind_of(bounce_type: &str) -> Option<Kind> {
    match bounce_type {
        "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated" => Some(Kind::Hard),
        "SoftBounce" | "Transient" | "DnsError" | "Blocked" | "SMTPApiError" => Some(Kind::Soft),
        "SpamComplaint" | "SpamNotification" => Some(Kind::Complaint),
        _ => None,
    }
}

pub fn events(body: &[u8]) -> Result<Events, InboundError> {
    let event: Value = serde_json::from_slice(body)
        .map_err(|e| InboundError::Malformed(format!("not a Postmark webhook: {e}")))?;
    let text = |key: &str| event.get(key).and_then(Value::as_str).map(str::to_string);
    let record_type = text("RecordType").unwrap_or_default();
    let kind = match record_type.as_str() {
        "Bounce" => text("Type").as_deref().and_then(kind_of),
        "SpamComplaint" => Some(Kind::Complaint),
        "" => return Err(InboundError::Malformed("no `RecordType`".into())),
        // Delivery, Open, Click, SubscriptionChange.
        _ => None,
    };
    let Some(kind) = kind else {
        return Ok(Events {
            events: vec![],
            ignored: 1,
        });
    };
    let id = match event.get("ID") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => return Err(InboundError::Malformed("no `ID`".into())),
    };
    let recipient = text("Email")
        .ok_or_else(|| InboundError::Malformed("no `Email`".into()))?
        .trim()
        .to_lowercase();
    let mut found = Original {
        message_id: None,
        notify_id: notify_id(event.get("Metadata").and_then(|m| m.get(METADATA_KEY))),
    };
    if let Some(content) = text("Content") {
        original::from_quoted_lines(&content, &mut found);
    }
    let diagnostic = text("Details")
        .filter(|d| !d.is_empty())
        .or_else(|| text("Description"))
        .map(|d| clip(&d));
    Ok(Events {
        events: vec![Event {
            // Bounces and complaints share Postmark's bounce ids.
            source_ref: id,
            original: found,
            feedback: Feedback {
                kind,
                recipient: Some(recipient),
                status_code: None,
                diagnostic,
            },
        }],
        ignored: 0,
    })
}

/// Checks the request's `Authorization: Basic` credentials, in constant
/// time (the digests are compared, so neither length shows).
pub fn check_basic_auth(
    authorization: Option<&str>,
    username: &str,
    password: &str,
) -> Result<(), InboundError> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;

    let bad = || InboundError::Unauthenticated("wrong or missing basic credentials");
    let encoded = authorization
        .and_then(|h| {
            h.trim()
                .strip_prefix("Basic ")
                .or_else(|| h.trim().strip_prefix("basic "))
        })
        .ok_or_else(bad)?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let expected = format!("{username}:{password}");
    let same: bool = Sha256::digest(&given)
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    same.then_some(()).ok_or_else(bad)
}
