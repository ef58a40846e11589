//! The Celery tasks the platform defines: their names and argument shapes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Sends one email. Published by the API with `message_id` (the record
/// already exists); Python producers may instead pass the email itself
/// (`to`, `subject`, `content`, ...), and the worker records it.
pub const SEND_EMAIL: &str = "notifications.send_email";

/// Keyword arguments of [`SEND_EMAIL`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendEmailKwargs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Recipients>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc: Option<Recipients>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bcc: Option<Recipients>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
}

/// One address or a list, as callers of the Python platform wrote either.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Recipients {
    One(String),
    Many(Vec<String>),
}

impl Recipients {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Recipients::One(one) => vec![one],
            Recipients::Many(many) => many,
        }
    }
}
