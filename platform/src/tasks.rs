//! The Celery tasks the platform defines: their names and argument shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::celery::TaskMessage;

/// Sends one email. Published by the API with `message_id` (the record
/// already exists); Python producers may instead pass the email itself
/// (`to`, `subject`, `content`, ...), and the worker records it.
pub const SEND_EMAIL: &str = "notifications.send_email";

/// Sends several API-recorded emails: what the API publishes for the
/// requests one group commit accepted together. One broker message (one
/// publish, delivery and ack) then carries up to [`BATCH_MEMBERS`] emails
/// instead of one each, which is most of what RabbitMQ costs per email.
/// Each member keeps its own Celery task id: the worker runs it exactly as
/// the [`SEND_EMAIL`] task it expands to (results, retries and dead
/// letters are per email, under that id).
pub const SEND_EMAIL_BATCH: &str = "notifications.send_email_batch";

/// Most emails one [`SEND_EMAIL_BATCH`] task carries.
pub const BATCH_MEMBERS: usize = 50;

/// Keyword arguments of [`SEND_EMAIL_BATCH`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendEmailBatchKwargs {
    pub messages: Vec<BatchMember>,
}

/// One email of a batch: its record and its own Celery task id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchMember {
    pub message_id: Uuid,
    pub task_id: String,
}

/// The [`SEND_EMAIL`] task that sends one recorded message: what the API
/// publishes for a lone send, and what a batch member expands to.
pub fn send_email_task(message_id: Uuid, task_id: &str) -> TaskMessage {
    let mut kwargs = Map::new();
    kwargs.insert("message_id".into(), Value::String(message_id.to_string()));
    TaskMessage::new(SEND_EMAIL, task_id, Vec::new(), kwargs)
}

/// The message record a [`SEND_EMAIL`] task names (its `message_id`
/// argument), if it names one.
pub fn record_id(message: &TaskMessage) -> Option<Uuid> {
    message.kwargs.get("message_id")?.as_str()?.parse().ok()
}

/// The [`SEND_EMAIL_BATCH`] task for `members` (at most [`BATCH_MEMBERS`]).
pub fn send_email_batch_task(members: &[BatchMember]) -> TaskMessage {
    let kwargs = match serde_json::to_value(SendEmailBatchKwargs {
        messages: members.to_vec(),
    }) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut task = TaskMessage::new(
        SEND_EMAIL_BATCH,
        &Uuid::new_v4().to_string(),
        Vec::new(),
        kwargs,
    );
    // The members are listed in the body; repeating them in the header
    // would double the message for nothing a monitor needs.
    task.headers.kwargsrepr = Some(format!("{{'messages': <{} emails>}}", members.len()));
    task
}

/// The [`SEND_EMAIL_BATCH`] tasks that carry `members`, [`BATCH_MEMBERS`]
/// to a task, each email keeping its own task id.
pub fn send_email_batch_tasks(members: &[BatchMember]) -> Vec<TaskMessage> {
    members
        .chunks(BATCH_MEMBERS)
        .map(send_email_batch_task)
        .collect()
}

/// The emails a stored message lists, if it is a [`SEND_EMAIL_BATCH`] task
/// (`headers` and `body` as the outbox keeps them).
pub fn batch_members_of(headers: &Map<String, Value>, body: &[u8]) -> Option<Vec<BatchMember>> {
    if headers.get("task")?.as_str()? != SEND_EMAIL_BATCH {
        return None;
    }
    let (_, kwargs, _): (Value, SendEmailBatchKwargs, Value) = serde_json::from_slice(body).ok()?;
    Some(kwargs.messages)
}

/// The [`SEND_EMAIL`] tasks a [`SEND_EMAIL_BATCH`] message stands for, each
/// with the batch's priority; `Err` names what is wrong with its arguments.
pub fn expand_batch(batch: &TaskMessage) -> Result<Vec<TaskMessage>, String> {
    let kwargs: SendEmailBatchKwargs = serde_json::from_value(Value::Object(batch.kwargs.clone()))
        .map_err(|e| format!("invalid {SEND_EMAIL_BATCH} arguments: {e}"))?;
    if kwargs.messages.is_empty() || kwargs.messages.len() > BATCH_MEMBERS {
        return Err(format!(
            "{SEND_EMAIL_BATCH} carries {} emails; 1 to {BATCH_MEMBERS} are allowed",
            kwargs.messages.len()
        ));
    }
    Ok(kwargs
        .messages
        .iter()
        .map(|m| {
            let mut task = send_email_task(m.message_id, &m.task_id);
            task.priority = batch.priority;
            task
        })
        .collect())
}

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
    /// The sender's labels, echoed in the message and its webhook events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::db::messages::Metadata>,
}

/// One address or a list, as callers of the Python platform wrote either:
/// the `to`, `cc` and `bcc` of a [`SEND_EMAIL`] task and of the API's send
/// body. Its OpenAPI schema keeps the name the API has always given it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(as = OneOrMany, description = "One address, or a list of addresses.")
)]
#[serde(untagged)]
pub enum Recipients {
    One(String),
    Many(Vec<String>),
}

impl Recipients {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Recipients::One(one) => std::slice::from_ref(one),
            Recipients::Many(many) => many,
        }
    }

    pub fn into_vec(self) -> Vec<String> {
        match self {
            Recipients::One(one) => vec![one],
            Recipients::Many(many) => many,
        }
    }
}
