//! `notifications.send_email`: one email, by record id (API-published) or
//! by its arguments (Python producers). Plain sends that arrive together
//! go through the grouped driver; everything else, and whatever it hands
//! back, through the single driver (see `delivery/`).

use futures_util::future::{join_all, BoxFuture};
use platform::celery::TaskMessage;
use tracing::Instrument;
use uuid::Uuid;

use crate::context::Context;
use crate::delivery::{grouped, prepare, single};
use crate::outcome::{Ran, RunError};
use crate::registry::Task;

pub struct SendEmail;

impl Task for SendEmail {
    fn name(&self) -> &'static str {
        platform::tasks::SEND_EMAIL
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        messages: &'a [&'a TaskMessage],
    ) -> BoxFuture<'a, Vec<Ran>> {
        Box::pin(run(ctx, messages))
    }
}

async fn run(ctx: &Context, messages: &[&TaskMessage]) -> Vec<Ran> {
    let mut results: Vec<Option<Ran>> = messages.iter().map(|_| None).collect();
    let mut groupable: Vec<(usize, Uuid)> = Vec::new();
    let mut one_by_one: Vec<usize> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match prepare::groupable_record_id(m) {
            Some(id) => groupable.push((i, id)),
            None => one_by_one.push(i),
        }
    }
    if groupable.len() == 1 {
        one_by_one.extend(groupable.drain(..).map(|(i, _)| i));
    }
    if !groupable.is_empty() {
        let members: Vec<(Uuid, &TaskMessage)> = groupable
            .iter()
            .map(|(i, id)| (*id, messages[*i]))
            .collect();
        match grouped::run(ctx, &members).await {
            Ok(outcomes) => {
                for ((i, _), outcome) in groupable.into_iter().zip(outcomes) {
                    match outcome {
                        Some(outcome) => results[i] = Some(Ok(outcome)),
                        None => one_by_one.push(i),
                    }
                }
            }
            Err(e) if platform::db::is_transient(&e) => {
                tracing::warn!(error = %e, "database unavailable; the group goes back to the queue");
                for (i, _) in groupable {
                    results[i] = Some(Err(RunError::Unavailable(e.to_string())));
                }
            }
            Err(e) => {
                // One message's data, not the database: each goes its own
                // way, so the bad one fails alone.
                tracing::warn!(error = %e, "the database refused a group; running its tasks one by one");
                one_by_one.extend(groupable.into_iter().map(|(i, _)| i));
            }
        }
    }
    let ran = join_all(one_by_one.iter().map(|&i| {
        let span = tracing::info_span!(
            "send_email",
            task_id = messages[i].id(),
            message_id = tracing::field::Empty,
            account = tracing::field::Empty,
        );
        single::run(ctx, messages[i]).instrument(span)
    }))
    .await;
    for (i, ran) in one_by_one.into_iter().zip(ran) {
        results[i] = Some(ran.map_err(RunError::from));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RunError::Unavailable("no result".into()))))
        .collect()
}
