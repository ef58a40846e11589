//! SendGrid's Event Webhook: a JSON array of events, signed (when
//! "Signed Event Webhook" is on) with ECDSA P-256 over SHA-256 of the
//! timestamp header's value followed by the raw body; the signature is
//! base64 DER in `X-Twilio-Email-Event-Webhook-Signature`, the key the
//! base64 DER public key SendGrid shows.
//!
//! `bounce` is hard, but a `blocked` one (`type`) soft; `deferred` soft;
//! `dropped` for a `Bounced Address` hard and for a `Spam Reporting
//! Address` a complaint; `spamreport` a complaint. Deliveries, opens,
//! clicks and the rest are ignored.

use std::time::Duration;

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::Value;

use super::{bare_message_id, check_age, notify_id, Event, Events, InboundError, METADATA_KEY};
use crate::bounces::{clip, Feedback, Kind, Original};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// The verification key, as SendGrid shows it (base64 DER SubjectPublicKeyInfo).
pub fn parse_key(base64_der: &str) -> Result<VerifyingKey, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64_der.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    VerifyingKey::from_public_key_der(&der).map_err(|e| format!("not a P-256 public key: {e}"))
}

/// Checks the signature and the timestamp's age.
pub fn verify(
    key: &VerifyingKey,
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    max_age: Duration,
) -> Result<(), InboundError> {
    let (Some(signature), Some(timestamp)) = (signature, timestamp) else {
        return Err(InboundError::Unauthenticated(
            "the signature or timestamp header is missing",
        ));
    };
    let bad = || InboundError::Unauthenticated("the SendGrid signature does not verify");
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| bad())?;
    let signature = Signature::from_der(&der).map_err(|_| bad())?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &signature).map_err(|_| bad())?;
    check_age(timestamp, max_age)
}

pub fn events(body: &[u8]) -> Result<Events, InboundError> {
    let list: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| InboundError::Malformed(format!("not a SendGrid event array: {e}")))?;
    let mut out = Events::default();
    for (i, event) in list.iter().enumerate() {
        let text = |key: &str| event.get(key).and_then(Value::as_str).map(str::to_string);
        let Some(name) = text("event") else {
            return Err(InboundError::Malformed(format!("event {i} has no `event`")));
        };
        let reason = text("reason").or_else(|| text("response"));
        let kind = match name.as_str() {
            "bounce" if text("type").as_deref() == Some("blocked") => Some(Kind::Soft),
            "bounce" => Some(Kind::Hard),
            "deferred" => Some(Kind::Soft),
            "dropped" => match reason.as_deref() {
                Some("Bounced Address") => Some(Kind::Hard),
                Some("Spam Reporting Address") => Some(Kind::Complaint),
                _ => None,
            },
            "spamreport" => Some(Kind::Complaint),
            _ => None,
        };
        let Some(kind) = kind else {
            out.ignored += 1;
            continue;
        };
        let Some(recipient) = text("email") else {
            return Err(InboundError::Malformed(format!("event {i} has no `email`")));
        };
        // Without sg_event_id (older webhooks), the event's own fields.
        let source_ref = text("sg_event_id").unwrap_or_else(|| {
            let at = event
                .get("timestamp")
                .map(Value::to_string)
                .unwrap_or_default();
            format!(
                "{name}/{recipient}/{at}/{}",
                text("sg_message_id").unwrap_or_default()
            )
        });
        out.events.push(Event {
            source_ref,
            original: Original {
                message_id: text("smtp-id").as_deref().and_then(bare_message_id),
                notify_id: notify_id(event.get(METADATA_KEY)),
            },
            feedback: Feedback {
                kind,
                recipient: Some(recipient.trim().to_lowercase()),
                status_code: text("status"),
                diagnostic: reason.map(|r| clip(&r)),
            },
        });
    }
    Ok(out)
}
