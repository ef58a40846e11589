//! A lane: one consumed queue with its own concurrency slots (the task
//! queue, the bulk queue, any extra queue), running the deliveries its
//! consumer hands over and settling each (ack, requeue, re-publish).

mod job;
mod ledger;
mod publish;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use platform::broker::Topology;
use platform::celery::{TaskMessage, TaskState};
use platform::db::messages;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

pub use job::Decoded;
use publish::nack_requeue;
pub use publish::Publisher;

use crate::context::Context;
use crate::outcome::{Outcome, Ran, RunError};
use crate::pool::Permit;
use crate::registry::{Progress, Registry, Report};
use ledger::Ledger;

/// The longest a rate-limited task waits for its turn while holding its
/// delivery; a longer wait goes through the delay ladder.
const RATE_WAIT_IN_PLACE: Duration = Duration::from_secs(1);

pub struct Lane {
    pub ctx: Arc<Context>,
    pub registry: &'static Registry,
    pub topology: Topology,
    pub publisher: Arc<Publisher>,
    /// The queue consumed; delayed messages come back to it.
    pub queue: String,
}

impl Lane {
    /// Decodes a delivery, with Python task names and positional
    /// arguments mapped to ours.
    pub fn decode(&self, delivery: Delivery) -> Decoded {
        let message = TaskMessage::decode(&delivery.properties, &delivery.data).map(|mut m| {
            self.ctx.aliases.apply(&mut m);
            m
        });
        Decoded { delivery, message }
    }

    /// How many sends a decoded delivery stands for (what it weighs
    /// against the lane's concurrency).
    pub fn weight(&self, decoded: &Decoded) -> usize {
        decoded
            .message
            .as_ref()
            .map_or(1, |m| self.registry.weight(m))
    }

    /// Deliveries that arrived together, admitted with `permit` (their
    /// slots) and `group_slot` (one of the groups the lane prepares at
    /// once). Tasks that stand for others (batches) are expanded into
    /// them, and the tasks run together through the registry. A delivery
    /// is acknowledged, and its slots given back, as soon as every task it
    /// carries is settled, while the others run on; it is requeued whole
    /// if any of them could not be (a member already sent is then skipped
    /// by its record's claim). The group slot is given back once the group
    /// is past its database preparation.
    pub async fn handle_deliveries(
        &self,
        deliveries: Vec<Decoded>,
        mut permit: Permit,
        group_slot: OwnedSemaphorePermit,
    ) {
        let mut group_slot = Some(group_slot);
        if !self.ctx.liveness.is_fresh() {
            // Others may soon treat this worker's claims as abandoned: it
            // claims nothing until it has renewed its lease.
            tracing::warn!("liveness lease not renewed; deliveries go back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            for d in &deliveries {
                nack_requeue(&d.delivery).await;
            }
            return;
        }
        let (jobs, early) = job::jobs(self.registry, &deliveries);
        let mut ledger = Ledger::new(deliveries.len(), jobs.iter().map(|j| j.delivery));
        let mut finishing = FuturesUnordered::new();
        for s in early {
            finishing.extend(
                ledger
                    .settle(s)
                    .map(|(d, s)| self.finish(&deliveries, &jobs, d, s)),
            );
        }
        let back: Vec<&str> = deliveries
            .iter()
            .filter_map(|d| d.message.as_ref().ok().map(|m| m.id()))
            .collect();
        self.ctx.worker.back_from_ladder(&back);

        let now = Utc::now();
        let revoked = self.revoked(&jobs).await;
        let mut due: Vec<usize> = Vec::new();
        let mut decided: Vec<job::Settled> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            let outcome = if !self.registry.knows(job.message.task()) {
                // Rejected as Celery's consumer does: never received nor
                // started (its events), only dead-lettered (`task-rejected`).
                Some(Outcome::DeadLetter {
                    reason: self.registry.unknown(job.message.task()),
                })
            } else if revoked[j] {
                Some(self.end_revoked(&job.message, "revoked").await)
            } else {
                self.before_running(&job.message, now).await
            };
            match outcome {
                Some(outcome) => decided.push(job::Settled {
                    delivery: job.delivery,
                    job: Some(j),
                    outcome,
                }),
                None => due.push(j),
            }
        }
        let due = self.rate_limited(&jobs, due, &mut decided).await;
        for s in decided {
            finishing.extend(
                ledger
                    .settle(s)
                    .map(|(d, s)| self.finish(&deliveries, &jobs, d, s)),
            );
        }
        finishing.extend(
            ledger
                .settled_already()
                .into_iter()
                .map(|(d, s)| self.finish(&deliveries, &jobs, d, s)),
        );

        let messages: Vec<&TaskMessage> = due.iter().map(|&j| &jobs[j].message).collect();
        self.ctx.worker.tasks_started(&messages, &self.queue).await;
        let (report, mut progress) = Report::new(messages.len());
        let run = self
            .registry
            .run(&self.ctx, &messages, report)
            .instrument(tracing::info_span!("tasks", queue = %self.queue, count = messages.len()));
        tokio::pin!(run);
        let mut ran = false;
        let mut listening = true;
        let mut reported = vec![false; messages.len()];
        let mut requeued: Vec<usize> = Vec::new();
        let mut database_down = false;
        // The slots the deliveries not yet finished stand for (the permit
        // may hold fewer: a group heavier than the limit is clamped to it).
        let mut unfinished: usize = deliveries.iter().map(|d| self.weight(d)).sum();
        // Handlers only take note; whatever awaits (Redis, the database,
        // RabbitMQ) runs as a future polled beside the run, so that the
        // run's sends and settlements never wait on a report.
        let mut reports = FuturesUnordered::new();
        while listening || !reports.is_empty() || !finishing.is_empty() {
            tokio::select! {
                () = &mut run, if !ran => ran = true,
                Some((d, again)) = finishing.next(), if !finishing.is_empty() => {
                    if again {
                        requeued.push(d);
                    } else {
                        unfinished = unfinished.saturating_sub(self.weight(&deliveries[d]));
                        permit.keep(unfinished);
                    }
                }
                Some((d, settled)) = reports.next(), if !reports.is_empty() => {
                    let ready = match settled {
                        Ok(settled) => ledger.settle(settled),
                        Err(down) => {
                            database_down |= down;
                            ledger.requeue(d)
                        }
                    };
                    finishing.extend(ready.map(|(d, s)| self.finish(&deliveries, &jobs, d, s)));
                }
                progress = progress.recv(), if listening => match progress {
                    // Every report is in once the run is over.
                    None => listening = false,
                    Some(Progress::Sending) => drop(group_slot.take()),
                    Some(Progress::Ran(k, result)) => {
                        if !std::mem::replace(&mut reported[k], true) {
                            reports.push(self.settle_report(&jobs, due[k], result));
                        }
                    }
                },
            }
        }
        drop(group_slot);
        // A task the run never reported is not lost: its delivery goes back.
        for (k, _) in reported.iter().enumerate().filter(|(_, r)| !**r) {
            let message = &jobs[due[k]].message;
            tracing::warn!(
                task_id = message.id(),
                "the task gave no result; it goes back to the queue"
            );
            self.ctx
                .worker
                .tasks_finished(&[message], &self.ctx.results)
                .await;
        }
        requeued.extend(ledger.requeued());
        if requeued.is_empty() {
            return;
        }
        // Not at once: a database or broker that just failed needs a moment.
        let pause = if database_down { 1000 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        requeued.sort_unstable();
        requeued.dedup();
        for d in requeued {
            nack_requeue(&deliveries[d].delivery).await;
        }
    }

    /// A reported task: its end noted for `inspect` and events, and its
    /// delivery with its result as the ledger takes it.
    async fn settle_report(
        &self,
        jobs: &[job::Job],
        j: usize,
        result: Ran,
    ) -> (usize, Result<job::Settled, bool>) {
        let job = &jobs[j];
        self.ctx
            .worker
            .tasks_finished(&[&job.message], &self.ctx.results)
            .await;
        (job.delivery, self.settled(job, j, result).await)
    }

    /// A task's result as its delivery's ledger takes it; `Err(database
    /// down)` when the task could not be settled and its delivery goes
    /// back to the queue.
    async fn settled(&self, job: &job::Job, j: usize, result: Ran) -> Result<job::Settled, bool> {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(RunError::Unavailable(e)) => {
                tracing::warn!(task_id = job.message.id(), error = %e, "database unavailable; the task goes back to the queue");
                return Err(true);
            }
            Err(RunError::Refused(described)) => {
                // Trying again would fail the same way forever.
                tracing::warn!(task_id = job.message.id(), error = %described, "the database refused the task's data");
                let reason = format!("the database refused this task's data: {described}");
                self.fail_record(&job.message, &reason).await;
                Outcome::DeadLetter { reason }
            }
        };
        Ok(job::Settled {
            delivery: job.delivery,
            job: Some(j),
            outcome,
        })
    }

    /// Finishes a delivery whose tasks are all settled: their outcomes
    /// published (retries, delays, dead letters, then callbacks), then the
    /// ack. Whether it must go back to the queue instead (a publication
    /// failed).
    async fn finish(
        &self,
        deliveries: &[Decoded],
        jobs: &[job::Job],
        d: usize,
        settled: Vec<job::Settled>,
    ) -> (usize, bool) {
        let delivery = &deliveries[d];
        for s in settled {
            let job = s.job.map(|j| &jobs[j]);
            let finished = matches!(s.outcome, Outcome::Done | Outcome::DeadLetter { .. });
            let published = match job {
                // A batch member is re-published (or dead-lettered) as its
                // own send_email task, not as the batch.
                Some(job) if job.member => {
                    let (properties, body) = (job.message.properties(), job.message.body());
                    self.publish_outcome(&properties, &body, Some(&job.message), s.outcome)
                        .await
                }
                _ => {
                    let message = job
                        .map(|job| &job.message)
                        .or(delivery.message.as_ref().ok());
                    let dd = &delivery.delivery;
                    self.publish_outcome(&dd.properties, &dd.data, message, s.outcome)
                        .await
                }
            };
            if let Err(e) = published {
                tracing::warn!(error = %e, "re-publication failed; requeueing the original");
                return (d, true);
            }
            // Callbacks, chain steps, chord bodies: once the outcome is
            // recorded, before the ack.
            if let (true, Some(job)) = (finished, job) {
                if let Err(e) = self.follow_up(&job.message).await {
                    tracing::warn!(task_id = job.message.id(), error = %e, "cannot publish the task's callbacks; requeueing it");
                    return (d, true);
                }
            }
        }
        if let Err(e) = delivery.delivery.ack(BasicAckOptions::default()).await {
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
        (d, false)
    }

    /// Stores the task's failure for Python callers and marks the record it
    /// refers to failed (when it has one), so it does not sit `queued` and
    /// come back through the reconciler only to be refused again. Best
    /// effort: the dead letter itself keeps the task for operators.
    async fn fail_record(&self, message: &TaskMessage, reason: &str) {
        if let Err(e) = self
            .ctx
            .results
            .store_failure(message.id(), "EmailDeliveryError", reason)
            .await
        {
            tracing::warn!(error = %e, "cannot store the task result");
        }
        let Some(id) = platform::tasks::record_id(message) else {
            return;
        };
        if let Err(e) = messages::mark_failed(&self.ctx.pool, id, reason, None).await {
            tracing::warn!(message_id = %id, error = %e, "cannot mark the record failed");
        }
    }

    /// The due jobs that may run now under their task types' rate limits
    /// (`celery control rate_limit`, shared by every worker). A job whose
    /// reserved instant is near is waited for here; one further off is
    /// held in the delay ladder until that instant (not in memory). When
    /// Redis cannot be asked, the jobs run: a rate limit is a brake, a
    /// stalled queue is worse.
    async fn rate_limited(
        &self,
        jobs: &[job::Job],
        due: Vec<usize>,
        settled: &mut Vec<job::Settled>,
    ) -> Vec<usize> {
        let tasks: Vec<(&str, &str)> = due
            .iter()
            .map(|&j| (jobs[j].message.task(), jobs[j].message.id()))
            .collect();
        let waits = match self.ctx.rate_limits.admit(&tasks).await {
            Ok(waits) => waits,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read rate limits; running the tasks");
                return due;
            }
        };
        let mut now = Vec::with_capacity(due.len());
        let mut hold = Duration::ZERO;
        let mut noted = (Vec::new(), Vec::new(), Vec::new());
        for (j, wait) in due.into_iter().zip(waits) {
            if wait > RATE_WAIT_IN_PLACE {
                // Its record says why it waits and when it is due back (so
                // the reconciler does not take it for lost).
                if let Some(id) = platform::tasks::record_id(&jobs[j].message) {
                    noted.0.push(id);
                    noted
                        .1
                        .push(format!("rate limit of {}", jobs[j].message.task()));
                    noted.2.push(wait);
                }
                tracing::debug!(
                    task_id = jobs[j].message.id(),
                    ?wait,
                    "rate limited; held until its turn"
                );
                metrics::counter!("tasks_rate_limited_total").increment(1);
                settled.push(job::Settled {
                    delivery: jobs[j].delivery,
                    job: Some(j),
                    outcome: Outcome::Later { delay: wait },
                });
            } else {
                hold = hold.max(wait);
                now.push(j);
            }
        }
        if !noted.0.is_empty() {
            if let Err(e) =
                messages::note_waiting(&self.ctx.pool, &noted.0, &noted.1, &noted.2).await
            {
                tracing::warn!(error = %e, "cannot note why rate-limited records wait");
            }
        }
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        now
    }

    /// Which jobs were revoked (`celery control revoke`). When Redis cannot
    /// be asked, the tasks run: a revoke is a request, a lost email is not.
    async fn revoked(&self, jobs: &[job::Job]) -> Vec<bool> {
        let ids: Vec<&str> = jobs.iter().map(|j| j.message.id()).collect();
        match self.ctx.revoked.which(&ids).await {
            Ok(revoked) => revoked,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read revoked task ids; running the tasks");
                vec![false; jobs.len()]
            }
        }
    }

    /// Ends a task that must not run (`reason`: "revoked" or "expired") as
    /// Celery does: `REVOKED` stored so that `AsyncResult.get()` raises
    /// `TaskRevokedError(reason)`, a `task-revoked` event, and its message
    /// record, if it is still waiting, cancelled with the reason.
    async fn end_revoked(&self, message: &TaskMessage, reason: &str) -> Outcome {
        tracing::info!(task_id = message.id(), reason, "task revoked; not run");
        metrics::counter!("tasks_revoked_total", "reason" => reason.to_string()).increment(1);
        let result = serde_json::json!({
            "exc_type": "TaskRevokedError",
            "exc_message": [reason],
            "exc_module": "celery.exceptions",
        });
        if let Err(e) = self
            .ctx
            .results
            .store(message.id(), TaskState::Revoked, result)
            .await
        {
            tracing::warn!(error = %e, "cannot store the task result");
        }
        let event = serde_json::json!({
            "uuid": message.id(), "terminated": false, "signum": null,
            "expired": reason == "expired",
        });
        self.ctx.worker.emit("task-revoked", event).await;
        let why = format!("task {reason} before it ran");
        let record = platform::tasks::record_id(message);
        if let Err(e) = messages::cancel_task(&self.ctx.pool, record, message.id(), &why).await {
            tracing::warn!(task_id = message.id(), error = %e, "cannot cancel the task's record");
        }
        Outcome::Done
    }

    /// An outcome decided before running: an expired task is revoked, one
    /// due later is held in RabbitMQ (not in memory, so consumer_timeout
    /// cannot fire).
    async fn before_running(&self, message: &TaskMessage, now: DateTime<Utc>) -> Option<Outcome> {
        if message
            .headers
            .expires
            .is_some_and(|expires| expires <= now)
        {
            return Some(self.end_revoked(message, "expired").await);
        }
        // Any wait at all goes back to the ladder: a task never runs early.
        let wait = (message.headers.eta? - now).to_std().ok()?;
        (!wait.is_zero()).then_some(Outcome::Later { delay: wait })
    }
}
