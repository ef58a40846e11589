//! The tasks this worker executes, by Celery task name.

pub mod send_batch;
mod send_email;

use platform::celery::TaskMessage;

use crate::context::Context;
use crate::outcome::Outcome;

/// Names this worker registers (what `celery inspect registered` will list).
/// `send_email_batch` is expanded by the lane into `send_email` tasks
/// before anything runs, so [`run`] never sees it.
pub const REGISTERED: &[&str] = &[
    platform::tasks::SEND_EMAIL,
    platform::tasks::SEND_EMAIL_BATCH,
];

/// Runs the task a message names. An `Err` is an infrastructure failure
/// (database unreachable): the delivery is requeued and tried again.
pub async fn run(ctx: &Context, message: &TaskMessage) -> Result<Outcome, sqlx::Error> {
    match message.task() {
        platform::tasks::SEND_EMAIL => send_email::run(ctx, message).await,
        other => Ok(Outcome::DeadLetter {
            reason: format!("unknown task {other:?}; this worker runs {REGISTERED:?}"),
        }),
    }
}
