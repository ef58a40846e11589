//! The Celery tasks this worker runs: one file each, listed here once.

mod send_email;
mod send_email_batch;

use crate::registry::{Registry, Task};

static TASKS: [&dyn Task; 2] = [&send_email::SendEmail, &send_email_batch::SendEmailBatch];

/// Every task this worker runs.
pub static REGISTRY: Registry = Registry::new(&TASKS);
