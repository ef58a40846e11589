//! `notifications.send_email_batch`: the API's group-committed sends, up to
//! 50 emails in one broker message. It is expanded into the
//! `notifications.send_email` tasks it stands for, each under the task id
//! the API returned for that email, before anything runs; the delivery is
//! acknowledged once all of them are settled.

use futures_util::future::BoxFuture;
use platform::celery::TaskMessage;
use platform::tasks::{expand_batch, BATCH_MEMBERS, SEND_EMAIL_BATCH};

use crate::context::Context;
use crate::outcome::Outcome;
use crate::registry::{Report, Task};

pub struct SendEmailBatch;

impl Task for SendEmailBatch {
    fn name(&self) -> &'static str {
        SEND_EMAIL_BATCH
    }

    fn weight(&self, message: &TaskMessage) -> usize {
        message
            .kwargs
            .get("messages")
            .and_then(|v| v.as_array())
            .map_or(1, |a| a.len().clamp(1, BATCH_MEMBERS))
    }

    fn expand(&self, message: &TaskMessage) -> Option<Result<Vec<TaskMessage>, String>> {
        Some(expand_batch(message))
    }

    fn run<'a>(
        &'a self,
        _: &'a Context,
        messages: &'a [&'a TaskMessage],
        report: Report,
    ) -> BoxFuture<'a, ()> {
        // Expanded before running; a batch inside a batch is not a thing.
        let refused = messages
            .iter()
            .map(|_| {
                Ok(Outcome::DeadLetter {
                    reason: "a send_email_batch task cannot be a member of another".into(),
                })
            })
            .collect();
        report.all(refused);
        Box::pin(async {})
    }
}
