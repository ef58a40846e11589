//! Mailgun's webhooks: `{"signature": {"timestamp", "token", "signature"},
//! "event-data": {...}}`, the signature the hex HMAC-SHA256 of timestamp
//! and token under the webhook signing key. `failed` with severity
//! `permanent` is hard, `temporary` soft; `complained` a complaint.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::{bare_message_id, check_age, notify_id, Event, Events, InboundError, METADATA_KEY};
use crate::bounces::{clip, Feedback, Kind, Original};

#[derive(Debug, Deserialize)]
pub struct Webhook {
    pub signature: Signed,
    #[serde(rename = "event-data")]
    pub event_data: Value,
}

#[derive(Debug, Deserialize)]
pub struct Signed {
    pub timestamp: String,
    pub token: String,
    pub signature: String,
}

impl Webhook {
    pub fn parse(body: &[u8]) -> Result<Self, InboundError> {
        serde_json::from_slice(body)
            .map_err(|e| InboundError::Malformed(format!("not a Mailgun webhook: {e}")))
    }

    /// Checks the signature (in constant time) and the timestamp's age.
    pub fn verify(&self, signing_key: &[u8], max_age: Duration) -> Result<(), InboundError> {
        let bad = || InboundError::Unauthenticated("the Mailgun signature does not verify");
        let given = hex::decode(self.signature.signature.trim()).map_err(|_| bad())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(signing_key).map_err(|_| bad())?;
        mac.update(self.signature.timestamp.as_bytes());
        mac.update(self.signature.token.as_bytes());
        mac.verify_slice(&given).map_err(|_| bad())?;
        check_age(&self.signature.timestamp, max_age)
    }

    pub fn events(&self) -> Result<Events, InboundError> {
        let data = &self.event_data;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let name = text(data, "event")
            .ok_or_else(|| InboundError::Malformed("`event-data` has no `event`".into()))?;
        let kind = match (name.as_str(), text(data, "severity").as_deref()) {
            ("failed", Some("temporary")) => Kind::Soft,
            ("failed", _) => Kind::Hard,
            ("complained", _) => Kind::Complaint,
            _ => {
                return Ok(Events {
                    events: vec![],
                    ignored: 1,
                })
            }
        };
        let id = text(data, "id")
            .ok_or_else(|| InboundError::Malformed("`event-data` has no `id`".into()))?;
        let recipient = text(data, "recipient")
            .ok_or_else(|| InboundError::Malformed("`event-data` has no `recipient`".into()))?;
        let status = data.get("delivery-status").cloned().unwrap_or_default();
        let code = match status.get("code") {
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let words = [text(&status, "message"), text(&status, "description")]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let diagnostic = match (&code, words.is_empty()) {
            (_, false) => Some(clip(&words)),
            _ => text(data, "reason"),
        };
        let headers = data.pointer("/message/headers");
        Ok(Events {
            events: vec![Event {
                source_ref: id,
                original: Original {
                    message_id: headers
                        .and_then(|h| text(h, "message-id"))
                        .as_deref()
                        .and_then(bare_message_id),
                    notify_id: notify_id(data.pointer(&format!("/user-variables/{METADATA_KEY}"))),
                },
                feedback: Feedback {
                    kind,
                    recipient: Some(recipient.trim().to_lowercase()),
                    status_code: code,
                    diagnostic,
                },
            }],
            ignored: 0,
        })
    }
}
