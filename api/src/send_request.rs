//! The body of `POST /api/v1/messages/email/send`, and its validation into
//! a message ready to record.

use platform::db::messages::NewMessage;
use platform::mail::EmailAddress;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::validate;

/// Most recipients (to + cc + bcc) in one message.
pub const MAX_RECIPIENTS: usize = 50;
/// RFC 5322's line limit, which a subject must fit.
pub const MAX_SUBJECT: usize = 998;

/// One address, or a list of addresses.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEmailRequest {
    /// Recipient address, or a list of them.
    pub to: OneOrMany,
    pub cc: Option<OneOrMany>,
    pub bcc: Option<OneOrMany>,
    /// At most 998 characters, no line breaks.
    pub subject: String,
    /// HTML body.
    pub content: String,
    /// Plain-text alternative; derived from the HTML when absent.
    pub text: Option<String>,
    pub reply_to: Option<String>,
    /// Display name for From; defaults to the sending account's.
    pub from_name: Option<String>,
}

fn addresses(field: &str, list: Option<&OneOrMany>) -> Result<Vec<String>, ApiError> {
    list.map_or(&[][..], OneOrMany::as_slice)
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            validate::email(&format!("{field}[{i}]"), raw).map(|a: EmailAddress| a.to_string())
        })
        .collect()
}

impl SendEmailRequest {
    pub fn validate(&self, api_key_id: Uuid, max_size: usize) -> Result<NewMessage, ApiError> {
        let to = addresses("to", Some(&self.to))?;
        if to.is_empty() {
            return Err(ApiError::validation(
                "to",
                "at least one recipient is required",
            ));
        }
        let cc = addresses("cc", self.cc.as_ref())?;
        let bcc = addresses("bcc", self.bcc.as_ref())?;
        if to.len() + cc.len() + bcc.len() > MAX_RECIPIENTS {
            return Err(ApiError::validation(
                "to",
                format!("at most {MAX_RECIPIENTS} recipients (to, cc and bcc together)"),
            ));
        }
        let subject = validate::header_text("subject", &self.subject, true, MAX_SUBJECT)?;
        if self.content.trim().is_empty() {
            return Err(ApiError::validation("content", "content must not be empty"));
        }
        let size = self.content.len() + self.text.as_ref().map_or(0, String::len);
        if size > max_size {
            return Err(ApiError::PayloadTooLarge(format!(
                "content and text together are {size} bytes; the limit (EMAIL_MAX_SIZE) is {max_size}"
            )));
        }
        let reply_to = self
            .reply_to
            .as_deref()
            .map(|r| validate::email("reply_to", r).map(|a| a.to_string()))
            .transpose()?;
        let from_name = self
            .from_name
            .as_deref()
            .map(|n| validate::header_text("from_name", n, false, 128))
            .transpose()?
            .filter(|n| !n.is_empty());
        Ok(NewMessage {
            id: Uuid::now_v7(),
            task_id: Uuid::new_v4().to_string(),
            api_key_id: Some(api_key_id),
            to,
            cc,
            bcc,
            reply_to,
            from_name,
            subject,
            html_body: self.content.clone(),
            text_body: self.text.clone(),
        })
    }
}
