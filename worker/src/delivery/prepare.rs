//! Preparing a send task: the record it refers to, or the email a Python
//! producer passed as arguments, checked with the API's rules and recorded
//! under the task's id (so a redelivery finds it).

use platform::celery::TaskMessage;
use platform::db::messages::{self, NewMessage};
use platform::mail::rules::{self, Given, Violation};
use platform::tasks::{Recipients, SendEmailKwargs};
use uuid::Uuid;

use crate::context::Context;

/// What preparing a task gave.
#[derive(Debug)]
pub enum Prepared {
    /// The id of the record to deliver (whether it exists, and in what
    /// state, the claim finds out).
    Record(Uuid),
    /// The task cannot be run as given: it fails for good, with this
    /// reason (see `policy::refuse`); `recorded` when a `failed` message
    /// record says so.
    Refused { reason: String, recorded: bool },
}

/// The record the task refers to, or the email a Python producer passed
/// directly, recorded under the task's id once it keeps the rules the
/// API's sends keep (`platform::mail::rules`). An email that breaks one is
/// recorded `failed` with the broken rule as its error (a redelivery finds
/// it so).
#[tracing::instrument(level = "debug", skip_all, fields(task_id = message.id()))]
pub async fn prepare(ctx: &Context, message: &TaskMessage) -> Result<Prepared, sqlx::Error> {
    let kwargs: SendEmailKwargs =
        match serde_json::from_value(serde_json::Value::Object(message.kwargs.clone())) {
            Ok(k) => k,
            Err(e) => return Ok(refused(format!("invalid arguments: {e}"))),
        };
    if let Some(id) = kwargs.message_id {
        return Ok(Prepared::Record(id));
    }
    match new_message_from_kwargs(message.id(), &kwargs, ctx.settings.email_max_size) {
        Ok(new) => Ok(Prepared::Record(
            messages::insert_for_task(&ctx.pool, &new).await?.id,
        )),
        Err(violation) => {
            let reason = format!("invalid arguments: {violation}");
            let refused = refused_message(message.id(), kwargs);
            messages::insert_failed_for_task(&ctx.pool, &refused, &reason).await?;
            Ok(Prepared::Refused {
                reason,
                recorded: true,
            })
        }
    }
}

/// Refused before anything is recorded.
fn refused(reason: String) -> Prepared {
    Prepared::Refused {
        reason,
        recorded: false,
    }
}

fn listed(recipients: Option<&Recipients>) -> &[String] {
    recipients.map_or(&[][..], Recipients::as_slice)
}

/// The email a Python producer's arguments describe, if it keeps every
/// rule an API send keeps.
pub fn new_message_from_kwargs(
    task_id: &str,
    kwargs: &SendEmailKwargs,
    email_max_size: usize,
) -> Result<NewMessage, Violation> {
    let content = kwargs.content.as_deref().unwrap_or_default();
    let checked = rules::check(
        Given {
            to: listed(kwargs.to.as_ref()),
            cc: listed(kwargs.cc.as_ref()),
            bcc: listed(kwargs.bcc.as_ref()),
            subject: kwargs.subject.as_deref().unwrap_or_default(),
            content,
            text: kwargs.text.as_deref(),
            reply_to: kwargs.reply_to.as_deref(),
            from_name: kwargs.from_name.as_deref(),
        },
        email_max_size,
    )?;
    let metadata = rules::metadata(kwargs.metadata.as_ref())?;
    Ok(NewMessage {
        id: Uuid::now_v7(),
        task_id: task_id.to_string(),
        api_key_id: None,
        to: checked.to,
        cc: checked.cc,
        bcc: checked.bcc,
        reply_to: checked.reply_to,
        from_name: checked.from_name,
        subject: checked.subject,
        html_body: content.to_string(),
        text_body: kwargs.text.clone(),
        metadata,
        unsubscribe_scope: None,
    })
}

/// What is recorded of an email that broke a rule: whom it was for and its
/// subject as given (cut to the subject's limit), not its body.
fn refused_message(task_id: &str, kwargs: SendEmailKwargs) -> NewMessage {
    let given = |r: Option<Recipients>| r.map(Recipients::into_vec).unwrap_or_default();
    NewMessage {
        id: Uuid::now_v7(),
        task_id: task_id.to_string(),
        api_key_id: None,
        to: given(kwargs.to),
        cc: given(kwargs.cc),
        bcc: given(kwargs.bcc),
        reply_to: None,
        from_name: None,
        subject: kwargs
            .subject
            .unwrap_or_default()
            .chars()
            .take(rules::MAX_SUBJECT)
            .collect(),
        html_body: String::new(),
        text_body: None,
        metadata: None,
        unsubscribe_scope: None,
    }
}
