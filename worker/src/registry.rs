//! The tasks a worker runs, by Celery task name, in the manner of
//! crates.io's background jobs: each task is one type implementing
//! [`Task`] in its own file under `tasks/`, listed once in `tasks/mod.rs`.
//! The lane runs whatever the registry gives it and knows no task by name.

use futures_util::future::{join_all, BoxFuture};
use platform::celery::TaskMessage;

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

    /// Runs the messages of this task that arrived together; one result
    /// per message, in order.
    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        messages: &'a [&'a TaskMessage],
    ) -> BoxFuture<'a, Vec<Ran>>;
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

    /// Runs messages that arrived together, each task's together; one
    /// result per message, in order. A task this worker does not run is
    /// dead-lettered.
    pub async fn run(&self, ctx: &Context, messages: &[&TaskMessage]) -> Vec<Ran> {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match groups.iter_mut().find(|(name, _)| *name == m.task()) {
                Some((_, indices)) => indices.push(i),
                None => groups.push((m.task(), vec![i])),
            }
        }
        let ran = join_all(groups.iter().map(|(name, indices)| async move {
            let group: Vec<&TaskMessage> = indices.iter().map(|&i| messages[i]).collect();
            match self.get(name) {
                Some(task) => task.run(ctx, &group).await,
                None => group
                    .iter()
                    .map(|m| {
                        Ok(Outcome::DeadLetter {
                            reason: self.unknown(m.task()),
                        })
                    })
                    .collect(),
            }
        }))
        .await;
        let mut results: Vec<Option<Ran>> = messages.iter().map(|_| None).collect();
        for ((_, indices), outcomes) in groups.iter().zip(ran) {
            for (&i, outcome) in indices.iter().zip(outcomes) {
                results[i] = Some(outcome);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(crate::outcome::RunError::Unavailable(
                        "task gave no result".into(),
                    ))
                })
            })
            .collect()
    }
}
