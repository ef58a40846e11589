//! RFC 3464 delivery status notifications: `multipart/report;
//! report-type=delivery-status` with a `message/delivery-status` part
//! holding one block of fields per recipient.

use mail_parser::{Message, MimeHeaders};

use super::fields::{self, Block};
use super::{address_of, clip, kind_of_status, original, Feedback, Kind, Parsed, Report};

/// A message that says it is a DSN.
pub(super) fn read(message: &Message) -> Parsed {
    find(message).unwrap_or_else(|| {
        Parsed::Malformed("a delivery-status report without a delivery-status part".into())
    })
}

/// Reads the message's delivery-status part, if it has one.
pub(super) fn find(message: &Message) -> Option<Parsed> {
    let part = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    let text = String::from_utf8_lossy(part.contents());
    let recipients: Vec<Block> = fields::blocks(&text)
        .into_iter()
        .filter(|b| {
            fields::get(b, "final-recipient").is_some() || fields::get(b, "action").is_some()
        })
        .collect();
    if recipients.is_empty() {
        return Some(Parsed::Malformed(
            "the delivery-status part has no per-recipient fields".into(),
        ));
    }
    let feedback: Vec<Feedback> = recipients.iter().filter_map(recipient).collect();
    if feedback.is_empty() {
        // Every recipient was delivered, relayed or expanded: a success
        // notice, not a bounce.
        return Some(Parsed::NotAReport);
    }
    Some(Parsed::Report(Report {
        feedback,
        original: original::find(message),
        format: "dsn",
    }))
}

/// One recipient's block, when it failed or was delayed.
fn recipient(block: &Block) -> Option<Feedback> {
    let action = fields::get(block, "action")
        .unwrap_or("")
        .to_ascii_lowercase();
    let status = fields::get(block, "status").and_then(status_code);
    let diagnostic = fields::get(block, "diagnostic-code").map(|d| {
        // "smtp; 550 5.1.1 ...": the type before the semicolon is noise.
        clip(d.split_once(';').map_or(d, |(_, text)| text))
    });
    let kind = match action.as_str() {
        "delivered" | "relayed" | "expanded" => return None,
        "delayed" => Kind::Soft,
        _ => status
            .as_deref()
            .and_then(kind_of_status)
            .or_else(|| diagnostic.as_deref().and_then(reply_code_kind))
            .or((action == "failed").then_some(Kind::Hard))?,
    };
    // The address as we sent it when the MTA kept it, else as it ended up.
    let recipient = fields::get(block, "original-recipient")
        .and_then(address_of)
        .or_else(|| fields::get(block, "final-recipient").and_then(address_of));
    Some(Feedback {
        kind,
        recipient,
        status_code: status,
        diagnostic,
    })
}

/// `5.1.1`, from a Status field that may carry a comment after it.
pub(super) fn status_code(field: &str) -> Option<String> {
    let code = field.split_whitespace().next()?;
    let mut parts = code.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let valid = matches!(class, "2" | "4" | "5")
        && (1..=3).contains(&subject.len())
        && (1..=3).contains(&detail.len())
        && subject
            .bytes()
            .chain(detail.bytes())
            .all(|b| b.is_ascii_digit())
        && parts.next().is_none();
    valid.then(|| code.to_string())
}

/// The class of the SMTP reply code a diagnostic starts with (`550 ...`).
fn reply_code_kind(diagnostic: &str) -> Option<Kind> {
    let code = diagnostic.trim_start().get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    kind_of_status(code)
}
