//! `notifications.send_email`: one email, by record id (API-published) or
//! by its arguments (Python producers). The messages of this task that
//! arrived together go through the delivery pipeline together
//! (`delivery::pipeline`).

use futures_util::future::BoxFuture;
use platform::celery::TaskMessage;

use crate::context::Context;
use crate::delivery;
use crate::registry::{Report, Task};

pub struct SendEmail;

impl Task for SendEmail {
    fn name(&self) -> &'static str {
        platform::tasks::SEND_EMAIL
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        messages: &'a [&'a TaskMessage],
        report: Report,
    ) -> BoxFuture<'a, ()> {
        Box::pin(delivery::deliver(ctx, messages, report))
    }
}
