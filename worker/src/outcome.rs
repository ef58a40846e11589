//! What happens to a delivery once its task has run.

use std::time::Duration;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Finished (sent, failed for good, or already handled by an earlier
    /// delivery): acknowledge.
    Done,
    /// Temporary failure: publish again with `retries + 1` after `delay`.
    Retry { delay: Duration },
    /// Not possible yet (no quota, ETA in the future): publish again
    /// unchanged after `delay`.
    Later { delay: Duration },
    /// Cannot be processed at all: move to the dead-letter queue.
    DeadLetter { reason: String },
}

/// Why a task did not reach an outcome.
#[derive(Debug, Clone)]
pub enum RunError {
    /// The database is unreachable: the delivery goes back to the queue
    /// and is tried again.
    Unavailable(String),
    /// The database refused the task's data (what it said, without the
    /// data): trying again would fail the same way forever.
    Refused(String),
}

impl From<sqlx::Error> for RunError {
    fn from(e: sqlx::Error) -> Self {
        if platform::db::is_transient(&e) {
            RunError::Unavailable(e.to_string())
        } else {
            RunError::Refused(platform::db::describe(&e))
        }
    }
}

/// What running one task gave.
pub type Ran = Result<Outcome, RunError>;
