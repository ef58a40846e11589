//! Finding the message a report is about: the returned message itself
//! (`message/rfc822`), its headers (`text/rfc822-headers`), or, in
//! plain-text bounces, header lines quoted in the body.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use uuid::Uuid;

use super::{Original, NOTIFY_ID_HEADER};

/// Looks at every part but the report's own headers, which name the
/// report, not the original.
pub(super) fn find(message: &Message) -> Original {
    let mut found = Original::default();
    for part in message.parts.iter().skip(1).chain(root_body(message)) {
        match &part.body {
            PartType::Message(inner) => from_headers(inner, &mut found),
            PartType::Text(text) | PartType::Html(text) => {
                let is_headers = part.content_type().is_some_and(|ct| {
                    ct.subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
                });
                if is_headers {
                    if let Some(inner) = MessageParser::default().parse(text.as_bytes()) {
                        from_headers(&inner, &mut found);
                    }
                }
                from_quoted_lines(text, &mut found);
            }
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                // `message/rfc822-headers` and unknown types: maybe headers.
                from_quoted_lines(&String::from_utf8_lossy(bytes), &mut found);
            }
            PartType::Multipart(_) => {}
        }
        if found.notify_id.is_some() && found.message_id.is_some() {
            break;
        }
    }
    found
}

/// A single-part message's body is its root part.
fn root_body<'a, 'x>(message: &'a Message<'x>) -> Option<&'a mail_parser::MessagePart<'x>> {
    (message.parts.len() == 1).then(|| &message.parts[0])
}

fn from_headers(inner: &Message, found: &mut Original) {
    // A cut-off returned message can parse with no part at all, and the
    // header accessors index the first one.
    if inner.parts.is_empty() {
        return;
    }
    if found.message_id.is_none() {
        found.message_id = inner.message_id().map(|id| id.trim().to_string());
    }
    if found.notify_id.is_none() {
        found.notify_id = inner.header_raw(NOTIFY_ID_HEADER).and_then(uuid_in);
    }
}

/// `Message-ID: <…>` and `X-Notify-Message-Id: …` lines, also indented or
/// quoted with `>`.
pub(super) fn from_quoted_lines(text: &str, found: &mut Original) {
    for line in text.lines() {
        let line = line.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if found.message_id.is_none() && name.eq_ignore_ascii_case("message-id") {
            let id = value.trim().trim_start_matches('<').trim_end_matches('>');
            if id.contains('@') && !id.contains(char::is_whitespace) {
                found.message_id = Some(id.to_string());
            }
        } else if found.notify_id.is_none() && name.eq_ignore_ascii_case(NOTIFY_ID_HEADER) {
            found.notify_id = uuid_in(value);
        }
    }
}

fn uuid_in(value: &str) -> Option<Uuid> {
    Uuid::try_parse(value.trim().trim_start_matches('<').trim_end_matches('>')).ok()
}
