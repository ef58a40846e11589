//! Consumes the task queues: one lane per queue (transactional and bulk),
//! each with its own prefetch and concurrency, so a bulk backlog never
//! holds up transactional mail. Deliveries are acknowledged only after
//! their outcome is recorded; delays are held in RabbitMQ, not in memory.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use platform::broker::{self, Topology};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::lane::{Lane, Publisher};
use crate::remote_control::{self, ControlContext};

/// How long in-flight tasks may run on after SIGTERM before the worker
/// exits (their deliveries are then redelivered to another worker).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Groups of deliveries one lane runs at once. Enough that a stalled SMTP
/// server in one group does not hold up the others; few enough that groups grow under
/// load instead of splitting into many small ones, each paying the same
/// database round trips.
const GROUPS_IN_FLIGHT: usize = 4;

pub struct Consumer {
    ctx: Arc<Context>,
    topology: Topology,
    node_name: String,
}

impl Consumer {
    pub fn new(ctx: Arc<Context>, node_name: String) -> Self {
        let topology = Topology::new(ctx.settings.queues.clone());
        Consumer {
            ctx,
            topology,
            node_name,
        }
    }

    /// Consumes until `shutdown`, reconnecting whenever the broker goes away.
    /// Gives up only on a mistake reconnecting cannot cure (a task queue
    /// declared with other arguments).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), broker::BrokerError> {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "worker lost RabbitMQ; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), broker::BrokerError> {
        let conn = Arc::new(broker::connect(&self.ctx.settings, &self.node_name).await?);
        let result = self.consume(&conn, shutdown).await;
        broker::close(&conn, 200, "worker stopping").await;
        result
    }

    async fn consume(
        &self,
        conn: &Arc<Connection>,
        shutdown: &CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let setup = conn.create_channel().await?;
        self.topology.declare_task_queue(&setup).await?;
        self.topology.declare_dead_letter_queue(&setup).await?;
        for queue in self.topology.names.consumed() {
            self.topology.declare_ladder(&setup, &queue).await?;
        }
        let publish_channel = conn.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let publisher = Arc::new(Publisher::new(publish_channel, conn.clone()));

        // A lane that fails stops the other, and the session reconnects.
        let stop = shutdown.child_token();
        let lanes = self.topology.names.consumed().into_iter().map(|queue| {
            let lane = Lane {
                ctx: self.ctx.clone(),
                registry: &crate::tasks::REGISTRY,
                topology: self.topology.clone(),
                publisher: publisher.clone(),
                queue,
            };
            self.pump(conn, lane, stop.clone())
        });
        let control = self.remote_control(conn, shutdown, stop.clone());
        let (lanes, control) = tokio::join!(futures_util::future::join_all(lanes), control);
        lanes.into_iter().fold(control, |all, lane| all.and(lane))
    }

    /// `celery inspect`/`control` and events, on this session's connection.
    async fn remote_control(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
        stop: CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let settings = &self.ctx.settings;
        let ctx = ControlContext {
            registered: crate::tasks::REGISTRY.names(),
            concurrency: settings.worker_concurrency,
            prefetch: settings.prefetch_count,
            timeouts: [
                settings.task_soft_time_limit.as_secs_f64(),
                settings.task_time_limit.as_secs_f64(),
            ],
            broker: remote_control::broker_info(settings.broker_url(), settings.heartbeat),
            queues: self.topology.names.consumed(),
            shutdown: shutdown.clone(),
            revoked: self.ctx.revoked.clone(),
        };
        // Remote control is a side service: if it fails (a conflicting
        // pidbox declaration, a closed channel), the lanes keep consuming;
        // a lost connection ends them on its own.
        if let Err(e) =
            remote_control::serve(conn, self.ctx.worker.clone(), ctx, stop.clone()).await
        {
            tracing::warn!(error = %e, "remote control unavailable for this session");
            stop.cancelled().await;
        }
        Ok(())
    }

    /// Feeds one queue's deliveries to its lane, in groups of whatever has
    /// already arrived, never more in flight than the concurrency.
    async fn pump(
        &self,
        conn: &Connection,
        lane: Lane,
        stop: CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let result = self.pump_inner(conn, Arc::new(lane), &stop).await;
        stop.cancel();
        result
    }

    async fn pump_inner(
        &self,
        conn: &Connection,
        lane: Arc<Lane>,
        stop: &CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.ctx.settings.prefetch_count, BasicQosOptions::default())
            .await?;
        let tag = format!("{}/{}", self.node_name, lane.queue);
        let mut deliveries = channel
            .basic_consume(
                &lane.queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %lane.queue, node = %self.node_name, "consuming");

        let concurrency = self.ctx.settings.worker_concurrency;
        let gather = (concurrency / 2).max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let group_slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
        let outcome = loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = stop.cancelled() => break Ok(()),
            };
            let mut group = match next {
                Some(Ok(d)) => vec![lane.decode(d)],
                Some(Err(e)) => break Err(e.into()),
                None => {
                    break Err(
                        lapin::Error::InvalidChannelState(lapin::ChannelState::Closed).into(),
                    )
                }
            };
            // At most a few groups at once: while they run, deliveries
            // gather, so under load each group's statements serve many
            // emails; alone, a delivery finds a free slot and waits for
            // nothing.
            let group_slot = tokio::select! {
                slot = group_slots.clone().acquire_owned() => slot,
                _ = stop.cancelled() => break Ok(()),
            };
            let Ok(group_slot) = group_slot else {
                break Ok(());
            };
            // Whatever else has already arrived joins this group, up to half
            // the concurrency in sends (a batch task counts each of its
            // emails), so that one group's database round trips overlap
            // another's SMTP sends instead of every group waiting in turn.
            let mut weight = lane.weight(&group[0]);
            while weight < gather {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => {
                        let d = lane.decode(d);
                        weight += lane.weight(&d);
                        group.push(d);
                    }
                    _ => break,
                }
            }
            let permits = weight.min(concurrency) as u32;
            let Ok(permits) = slots.clone().acquire_many_owned(permits).await else {
                break Ok(());
            };
            let lane = lane.clone();
            tokio::spawn(async move {
                lane.handle_deliveries(group).await;
                drop((permits, group_slot));
            });
        };

        // Stop taking work, then let in-flight tasks finish within the grace
        // period; unacknowledged prefetched deliveries return to the queue
        // when the channel closes.
        let _ = channel
            .basic_cancel(&tag, BasicCancelOptions::default())
            .await;
        let drained =
            tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(concurrency as u32)).await;
        if drained.is_err() {
            tracing::warn!(queue = %lane.queue, "in-flight tasks did not finish within the grace period; RabbitMQ will redeliver them");
        }
        let _ = channel.close(200, "lane stopping").await;
        outcome
    }
}
