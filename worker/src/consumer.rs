//! Consumes the task queues: one lane per queue (transactional and bulk),
//! each with its own prefetch and concurrency, so a bulk backlog never
//! holds up transactional mail. Deliveries are acknowledged only after
//! their outcome is recorded; delays are held in RabbitMQ, not in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use platform::broker::{self, Topology, TopologyError};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::consumed_queues::{ConsumedQueues, QueueSpec};
use crate::context::Context;
use crate::lane::{Decoded, Lane, Publisher};
use crate::pool::Slots;
use crate::remote_control::{self, ControlContext};

/// How long in-flight tasks may run on after SIGTERM before the worker
/// exits (their deliveries are then redelivered to another worker).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Groups of deliveries one lane prepares at once (records claimed,
/// quota taken), each of up to a quarter of the concurrency. Enough that
/// one group's database round trips overlap the others'; few enough that
/// under load deliveries gather while they run, so that each group's
/// statements serve many emails. A group is past its preparation once its
/// sends start: it makes room for the next, and each of its deliveries
/// gives back its slot as it is settled.
const GROUPS_IN_FLIGHT: usize = 4;

/// How long, while the lane is busy, a group waits for more deliveries to
/// join it. Sends settled one by one free slots one by one: without it,
/// each freed slot would start a group of one, paying for a whole
/// group's statements. An idle lane starts at once.
const GATHER_LINGER: Duration = Duration::from_millis(10);

type LaneRun<'a> = BoxFuture<'a, (String, Result<(), broker::BrokerError>)>;

pub struct Consumer {
    ctx: Arc<Context>,
    topology: Topology,
    node_name: String,
    /// What is consumed: kept across reconnects, changed over remote
    /// control.
    queues: Arc<ConsumedQueues>,
}

impl Consumer {
    pub fn new(ctx: Arc<Context>, node_name: String) -> Self {
        let topology = Topology::new(ctx.settings.queues.clone());
        let queues = Arc::new(ConsumedQueues::new(&topology.names.consumed()));
        Consumer {
            ctx,
            topology,
            node_name,
            queues,
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
        self.topology.declare_dead_letter_queue(&setup).await?;
        let publish_channel = conn.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let publisher = Arc::new(Publisher::new(publish_channel, conn.clone()));

        // A lane that fails stops the others, and the session reconnects.
        let stop = shutdown.child_token();
        let lanes = self.lanes(conn, setup, publisher, stop.clone());
        let control = self.remote_control(conn, shutdown, stop.clone());
        let (lanes, control) = tokio::join!(lanes, control);
        control.and(lanes)
    }

    /// One lane per consumed queue, started and stopped as the set changes
    /// (`add_consumer`, `cancel_consumer`), until `stop` or a lane fails.
    async fn lanes(
        &self,
        conn: &Connection,
        mut setup: Channel,
        publisher: Arc<Publisher>,
        stop: CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let mut wanted = self.queues.watch();
        let mut running: FuturesUnordered<LaneRun<'_>> = FuturesUnordered::new();
        let mut lanes: HashMap<String, CancellationToken> = HashMap::new();
        let mut outcome: Result<(), broker::BrokerError> = Ok(());
        'session: loop {
            let specs = wanted.borrow_and_update().clone();
            lanes.retain(|name, token| {
                let keep = specs.iter().any(|q| &q.name == name);
                if !keep {
                    tracing::info!(queue = %name, "no longer consuming");
                    token.cancel();
                }
                keep
            });
            let new: Vec<&QueueSpec> = specs
                .iter()
                .filter(|q| !lanes.contains_key(&q.name))
                .collect();
            for spec in new {
                if let Err(e) = self.declare(&setup, spec).await {
                    if self.topology.names.consumed().contains(&spec.name) {
                        outcome = Err(e.into());
                        stop.cancel();
                        break 'session;
                    }
                    // A queue added at run time that cannot be declared as
                    // asked (it exists with other arguments, the exchange
                    // with another type) is not consumed.
                    tracing::warn!(queue = %spec.name, error = %e, "cannot consume the queue");
                    self.queues.cancel(&spec.name);
                    setup = match conn.create_channel().await {
                        Ok(channel) => channel,
                        Err(e) => {
                            outcome = Err(e.into());
                            stop.cancel();
                            break 'session;
                        }
                    };
                    continue;
                }
                let token = stop.child_token();
                lanes.insert(spec.name.clone(), token.clone());
                let lane = Lane {
                    ctx: self.ctx.clone(),
                    registry: &crate::tasks::REGISTRY,
                    topology: self.topology.clone(),
                    publisher: publisher.clone(),
                    queue: spec.name.clone(),
                };
                let name = spec.name.clone();
                running.push(Box::pin(
                    self.pump(conn, lane, token)
                        .map(move |result| (name, result)),
                ));
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = wanted.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                // A lane ends well only when told to (cancelled, or the
                // session stopping).
                Some((name, result)) = running.next(), if !running.is_empty() => {
                    if let Err(e) = result {
                        tracing::warn!(queue = %name, error = %e, "lane failed; reconnecting");
                        outcome = Err(e);
                        stop.cancel();
                        break;
                    }
                }
            }
        }
        stop.cancel();
        while let Some((_, result)) = running.next().await {
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }

    /// Declares a consumed queue (with its exchange and binding) and its
    /// delay ladder: at start and on every reconnect, so that what an
    /// operator deleted comes back.
    async fn declare(&self, channel: &Channel, spec: &QueueSpec) -> Result<(), TopologyError> {
        let kind = match spec.exchange_type.as_str() {
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Direct,
        };
        self.topology
            .declare_bound_queue(channel, &spec.name, &spec.exchange, kind, &spec.routing_key)
            .await?;
        Ok(self.topology.declare_ladder(channel, &spec.name).await?)
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
            aliases: self.ctx.aliases.clone(),
            prefetch: settings.prefetch_count,
            timeouts: [
                settings.task_soft_time_limit.as_secs_f64(),
                settings.task_time_limit.as_secs_f64(),
            ],
            broker: remote_control::broker_info(settings.broker_url(), settings.heartbeat),
            settings: settings.clone(),
            queues: self.queues.clone(),
            queue_arguments: serde_json::Value::Object(platform::celery::table_to_json(
                &self.topology.task_queue_arguments(),
            )),
            queue_names: self.topology.names.clone(),
            pool: self.ctx.concurrency.clone(),
            time_limits: self.ctx.time_limits.clone(),
            rate_limits: self.ctx.rate_limits.clone(),
            db: self.ctx.pool.clone(),
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
    /// already arrived, never more in flight than the pool's limit; until
    /// `stop` (the lane cancelled, or the session stopping) or a failure.
    async fn pump(
        &self,
        conn: &Connection,
        lane: Lane,
        stop: CancellationToken,
    ) -> Result<(), broker::BrokerError> {
        let lane = Arc::new(lane);
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.ctx.settings.prefetch_count, BasicQosOptions::default())
            .await?;
        let tag = format!("{}/{}", self.node_name, lane.queue);
        let deliveries = channel
            .basic_consume(
                &lane.queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %lane.queue, node = %self.node_name, "consuming");

        let state = &self.ctx.worker;
        let owner = state.reserving_owner();
        let slots = Slots::new(self.ctx.concurrency.clone());
        let (received, mut waiting) = mpsc::unbounded_channel();
        // Deliveries are taken from the channel as they arrive (RabbitMQ's
        // prefetch bounds them), so that those waiting for a slot are
        // listed by `inspect reserved`.
        let reader = async {
            let mut deliveries = deliveries;
            loop {
                match deliveries.next().await {
                    Some(Ok(d)) => {
                        let decoded = lane.decode(d);
                        let token = decoded.message.as_ref().ok().map(|m| {
                            let d = &decoded.delivery;
                            let info = json!({
                                "exchange": d.exchange.as_str(),
                                "routing_key": d.routing_key.as_str(),
                                "priority": m.priority,
                                "redelivered": d.redelivered,
                            });
                            state.reserve(owner, m, info)
                        });
                        if received.send((decoded, token)).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(broker::BrokerError::from(e)),
                    None => {
                        return Err(
                            lapin::Error::InvalidChannelState(lapin::ChannelState::Closed).into(),
                        )
                    }
                }
            }
        };
        let feeder = self.feed(&lane, &slots, &mut waiting, &stop);
        let outcome = tokio::select! {
            read = reader => read,
            () = feeder => Ok(()),
        };

        // Stop taking work, then let in-flight tasks finish within the grace
        // period; unacknowledged prefetched deliveries return to the queue
        // when the channel closes.
        let _ = channel
            .basic_cancel(&tag, BasicCancelOptions::default())
            .await;
        state.release_owner(owner);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, slots.drained()).await;
        if drained.is_err() {
            tracing::warn!(queue = %lane.queue, "in-flight tasks did not finish within the grace period; RabbitMQ will redeliver them");
        }
        let _ = channel.close(200, "lane stopping").await;
        outcome
    }

    /// Hands received deliveries to the lane in groups, until `stop`.
    async fn feed(
        &self,
        lane: &Arc<Lane>,
        slots: &Arc<Slots>,
        waiting: &mut mpsc::UnboundedReceiver<(Decoded, Option<u64>)>,
        stop: &CancellationToken,
    ) {
        let group_slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
        // A delivery that would have made the last group too heavy: it
        // starts the next one.
        let mut carried: Option<(Decoded, Option<u64>)> = None;
        loop {
            let first = match carried.take() {
                Some(first) => Some(first),
                None => tokio::select! {
                    next = waiting.recv() => next,
                    _ = stop.cancelled() => return,
                },
            };
            let Some(first) = first else { return };
            // At most a few groups at once: while they run, deliveries
            // gather, so under load each group's statements serve many
            // emails; alone, a delivery finds a free slot and waits for
            // nothing.
            let group_slot = tokio::select! {
                slot = group_slots.clone().acquire_owned() => slot,
                _ = stop.cancelled() => return,
            };
            let Ok(group_slot) = group_slot else { return };
            // Whatever else has already arrived joins this group, up to a
            // share of the concurrency in sends (a batch task counts each
            // of its emails), so that the groups in flight fill the
            // concurrency together: one group's database round trips
            // overlap the others' SMTP sends (on slow servers, most of a
            // group's time), instead of every group waiting in turn.
            let gather = (self.ctx.concurrency.limit() / GROUPS_IN_FLIGHT).max(1);
            let mut weight = lane.weight(&first.0);
            let mut group = vec![first];
            let linger =
                (slots.in_flight() > 0).then(|| tokio::time::Instant::now() + GATHER_LINGER);
            while weight < gather {
                let next = match waiting.try_recv() {
                    Ok(d) => Some(d),
                    Err(_) => match linger {
                        Some(until) => tokio::select! {
                            next = tokio::time::timeout_at(until, waiting.recv()) => next.ok().flatten(),
                            _ = stop.cancelled() => None,
                        },
                        None => None,
                    },
                };
                let Some(d) = next else { break };
                let w = lane.weight(&d.0);
                if weight + w > gather {
                    carried = Some(d);
                    break;
                }
                weight += w;
                group.push(d);
            }
            let permit = tokio::select! {
                permit = slots.acquire(weight) => permit,
                _ = stop.cancelled() => return,
            };
            let (group, tokens): (Vec<Decoded>, Vec<Option<u64>>) = group.into_iter().unzip();
            self.ctx
                .worker
                .unreserve(&tokens.into_iter().flatten().collect::<Vec<_>>());
            let lane = lane.clone();
            tokio::spawn(async move {
                lane.handle_deliveries(group, permit, group_slot).await;
            });
        }
    }
}
