//! Amazon SES bounce and complaint notifications: the JSON in an SNS
//! notification's `Message`, with `notificationType` (or `eventType`, when
//! they come from event publishing) `Bounce` or `Complaint`. A permanent
//! bounce is hard; a transient or undetermined one soft.

use serde::Deserialize;
use serde_json::Value;

use super::{bare_message_id, Event, Events, InboundError};
use crate::bounces::{Feedback, Kind, Original, NOTIFY_ID_HEADER};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    #[serde(default)]
    notification_type: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    mail: Mail,
    #[serde(default)]
    bounce: Option<Bounce>,
    #[serde(default)]
    complaint: Option<Complaint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mail {
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default)]
    common_headers: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    bounce_type: String,
    #[serde(default)]
    bounce_sub_type: Option<String>,
    #[serde(default)]
    bounced_recipients: Vec<Recipient>,
    #[serde(default)]
    feedback_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    #[serde(default)]
    complained_recipients: Vec<Recipient>,
    #[serde(default)]
    complaint_feedback_type: Option<String>,
    #[serde(default)]
    feedback_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    email_address: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    diagnostic_code: Option<String>,
}

/// The events of one SES notification; `sns_message_id` (unique per SNS
/// message) stands in for a missing `feedbackId`.
pub fn events(message: &str, sns_message_id: &str) -> Result<Events, InboundError> {
    let n: Notification = serde_json::from_str(message)
        .map_err(|e| InboundError::Malformed(format!("not an SES notification: {e}")))?;
    let kind = n.notification_type.or(n.event_type).unwrap_or_default();
    let original = original(&n.mail);
    let (feedback_id, recipients): (Option<String>, Vec<(Recipient, Feedback)>) =
        match kind.as_str() {
            "Bounce" => {
                let b = n.bounce.ok_or_else(|| {
                    InboundError::Malformed("a Bounce notification without `bounce`".into())
                })?;
                let kind = match b.bounce_type.as_str() {
                    "Permanent" => Kind::Hard,
                    _ => Kind::Soft,
                };
                let sub_type = b.bounce_sub_type;
                let list = b
                    .bounced_recipients
                    .into_iter()
                    .map(|r| {
                        let feedback = Feedback {
                            kind,
                            recipient: Some(r.email_address.trim().to_lowercase()),
                            status_code: r.status.clone(),
                            diagnostic: r
                                .diagnostic_code
                                .clone()
                                .or_else(|| sub_type.clone())
                                .map(|d| crate::bounces::clip(&d)),
                        };
                        (r, feedback)
                    })
                    .collect();
                (b.feedback_id, list)
            }
            "Complaint" => {
                let c = n.complaint.ok_or_else(|| {
                    InboundError::Malformed("a Complaint notification without `complaint`".into())
                })?;
                let diagnostic = c.complaint_feedback_type.clone();
                let list = c
                    .complained_recipients
                    .into_iter()
                    .map(|r| {
                        let feedback = Feedback {
                            kind: Kind::Complaint,
                            recipient: Some(r.email_address.trim().to_lowercase()),
                            status_code: None,
                            diagnostic: diagnostic.clone(),
                        };
                        (r, feedback)
                    })
                    .collect();
                (c.feedback_id, list)
            }
            // Delivery, Send, Open, ...: not ours to act on.
            _ => {
                return Ok(Events {
                    events: vec![],
                    ignored: 1,
                })
            }
        };
    let reference = feedback_id.unwrap_or_else(|| sns_message_id.to_string());
    let events = recipients
        .into_iter()
        .enumerate()
        .map(|(i, (_, feedback))| Event {
            source_ref: format!("{reference}/{i}"),
            original: original.clone(),
            feedback,
        })
        .collect();
    Ok(Events { events, ignored: 0 })
}

/// Our ids from the original's headers, when SES was told to include
/// them (`mail.messageId` is SES's own id, naming no message of ours).
fn original(mail: &Mail) -> Original {
    let header = |name: &str| {
        mail.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    };
    let message_id = header("Message-ID")
        .or_else(|| {
            mail.common_headers
                .as_ref()
                .and_then(|c| c.get("messageId"))
                .and_then(Value::as_str)
        })
        .and_then(bare_message_id);
    let notify_id = header(NOTIFY_ID_HEADER).and_then(|v| uuid::Uuid::try_parse(v.trim()).ok());
    Original {
        message_id,
        notify_id,
    }
}
