//! The rules an email must keep to, whoever sends it: the API checks a
//! request with them (and answers 422 or 413 naming the field), the worker
//! checks the arguments a Python producer passed to `send_task` (and fails
//! the task for good). One home, so both refuse the same emails.

use super::EmailAddress;

/// Most recipients (to + cc + bcc) in one message.
pub const MAX_RECIPIENTS: usize = 50;
/// RFC 5322's line limit, which a subject must fit.
pub const MAX_SUBJECT: usize = 998;
/// Longest display name for From.
pub const MAX_FROM_NAME: usize = 128;

/// Most entries in a message's `metadata`.
pub const MAX_METADATA_ENTRIES: usize = 20;
/// Longest `metadata` key, in characters.
pub const MAX_METADATA_KEY: usize = 40;
/// Longest `metadata` value, in characters.
pub const MAX_METADATA_VALUE: usize = 500;

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A field's value is not allowed (the API's 422).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The email is larger than `EMAIL_MAX_SIZE` allows (the API's 413).
    #[error("{0}")]
    TooLarge(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Text bound for a single header line: no control characters (CR/LF would
/// inject headers), trimmed, and within `max` characters.
pub fn header_text(
    field: &str,
    value: &str,
    required: bool,
    max: usize,
) -> Result<String, Violation> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{field} must not contain control characters such as CR or LF"),
        ));
    }
    if value.chars().count() > max {
        return Err(invalid(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(value.to_string())
}

/// The sender's `metadata`: at most 20 entries, each key 1 to 40 of
/// `A-Z a-z 0-9 _ - . :`, each value at most 500 characters without control
/// characters (kept as given). An empty map is no metadata.
pub fn metadata(
    value: Option<&crate::db::messages::Metadata>,
) -> Result<Option<crate::db::messages::Metadata>, Violation> {
    let Some(map) = value.filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    if map.len() > MAX_METADATA_ENTRIES {
        return Err(invalid(
            "metadata",
            format!("metadata has at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    for (key, value) in map {
        let key_ok = (1..=MAX_METADATA_KEY).contains(&key.chars().count())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !key_ok {
            return Err(invalid(
                "metadata",
                format!(
                    "metadata keys are 1 to {MAX_METADATA_KEY} of A-Z a-z 0-9 _ - . : (not {:?})",
                    key.chars().take(MAX_METADATA_KEY + 1).collect::<String>()
                ),
            ));
        }
        if value.chars().any(char::is_control) || value.chars().count() > MAX_METADATA_VALUE {
            return Err(invalid(
                "metadata",
                format!(
                    "metadata value of {key:?} must be at most {MAX_METADATA_VALUE} characters, without control characters"
                ),
            ));
        }
    }
    Ok(Some(map.clone()))
}

/// One address, in its normal form.
pub fn address(field: &str, value: &str) -> Result<EmailAddress, Violation> {
    EmailAddress::parse(value).map_err(|e| invalid(field, e.to_string()))
}

/// The recipients in their normal form: at least one `to`, every address
/// valid (the first bad one named by field and index), at most
/// [`MAX_RECIPIENTS`] together.
#[allow(clippy::type_complexity)]
pub fn recipients(
    to: &[String],
    cc: &[String],
    bcc: &[String],
) -> Result<(Vec<String>, Vec<String>, Vec<String>), Violation> {
    let list = |field: &str, raw: &[String]| -> Result<Vec<String>, Violation> {
        raw.iter()
            .enumerate()
            .map(|(i, a)| address(&format!("{field}[{i}]"), a).map(|a| a.to_string()))
            .collect()
    };
    let to = list("to", to)?;
    if to.is_empty() {
        return Err(invalid("to", "at least one recipient is required"));
    }
    let cc = list("cc", cc)?;
    let bcc = list("bcc", bcc)?;
    if to.len() + cc.len() + bcc.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "to",
            format!("at most {MAX_RECIPIENTS} recipients (to, cc and bcc together)"),
        ));
    }
    Ok((to, cc, bcc))
}

/// The subject (trimmed) and the body: HTML content that is not blank, and
/// content and text together within `email_max_size` bytes. Returns the
/// subject and the body's size.
pub fn subject_and_body(
    subject: &str,
    content: &str,
    text: Option<&str>,
    email_max_size: usize,
) -> Result<(String, usize), Violation> {
    let subject = header_text("subject", subject, true, MAX_SUBJECT)?;
    if content.trim().is_empty() {
        return Err(invalid("content", "content must not be empty"));
    }
    let size = content.len() + text.map_or(0, str::len);
    if size > email_max_size {
        return Err(Violation::TooLarge(format!(
            "content and text together are {size} bytes; the limit (EMAIL_MAX_SIZE) is {email_max_size}"
        )));
    }
    Ok((subject, size))
}

/// `reply_to`, when given, in its normal form.
pub fn reply_to(value: Option<&str>) -> Result<Option<String>, Violation> {
    value
        .map(|r| address("reply_to", r).map(|a| a.to_string()))
        .transpose()
}

/// `from_name`, when given and not blank, trimmed.
pub fn from_name(value: Option<&str>) -> Result<Option<String>, Violation> {
    Ok(value
        .map(|n| header_text("from_name", n, false, MAX_FROM_NAME))
        .transpose()?
        .filter(|n| !n.is_empty()))
}

/// An email's fields as a sender gave them.
#[derive(Debug, Clone, Copy)]
pub struct Given<'a> {
    pub to: &'a [String],
    pub cc: &'a [String],
    pub bcc: &'a [String],
    pub subject: &'a str,
    pub content: &'a str,
    pub text: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub from_name: Option<&'a str>,
}

/// An email that keeps every rule, its fields in their normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub reply_to: Option<String>,
    pub from_name: Option<String>,
}

/// Every rule, in the order the API checks them (so the same field is
/// named first), for an email without attachments.
pub fn check(given: Given<'_>, email_max_size: usize) -> Result<Checked, Violation> {
    let (to, cc, bcc) = recipients(given.to, given.cc, given.bcc)?;
    let (subject, _) = subject_and_body(given.subject, given.content, given.text, email_max_size)?;
    Ok(Checked {
        to,
        cc,
        bcc,
        subject,
        reply_to: reply_to(given.reply_to)?,
        from_name: from_name(given.from_name)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given<'a>(to: &'a [String], subject: &'a str) -> Given<'a> {
        Given {
            to,
            cc: &[],
            bcc: &[],
            subject,
            content: "<p>hi</p>",
            text: None,
            reply_to: None,
            from_name: None,
        }
    }

    #[test]
    fn a_plain_email_passes_in_normal_form() {
        let to = vec![" ann@example.com ".to_string()];
        let mut email = given(&to, "  Hello ");
        email.from_name = Some("  ");
        let checked = check(email, 1000).unwrap();
        assert_eq!(checked.to, ["ann@example.com"]);
        assert_eq!(checked.subject, "Hello");
        assert_eq!(checked.from_name, None);
    }

    #[test]
    fn each_rule_names_its_field() {
        let one = vec!["a@example.com".to_string()];
        let field = |r: Result<Checked, Violation>| match r.unwrap_err() {
            Violation::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(check(given(&[], "s"), 1000)), "to");
        let bad = vec!["a@example.com".into(), "nope".into()];
        assert_eq!(field(check(given(&bad, "s"), 1000)), "to[1]");
        let many: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!("r{i}@example.com"))
            .collect();
        assert_eq!(field(check(given(&many, "s"), 1000)), "to");
        let long = "x".repeat(MAX_SUBJECT + 1);
        assert_eq!(field(check(given(&one, &long), 1000)), "subject");
        assert_eq!(field(check(given(&one, "a\r\nBcc: x"), 1000)), "subject");
        let mut email = given(&one, "s");
        email.reply_to = Some("nope");
        assert_eq!(field(check(email, 1000)), "reply_to");
        email.reply_to = None;
        email.content = " ";
        assert_eq!(field(check(email, 1000)), "content");
    }

    #[test]
    fn a_body_over_the_limit_is_too_large() {
        let one = vec!["a@example.com".to_string()];
        let mut email = given(&one, "s");
        email.text = Some("0123456789");
        assert!(
            matches!(check(email, 12), Err(Violation::TooLarge(m)) if m.contains("EMAIL_MAX_SIZE"))
        );
        assert!(check(email, 19).is_ok());
    }

    #[test]
    fn metadata_is_kept_within_its_bounds_and_refused_past_them() {
        use crate::db::messages::Metadata;
        let map = |pairs: &[(&str, &str)]| -> Metadata {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(metadata(None), Ok(None));
        assert_eq!(metadata(Some(&Metadata::new())), Ok(None));
        let good = map(&[
            ("order_id", "A-1"),
            ("a.b:c-d_e", ""),
            ("k", &"é".repeat(500)),
        ]);
        assert_eq!(metadata(Some(&good)), Ok(Some(good.clone())));
        let many: Metadata = (0..21).map(|i| (format!("k{i}"), "v".into())).collect();
        let long_key = "k".repeat(41);
        let long_value = "v".repeat(501);
        for bad in [
            many,
            map(&[("", "v")]),
            map(&[("with space", "v")]),
            map(&[("ключ", "v")]),
            map(&[(long_key.as_str(), "v")]),
            map(&[("k", long_value.as_str())]),
            map(&[("k", "a\r\nBcc: x")]),
        ] {
            assert!(
                matches!(metadata(Some(&bad)), Err(Violation::Invalid { ref field, .. }) if field == "metadata"),
                "{bad:?}"
            );
        }
    }
}
