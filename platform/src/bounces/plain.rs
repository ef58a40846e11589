//! Bounces that are not RFC 3464 reports: plain text from qmail, older
//! Exim and Exchange set-ups and some hosted services, quoting the failed
//! address, the remote server's reply and the original headers in prose.

use std::sync::LazyLock;

use mail_parser::{Message, PartType};
use regex::Regex;

use super::{clip, kind_of_status, original, Feedback, Kind, Parsed, Report};

/// The subjects such bounces carry, lower-cased.
const SUBJECTS: [&str; 12] = [
    "undeliver",
    "undelivered mail",
    "delivery status notification",
    "mail delivery failed",
    "failure notice",
    "returned mail",
    "delivery failure",
    "could not be delivered",
    "delivery has failed",
    "message not delivered",
    "delivery notification",
    "mail delivery subsystem",
];

/// Words of a temporary problem, when there is no status code.
const DELAY_WORDS: [&str; 5] = [
    "delay",
    "will retry",
    "will continue to try",
    "temporar",
    "not yet been delivered",
];

static ENHANCED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([45])\.(\d{1,3})\.(\d{1,3})\b").expect("valid regex"));
static REPLY_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)(?:^|\s)([45]\d\d)[ -]").expect("valid regex"));
/// qmail and Postfix: `<user@example.com>:` starts the failed address's paragraph.
static ANGLE_ADDRESS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<([^<>\s@]+@[^<>\s]+)>:").expect("valid regex"));
/// Exim: the addresses indented under "following address(es) failed:".
static EXIM_ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)following address(?:\(es\))? failed:\s*\n\s*<?([^<>\s@]+@[^<>\s]+?)>?\s*\n")
        .expect("valid regex")
});

pub(super) fn read(message: &Message) -> Parsed {
    if !looks_like_bounce(message) {
        return Parsed::NotAReport;
    }
    let text = body_text(message);
    let original = original::find(message);
    let status = ENHANCED.find(&text).map(|m| m.as_str().to_string());
    let code = REPLY_CODE
        .captures(&text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string());
    let recipient = ANGLE_ADDRESS
        .captures(&text)
        .or_else(|| EXIM_ADDRESS.captures(&text))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_lowercase());
    if status.is_none() && code.is_none() && recipient.is_none() && original.record_id().is_none() {
        return Parsed::Malformed(
            "a bounce with no status, no failed address and no original message".into(),
        );
    }
    let lower = text.to_lowercase();
    let kind = status
        .as_deref()
        .or(code.as_deref())
        .and_then(kind_of_status)
        .unwrap_or_else(|| {
            if DELAY_WORDS.iter().any(|w| lower.contains(w)) {
                Kind::Soft
            } else {
                Kind::Hard
            }
        });
    // The line that holds the code is the remote server's reply.
    let diagnostic = status
        .as_deref()
        .or(code.as_deref())
        .and_then(|needle| text.lines().find(|l| l.contains(needle)))
        .map(clip);
    Parsed::Report(Report {
        feedback: vec![Feedback {
            kind,
            recipient,
            status_code: status,
            diagnostic,
        }],
        original,
        format: "plain",
    })
}

/// Sent by a mailer daemon, or titled like a bounce; never an auto-reply
/// (which Exim's bounces also mark `Auto-Submitted`, so the header alone
/// decides nothing).
fn looks_like_bounce(message: &Message) -> bool {
    let subject = message.subject().unwrap_or("").to_lowercase();
    if ["automatic reply", "auto:", "out of office"]
        .iter()
        .any(|p| subject.starts_with(p))
    {
        return false;
    }
    let from_daemon = message
        .from()
        .and_then(|from| from.first())
        .and_then(|addr| addr.address())
        .and_then(|addr| addr.split('@').next())
        .is_some_and(|local| {
            let local = local.to_ascii_lowercase();
            local == "mailer-daemon" || local == "postmaster"
        });
    from_daemon || SUBJECTS.iter().any(|s| subject.contains(s))
}

/// The text of the message's own text parts (not of a returned message).
fn body_text(message: &Message) -> String {
    let mut text = String::new();
    for part in &message.parts {
        if let PartType::Text(t) = &part.body {
            text.push_str(t);
            text.push('\n');
        }
    }
    text
}
