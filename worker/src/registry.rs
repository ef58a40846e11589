//! The tasks a worker runs, by Celery task name, in the manner of
//! crates.io's background jobs: each task is one type implementing
//! [`Task`] in its own file under `tasks/`, listed once in `tasks/mod.rs`.
//! The lane runs whatever the registry gives it and knows no task by name.

use std::sync::Arc;

use futures_util::future::{join_all, BoxFuture};
use platform::celery::TaskMessage;
use tokio::sync::mpsc;

use crate::context::Context;
use crate::outcome::{Outcome, Ran};

pub trait Task: Sync {
    /// The Celery task name.
    fn name(&self) -> &'static str;

    /// How many sends one message stands for: its weight against a lane's
    /// concurrency.
    fn weight(&self, _message: &TaskMessage) -> usize {
        1
    }

    /// A task that stands for others (a batch) returns them: they run in
    /// its place, each under its own task id; `Err` is why it cannot be
    /// expanded (the message is dead-lettered).
    fn expand(&self, _message: &TaskMessage) -> Option<Result<Vec<TaskMessage>, String>> {
        None
    }

    /// Runs the messages of this task that arrived together, reporting
    /// each message's result once, as soon as it is known (so that its
    /// delivery is acknowledged and its slot taken by the next one while
    /// the others still run).
    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        messages: &'a [&'a TaskMessage],
        report: Report,
    ) -> BoxFuture<'a, ()>;
}

/// What a running group of tasks tells its lane.
#[derive(Debug)]
pub enum Progress {
    /// The group is past its database preparation and only sends now:
    /// the lane may prepare its next group.
    Sending,
    /// The result of the message at this index of the lane's list.
    Ran(usize, Ran),
}

/// Where a task reports its messages' results: indices are the task's
/// own (its `messages`), mapped to the lane's.
#[derive(Clone)]
pub struct Report {
    tx: mpsc::UnboundedSender<Progress>,
    indices: Arc<[usize]>,
}

impl Report {
    /// A report for `count` messages, indexed as given, and what it reports.
    pub fn new(count: usize) -> (Report, mpsc::UnboundedReceiver<Progress>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let report = Report {
            tx,
            indices: (0..count).collect(),
        };
        (report, rx)
    }

    /// The report for a subset: its index `i` is this one's `indices[i]`.
    pub fn subset(&self, indices: &[usize]) -> Report {
        Report {
            tx: self.tx.clone(),
            indices: indices.iter().map(|&i| self.indices[i]).collect(),
        }
    }

    /// The result of the message at index `i`. A lane that stopped
    /// listening has nothing left to acknowledge: the result is dropped.
    pub fn ran(&self, i: usize, ran: Ran) {
        let _ = self.tx.send(Progress::Ran(self.indices[i], ran));
    }

    pub fn sending(&self) {
        let _ = self.tx.send(Progress::Sending);
    }

    /// Every result at once, in order (a task that has nothing to stream).
    pub fn all(&self, ran: Vec<Ran>) {
        for (i, ran) in ran.into_iter().enumerate() {
            self.ran(i, ran);
        }
    }
}

pub struct Registry {
    tasks: &'static [&'static dyn Task],
}

impl Registry {
    pub const fn new(tasks: &'static [&'static dyn Task]) -> Self {
        Registry { tasks }
    }

    /// What `celery inspect registered` lists.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|t| t.name()).collect()
    }

    /// Whether this worker runs tasks called `name`.
    pub fn knows(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Why a task this worker does not run is dead-lettered.
    pub fn unknown(&self, name: &str) -> String {
        format!("unknown task {name:?}; this worker runs {:?}", self.names())
    }

    fn get(&self, name: &str) -> Option<&'static dyn Task> {
        self.tasks.iter().copied().find(|t| t.name() == name)
    }

    pub fn weight(&self, message: &TaskMessage) -> usize {
        self.get(message.task()).map_or(1, |t| t.weight(message))
    }

    pub fn expand(&self, message: &TaskMessage) -> Option<Result<Vec<TaskMessage>, String>> {
        self.get(message.task()).and_then(|t| t.expand(message))
    }

    /// Runs messages that arrived together, each task's together,
    /// reporting each message's result once. A task this worker does not
    /// run is dead-lettered.
    pub async fn run(&self, ctx: &Context, messages: &[&TaskMessage], report: Report) {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match groups.iter_mut().find(|(name, _)| *name == m.task()) {
                Some((_, indices)) => indices.push(i),
                None => groups.push((m.task(), vec![i])),
            }
        }
        join_all(groups.iter().map(|(name, indices)| {
            let report = report.subset(indices);
            async move {
                let group: Vec<&TaskMessage> = indices.iter().map(|&i| messages[i]).collect();
                match self.get(name) {
                    Some(task) => task.run(ctx, &group, report).await,
                    None => report.all(
                        group
                            .iter()
                            .map(|m| {
                                Ok(Outcome::DeadLetter {
                                    reason: self.unknown(m.task()),
                                })
                            })
                            .collect(),
                    ),
                }
            }
        }))
        .await;
    }
}
