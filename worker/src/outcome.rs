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
