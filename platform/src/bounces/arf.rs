//! RFC 5965 abuse reports (ARF), as mailbox providers' feedback loops send
//! them: `multipart/report; report-type=feedback-report` with a
//! `message/feedback-report` part and the original message or its headers.

use mail_parser::{Message, MimeHeaders};

use super::fields;
use super::{address_of, original, Feedback, Kind, Parsed, Report};

/// A message that says it is an abuse report.
pub(super) fn read(message: &Message) -> Parsed {
    find(message).unwrap_or_else(|| {
        Parsed::Malformed("a feedback report without a feedback-report part".into())
    })
}

/// Reads the message's feedback-report part, if it has one.
pub(super) fn find(message: &Message) -> Option<Parsed> {
    let part = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("feedback-report"))
        })
    })?;
    let text = String::from_utf8_lossy(part.contents());
    let block = fields::blocks(&text).into_iter().next().unwrap_or_default();
    let Some(feedback_type) = fields::get(&block, "feedback-type") else {
        return Some(Parsed::Malformed(
            "the feedback-report part has no Feedback-Type".into(),
        ));
    };
    let feedback_type = feedback_type.to_ascii_lowercase();
    if feedback_type == "not-spam" {
        return Some(Parsed::NotAReport);
    }
    let original = original::find(message);
    // Many feedback loops redact the recipient; the message's own
    // recipient is used then (see `Feedback::recipient`).
    let recipient = fields::get(&block, "original-rcpt-to")
        .or_else(|| fields::get(&block, "removal-recipient"))
        .and_then(address_of);
    let mut diagnostic = format!("feedback-type: {feedback_type}");
    if let Some(agent) = fields::get(&block, "user-agent") {
        diagnostic.push_str(&format!("; user-agent: {agent}"));
    }
    Some(Parsed::Report(Report {
        feedback: vec![Feedback {
            kind: Kind::Complaint,
            recipient,
            status_code: None,
            diagnostic: Some(super::clip(&diagnostic)),
        }],
        original,
        format: "arf",
    }))
}
