//! Bounces and complaints: reading what receiving servers send back about
//! our mail. [`parse`] turns one raw email (from an account's mailbox) into
//! a [`Parsed`]: a report with one [`Feedback`] per recipient, and what
//! identifies the message it is about; or no report at all (a reply, an
//! auto-reply, a success notice); or a report that cannot be read.
//!
//! It reads RFC 3464 delivery status notifications (`dsn`), RFC 5965 abuse
//! reports (`arf`), and the plain-text bounces some MTAs still send
//! (`plain`); `fields` reads the header-like blocks the first two share,
//! and `original` finds the Message-ID of the mail that bounced.

mod arf;
mod dsn;
mod fields;
pub(crate) mod original;
mod plain;
pub mod providers;

use mail_parser::{MessageParser, MimeHeaders};
use uuid::Uuid;

/// The header every message we send carries, holding its record id, so a
/// bounce matches its message even where a relay rewrote the Message-ID.
pub const NOTIFY_ID_HEADER: &str = "X-Notify-Message-Id";

/// What a report says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Permanent failure (a 5.x.x status): the address is suppressed.
    Hard,
    /// Temporary failure (4.x.x, or delivery delayed): counted.
    Soft,
    /// The recipient reported the message as unwanted.
    Complaint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
            Kind::Complaint => "complaint",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Kind::Hard, Kind::Soft, Kind::Complaint]
            .into_iter()
            .find(|k| k.as_str() == raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub kind: Kind,
    /// Lower-cased; `None` when the report does not say (the message's
    /// own recipient is then used when it has exactly one).
    pub recipient: Option<String>,
    /// The enhanced status code (`5.1.1`), when there is one.
    pub status_code: Option<String>,
    /// The remote server's words, or the feedback type of a complaint.
    pub diagnostic: Option<String>,
}

/// What identifies the message a report is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Original {
    /// The original Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// The original `X-Notify-Message-Id`.
    pub notify_id: Option<Uuid>,
}

impl Original {
    /// Our message record's id: from our own header, or from a Message-ID
    /// we made (`<{record id, 32 hex digits}@{domain}>`).
    pub fn record_id(&self) -> Option<Uuid> {
        self.notify_id.or_else(|| {
            let local = self.message_id.as_deref()?.split('@').next()?;
            (local.len() == 32)
                .then(|| Uuid::try_parse(local).ok())
                .flatten()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One entry per recipient that failed, was delayed or complained.
    pub feedback: Vec<Feedback>,
    pub original: Original,
    /// dsn, arf or plain: which reader understood it.
    pub format: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Report(Report),
    /// Not about a delivery problem: a reply, an auto-reply, a
    /// notification of successful delivery, a `not-spam` report.
    NotAReport,
    /// Claims to be a report but cannot be read; why.
    Malformed(String),
}

/// Reads one raw email. Never panics, whatever the input.
pub fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.parts.is_empty())
    else {
        return Parsed::Malformed("not an email: no header could be read".into());
    };
    let report_type = message
        .root_part()
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(|t| t.to_ascii_lowercase());
    match report_type.as_deref() {
        Some("delivery-status") | Some("global-delivery-status") => dsn::read(&message),
        Some("feedback-report") => arf::read(&message),
        // Some MTAs label a DSN with an unusual report type: look for the
        // parts themselves before trying the plain-text readers.
        _ => dsn::find(&message)
            .or_else(|| arf::find(&message))
            .unwrap_or_else(|| plain::read(&message)),
    }
}

/// A status code's class: `5.1.1` → hard, `4.2.2` → soft.
fn kind_of_status(status: &str) -> Option<Kind> {
    match status.trim().as_bytes().first() {
        Some(b'5') => Some(Kind::Hard),
        Some(b'4') => Some(Kind::Soft),
        _ => None,
    }
}

/// Keeps a diagnostic to a length a record and a webhook can carry.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 1000;
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The address of an `rfc822; user@example.com` field, lower-cased.
fn address_of(field: &str) -> Option<String> {
    let value = match field.split_once(';') {
        Some((_, v)) => v,
        None => field,
    };
    let value = value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (value.contains('@') && !value.contains(char::is_whitespace)).then(|| value.to_lowercase())
}

#[cfg(test)]
mod tests;
