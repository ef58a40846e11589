//! Which of a group's deliveries are settled: a delivery is finished
//! (its outcomes published, then acknowledged) once every task it carries
//! is settled, while the group's other tasks may still run; or requeued
//! whole if any of them could not be settled.

use super::job::Settled;

pub(super) struct Ledger {
    /// Per delivery: its tasks not yet settled.
    unsettled: Vec<usize>,
    /// Per delivery: what its settled tasks came to.
    settled: Vec<Vec<Settled>>,
    /// Per delivery: whether it goes back to the queue.
    requeue: Vec<bool>,
    /// Per delivery: whether it was handed out to be finished.
    handed: Vec<bool>,
}

impl Ledger {
    /// A ledger for `deliveries` deliveries carrying tasks, each named by
    /// the index of its delivery.
    pub fn new(deliveries: usize, tasks: impl IntoIterator<Item = usize>) -> Self {
        let mut unsettled = vec![0; deliveries];
        for delivery in tasks {
            unsettled[delivery] += 1;
        }
        Ledger {
            unsettled,
            settled: (0..deliveries).map(|_| Vec::new()).collect(),
            requeue: vec![false; deliveries],
            handed: vec![false; deliveries],
        }
    }

    /// Records a settled task (or a delivery settled whole, `job` None);
    /// its delivery's outcomes if that was its last task.
    pub fn settle(&mut self, settled: Settled) -> Option<(usize, Vec<Settled>)> {
        let d = settled.delivery;
        if settled.job.is_some() {
            self.unsettled[d] = self.unsettled[d].saturating_sub(1);
        }
        self.settled[d].push(settled);
        self.ready(d)
    }

    /// A task that could not be settled: its delivery goes back whole.
    pub fn requeue(&mut self, delivery: usize) -> Option<(usize, Vec<Settled>)> {
        self.requeue[delivery] = true;
        self.unsettled[delivery] = self.unsettled[delivery].saturating_sub(1);
        self.ready(delivery)
    }

    /// The deliveries settled before anything ran (nothing of theirs is
    /// due), with their outcomes.
    pub fn settled_already(&mut self) -> Vec<(usize, Vec<Settled>)> {
        (0..self.unsettled.len())
            .filter_map(|d| self.ready(d))
            .collect()
    }

    /// Deliveries that go back to the queue (requeued, or never settled).
    pub fn requeued(&self) -> Vec<usize> {
        (0..self.unsettled.len())
            .filter(|&d| self.requeue[d] || self.unsettled[d] > 0)
            .collect()
    }

    /// A delivery with nothing left unsettled that is not going back,
    /// handed out once.
    fn ready(&mut self, d: usize) -> Option<(usize, Vec<Settled>)> {
        if self.unsettled[d] > 0 || self.requeue[d] || self.handed[d] {
            return None;
        }
        self.handed[d] = true;
        Some((d, std::mem::take(&mut self.settled[d])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    fn done(delivery: usize, job: usize) -> Settled {
        Settled {
            delivery,
            job: Some(job),
            outcome: Outcome::Done,
        }
    }

    #[test]
    fn a_delivery_is_handed_out_once_when_its_last_task_is_settled() {
        // Delivery 0 carries tasks 0 and 1 (a batch), delivery 1 task 2.
        let mut ledger = Ledger::new(2, [0, 0, 1]);
        assert!(ledger.settled_already().is_empty());
        assert!(ledger.settle(done(0, 0)).is_none());
        let (d, settled) = ledger.settle(done(1, 2)).expect("delivery 1 is done");
        assert_eq!((d, settled.len()), (1, 1));
        let (d, settled) = ledger.settle(done(0, 1)).expect("delivery 0 is done");
        assert_eq!((d, settled.len()), (0, 2));
        assert!(ledger.settled_already().is_empty(), "handed out once");
        assert!(ledger.requeued().is_empty());
    }

    #[test]
    fn a_task_that_cannot_be_settled_sends_its_whole_delivery_back() {
        let mut ledger = Ledger::new(2, [0, 0, 1]);
        assert!(ledger.settle(done(0, 0)).is_none());
        assert!(ledger.requeue(0).is_none(), "never finished");
        // A delivery settled whole before anything ran (undecodable).
        let undecodable = Settled {
            delivery: 1,
            job: None,
            outcome: Outcome::DeadLetter {
                reason: "undecodable".into(),
            },
        };
        assert!(ledger.settle(undecodable).is_none(), "its task is due");
        assert_eq!(ledger.requeued(), vec![0, 1], "1 was never settled");
    }

    #[test]
    fn a_delivery_with_no_task_is_finished_at_once() {
        // Delivery 0 is a batch with no members, delivery 1 is due.
        let mut ledger = Ledger::new(2, [1]);
        let ready = ledger.settled_already();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0, 0);
        assert!(ready[0].1.is_empty());
    }
}
