//! Builds the MIME message for a recorded email: From is the sending
//! account (with its display name), and every message carries a
//! Message-ID, a Date, the HTML body and a plain-text alternative; a
//! message the recipient may unsubscribe from carries `List-Unsubscribe`
//! and `List-Unsubscribe-Post` (RFC 8058).

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as AttachmentPart, Mailbox, MultiPart, SinglePart};
use lettre::Message;
use uuid::Uuid;

use super::EmailAddress;
use crate::db::attachments::Attachment;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// Who sends, and to whom.
pub struct Envelope<'a> {
    /// The message record's id. The Message-ID derives from it, so every
    /// attempt of one message carries the same Message-ID and a receiver
    /// can recognise a duplicate.
    pub record_id: Uuid,
    pub from_email: &'a str,
    pub from_name: &'a str,
    pub to: &'a [String],
    pub cc: &'a [String],
    pub bcc: &'a [String],
    pub reply_to: Option<&'a str>,
    /// The `List-Unsubscribe` value (see [`super::unsubscribe`]); with it
    /// the message also says it accepts one-click POSTs.
    pub list_unsubscribe: Option<&'a str>,
}

pub struct ComposedEmail {
    pub message: Message,
    /// Without angle brackets.
    pub message_id: String,
}

fn mailbox(name: Option<&str>, address: &str) -> Result<Mailbox, ComposeError> {
    let parsed =
        EmailAddress::parse(address).map_err(|_| ComposeError::Address(address.to_string()))?;
    let address = parsed
        .as_str()
        .parse()
        .map_err(|_| ComposeError::Address(address.to_string()))?;
    Ok(Mailbox::new(
        name.filter(|n| !n.is_empty()).map(str::to_string),
        address,
    ))
}

/// Builds the email. With attachments, the body is `multipart/mixed`: the
/// `multipart/alternative` (text, HTML) first, then one part per file.
pub fn compose(
    envelope: &Envelope<'_>,
    subject: &str,
    html: &str,
    text: Option<&str>,
    attachments: &[Attachment],
) -> Result<ComposedEmail, ComposeError> {
    let from = mailbox(Some(envelope.from_name), envelope.from_email)?;
    let domain = EmailAddress::parse(envelope.from_email)
        .map(|a| a.domain().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let message_id = format!("{}@{}", envelope.record_id.simple(), domain);

    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(format!("<{message_id}>")))
        // Bounces quote the original's headers; this one matches them to
        // the record even where a relay rewrote the Message-ID.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(crate::bounces::NOTIFY_ID_HEADER),
            envelope.record_id.to_string(),
        ))
        .date_now();
    for to in envelope.to {
        builder = builder.to(mailbox(None, to)?);
    }
    for cc in envelope.cc {
        builder = builder.cc(mailbox(None, cc)?);
    }
    for bcc in envelope.bcc {
        builder = builder.bcc(mailbox(None, bcc)?);
    }
    if let Some(reply_to) = envelope.reply_to {
        builder = builder.reply_to(mailbox(None, reply_to)?);
    }
    if let Some(value) = envelope.list_unsubscribe {
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                value.to_string(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                super::unsubscribe::ONE_CLICK.to_string(),
            ));
    }
    let text = match text {
        Some(t) => t.to_string(),
        None => html_to_text(html),
    };
    let body = MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html.to_string()),
        );
    let message = if attachments.is_empty() {
        builder.multipart(body)?
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for a in attachments {
            let content_type = ContentType::parse(&a.content_type).unwrap_or_else(|_| {
                ContentType::parse("application/octet-stream").unwrap_or(ContentType::TEXT_PLAIN)
            });
            mixed = mixed.singlepart(
                AttachmentPart::new(a.filename.clone()).body(a.content.clone(), content_type),
            );
        }
        builder.multipart(mixed)?
    };
    Ok(ComposedEmail {
        message,
        message_id,
    })
}

/// A readable plain-text rendering of the HTML, for clients that prefer it.
fn html_to_text(html: &str) -> String {
    html2text::from_read(html.as_bytes(), 78).unwrap_or_else(|_| html.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_from_ids_and_both_bodies() {
        let to = vec!["rcpt@example.org".to_string()];
        let envelope = Envelope {
            record_id: Uuid::new_v4(),
            from_email: "noreply@example.com",
            from_name: "Notifier",
            to: &to,
            cc: &[],
            bcc: &[],
            reply_to: Some("help@example.com"),
            list_unsubscribe: None,
        };
        let email = compose(&envelope, "Hi", "<h1>Hello</h1><p>World</p>", None, &[]).unwrap();
        let raw = String::from_utf8(email.message.formatted()).unwrap();
        assert!(
            raw.contains("From: Notifier <noreply@example.com>"),
            "{raw}"
        );
        assert!(raw.contains(&format!("Message-ID: <{}>", email.message_id)));
        assert!(raw.contains(&format!("X-Notify-Message-Id: {}", envelope.record_id)));
        assert!(email.message_id.ends_with("@example.com"));
        assert!(raw.contains("Date: "));
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert!(raw.contains("Reply-To: help@example.com"));
        assert!(!raw.contains("List-Unsubscribe"), "{raw}");
    }

    #[test]
    fn an_unsubscribable_message_carries_both_rfc_8058_headers() {
        let to = vec!["rcpt@example.org".to_string()];
        let link = format!("<https://mail.example.com/u/{}>", "a".repeat(120));
        let envelope = Envelope {
            record_id: Uuid::new_v4(),
            from_email: "noreply@example.com",
            from_name: "",
            to: &to,
            cc: &[],
            bcc: &[],
            reply_to: None,
            list_unsubscribe: Some(&link),
        };
        let email = compose(&envelope, "Hi", "<p>Hi</p>", None, &[]).unwrap();
        let raw = String::from_utf8(email.message.formatted()).unwrap();
        assert!(
            raw.contains(&format!("List-Unsubscribe: {link}\r\n")),
            "{raw}"
        );
        assert!(
            raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{raw}"
        );
    }
}

#[cfg(test)]
mod attachment_tests {
    use super::*;

    #[test]
    fn attachments_are_mixed_parts_after_the_alternative() {
        let to = vec!["rcpt@example.org".to_string()];
        let envelope = Envelope {
            record_id: Uuid::new_v4(),
            from_email: "noreply@example.com",
            from_name: "",
            to: &to,
            cc: &[],
            bcc: &[],
            reply_to: None,
            list_unsubscribe: None,
        };
        let files = [Attachment {
            filename: "report.pdf".into(),
            content_type: "application/pdf".into(),
            content: b"%PDF-1.4 test".to_vec(),
        }];
        let email = compose(&envelope, "Hi", "<p>Hi</p>", None, &files).unwrap();
        let raw = String::from_utf8(email.message.formatted()).unwrap();
        assert!(raw.contains("multipart/mixed"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("application/pdf"), "{raw}");
        assert!(raw.contains("filename=\"report.pdf\""), "{raw}");
    }
}
