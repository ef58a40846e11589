//! Deliveries turned into the tasks they carry.

use lapin::message::Delivery;
use platform::celery::{DecodeError, TaskMessage};

use crate::outcome::Outcome;
use crate::registry::Registry;

/// A delivery as the consumer hands it over, decoded once.
pub struct Decoded {
    pub delivery: Delivery,
    pub message: Result<TaskMessage, DecodeError>,
}

/// One task to run: a delivery's own task, or one of those it stands for.
pub(super) struct Job {
    /// Index of the delivery that carried it.
    pub delivery: usize,
    pub message: TaskMessage,
    /// Expanded from a batch: re-publications and dead letters carry this
    /// task, not the batch.
    pub member: bool,
}

/// What became of a delivery's task (or of the delivery itself, `job`
/// `None`, when it could not even be decoded or expanded).
pub(super) struct Settled {
    pub delivery: usize,
    pub job: Option<usize>,
    pub outcome: Outcome,
}

/// The tasks the deliveries carry, and the deliveries already settled
/// (undecodable, or a batch that cannot be expanded).
pub(super) fn jobs(registry: &Registry, deliveries: &[Decoded]) -> (Vec<Job>, Vec<Settled>) {
    let mut jobs = Vec::new();
    let mut settled = Vec::new();
    for (d, decoded) in deliveries.iter().enumerate() {
        let dead = |reason: String| Settled {
            delivery: d,
            job: None,
            outcome: Outcome::DeadLetter { reason },
        };
        match &decoded.message {
            Err(e) => settled.push(dead(format!("undecodable message: {e}"))),
            Ok(m) => match registry.expand(m) {
                Some(Ok(members)) => jobs.extend(members.into_iter().map(|message| Job {
                    delivery: d,
                    message,
                    member: true,
                })),
                Some(Err(reason)) => settled.push(dead(reason)),
                None => jobs.push(Job {
                    delivery: d,
                    message: m.clone(),
                    member: false,
                }),
            },
        }
    }
    (jobs, settled)
}
