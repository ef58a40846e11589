//! Preparing a send task: the record it refers to, or the email a Python
//! producer passed as arguments, checked and recorded under the task's id
//! (so a redelivery finds it).

use platform::celery::TaskMessage;
use platform::db::messages::{self, MessageRecord, NewMessage};
use platform::mail::EmailAddress;
use platform::tasks::SendEmailKwargs;
use uuid::Uuid;

use crate::context::Context;

/// The record id of a task the grouped driver can take: an API-published
/// send (by `message_id`) that is due.
pub fn groupable_record_id(message: &TaskMessage) -> Option<Uuid> {
    if message.task() != platform::tasks::SEND_EMAIL || message.headers.eta.is_some() {
        return None;
    }
    platform::tasks::record_id(message)
}

/// Finds the record the task refers to, or records the email a Python
/// producer passed directly. `Ok(Err(reason))` means the task's arguments
/// are unusable.
pub async fn load_or_record(
    ctx: &Context,
    message: &TaskMessage,
) -> Result<Result<MessageRecord, String>, sqlx::Error> {
    let kwargs: SendEmailKwargs =
        match serde_json::from_value(serde_json::Value::Object(message.kwargs.clone())) {
            Ok(k) => k,
            Err(e) => return Ok(Err(format!("invalid arguments: {e}"))),
        };
    if let Some(id) = kwargs.message_id {
        return Ok(messages::get(&ctx.pool, id)
            .await?
            .ok_or_else(|| format!("message {id} does not exist")));
    }
    let new = match new_message_from_kwargs(message.id(), kwargs) {
        Ok(n) => n,
        Err(reason) => return Ok(Err(reason)),
    };
    Ok(Ok(messages::insert_for_task(&ctx.pool, &new).await?))
}

pub fn new_message_from_kwargs(
    task_id: &str,
    kwargs: SendEmailKwargs,
) -> Result<NewMessage, String> {
    let addresses = |list: Option<platform::tasks::Recipients>| -> Result<Vec<String>, String> {
        list.map(|l| l.into_vec())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                EmailAddress::parse(a)
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string())
            })
            .collect()
    };
    let to = addresses(kwargs.to)?;
    if to.is_empty() {
        return Err("`to` is required (or `message_id`)".into());
    }
    let subject = kwargs.subject.unwrap_or_default();
    if subject.chars().any(char::is_control) {
        return Err("subject must not contain control characters".into());
    }
    let content = kwargs
        .content
        .filter(|c| !c.trim().is_empty())
        .ok_or("`content` is required")?;
    Ok(NewMessage {
        id: Uuid::now_v7(),
        task_id: task_id.to_string(),
        api_key_id: None,
        to,
        cc: addresses(kwargs.cc)?,
        bcc: addresses(kwargs.bcc)?,
        reply_to: kwargs
            .reply_to
            .map(|r| {
                EmailAddress::parse(&r)
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string())
            })
            .transpose()?,
        from_name: kwargs
            .from_name
            .filter(|n| !n.chars().any(char::is_control)),
        subject,
        html_body: content,
        text_body: kwargs.text,
    })
}
