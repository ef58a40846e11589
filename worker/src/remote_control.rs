//! Celery remote control and events for this worker: answers `celery
//! inspect`/`celery control` requests arriving over the pidbox, keeps the
//! registry of tasks being executed, and (when enabled) publishes the
//! events Flower follows on `celeryev`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use platform::celery::pidbox::{self, Request};
use platform::celery::{ResultBackend, TaskMessage};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::tasks::REGISTERED;

/// How often `worker-heartbeat` is sent while events are enabled.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// A task being executed, as `inspect active` lists it.
#[derive(Debug, Clone)]
struct ActiveTask {
    name: String,
    args: Value,
    kwargs: Value,
    time_start: f64,
    started: Instant,
    delivery_info: Value,
}

/// What remote control and events report about this worker.
pub struct WorkerState {
    pub node: String,
    pub pid: u32,
    started: Instant,
    clock: AtomicU64,
    active: Mutex<HashMap<String, ActiveTask>>,
    processed: Mutex<BTreeMap<String, u64>>,
    events_enabled: AtomicBool,
    events: Mutex<Option<Channel>>,
    /// Set when events become enabled; the heartbeat loop sends
    /// `worker-online` for it.
    announce: AtomicBool,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WorkerState {
    pub fn new(node: String, send_events: bool) -> Self {
        WorkerState {
            node,
            pid: std::process::id(),
            started: Instant::now(),
            clock: AtomicU64::new(0),
            active: Mutex::new(HashMap::new()),
            processed: Mutex::new(BTreeMap::new()),
            events_enabled: AtomicBool::new(send_events),
            events: Mutex::new(None),
            announce: AtomicBool::new(send_events),
        }
    }

    /// The Lamport clock, moved forward.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the clock past a peer's.
    fn adjust_clock(&self, other: u64) {
        self.clock.fetch_max(other, Ordering::Relaxed);
    }

    pub fn events_enabled(&self) -> bool {
        self.events_enabled.load(Ordering::Relaxed)
    }

    /// Records that tasks start executing (and emits `task-received` and
    /// `task-started`).
    pub async fn tasks_started(&self, messages: &[&TaskMessage], queue: &str) {
        let now = unix_now();
        {
            let mut active = lock(&self.active);
            for m in messages {
                active.insert(
                    m.id().to_string(),
                    ActiveTask {
                        name: m.task().to_string(),
                        args: Value::Array(m.args.clone()),
                        kwargs: Value::Object(m.kwargs.clone()),
                        time_start: now,
                        started: Instant::now(),
                        delivery_info: json!({
                            "exchange": queue,
                            "routing_key": queue,
                            "priority": m.priority,
                            "redelivered": false,
                        }),
                    },
                );
            }
        }
        if !self.events_enabled() {
            return;
        }
        for m in messages {
            let h = &m.headers;
            self.emit(
                "task-received",
                json!({
                    "uuid": m.id(),
                    "name": m.task(),
                    "args": h.argsrepr.clone().unwrap_or_else(|| Value::Array(m.args.clone()).to_string()),
                    "kwargs": h.kwargsrepr.clone().unwrap_or_else(|| Value::Object(m.kwargs.clone()).to_string()),
                    "root_id": h.root_id,
                    "parent_id": h.parent_id,
                    "retries": h.retries,
                    "eta": h.eta.map(|t| t.to_rfc3339()),
                    "expires": h.expires.map(|t| t.to_rfc3339()),
                }),
            )
            .await;
            self.emit("task-started", json!({"uuid": m.id()})).await;
        }
    }

    /// Records that tasks finished; with events enabled, reads each one's
    /// stored result to emit `task-succeeded`, `task-failed` or
    /// `task-retried`.
    pub async fn tasks_finished(&self, messages: &[&TaskMessage], results: &ResultBackend) {
        let mut runtimes = Vec::with_capacity(messages.len());
        {
            let mut active = lock(&self.active);
            let mut processed = lock(&self.processed);
            for m in messages {
                let runtime = active
                    .remove(m.id())
                    .map(|t| t.started.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                runtimes.push(runtime);
                *processed.entry(m.task().to_string()).or_default() += 1;
            }
        }
        if !self.events_enabled() {
            return;
        }
        for (m, runtime) in messages.iter().zip(runtimes) {
            let stored = match results.fetch(m.id()).await {
                Ok(Some(v)) => v,
                _ => continue,
            };
            let failure = |stored: &Value| {
                let r = &stored["result"];
                let kind = r["exc_type"].as_str().unwrap_or("Exception");
                let msg = match &r["exc_message"] {
                    Value::Array(a) => a
                        .iter()
                        .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{kind}({msg:?})")
            };
            match stored["status"].as_str() {
                Some("SUCCESS") => {
                    self.emit(
                        "task-succeeded",
                        json!({"uuid": m.id(), "result": stored["result"].to_string(), "runtime": runtime}),
                    )
                    .await
                }
                Some("FAILURE") => {
                    self.emit(
                        "task-failed",
                        json!({"uuid": m.id(), "exception": failure(&stored),
                               "traceback": stored["traceback"].as_str().unwrap_or("")}),
                    )
                    .await
                }
                Some("RETRY") => {
                    self.emit(
                        "task-retried",
                        json!({"uuid": m.id(), "exception": failure(&stored),
                               "traceback": stored["traceback"].as_str().unwrap_or("")}),
                    )
                    .await
                }
                _ => {}
            }
        }
    }

    /// Publishes one event (when enabled and connected); best effort.
    pub async fn emit(&self, kind: &str, fields: Value) {
        if !self.events_enabled() {
            return;
        }
        self.emit_always(kind, fields).await;
    }

    async fn emit_always(&self, kind: &str, fields: Value) {
        let Some(channel) = lock(&self.events).clone() else {
            return;
        };
        let mut event = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let utcoffset = -(chrono::Local::now().offset().local_minus_utc() / 3600);
        event.insert("type".into(), kind.into());
        event.insert("hostname".into(), self.node.clone().into());
        event.insert("timestamp".into(), unix_now().into());
        event.insert("utcoffset".into(), utcoffset.into());
        event.insert("pid".into(), self.pid.into());
        event.insert("clock".into(), self.tick().into());
        let body = Value::Object(event).to_string();
        let published = channel
            .basic_publish(
                pidbox::EVENT_EXCHANGE,
                &pidbox::event_routing_key(kind),
                BasicPublishOptions::default(),
                body.as_bytes(),
                pidbox::event_properties(&self.node),
            )
            .await;
        if let Err(e) = published {
            tracing::debug!(error = %e, event = kind, "event not published");
        }
    }

    fn worker_fields(&self) -> Value {
        let loadavg: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| {
                s.split_whitespace()
                    .take(3)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "freq": HEARTBEAT.as_secs_f64(),
            "active": lock(&self.active).len(),
            "processed": lock(&self.processed).values().sum::<u64>(),
            "sw_ident": "notify-worker",
            "sw_ver": env!("CARGO_PKG_VERSION"),
            "sw_sys": std::env::consts::OS,
            "loadavg": loadavg,
        })
    }

    /// Answers one request; `None` for a command that sends no reply.
    fn answer(&self, ctx: &ControlContext, request: &Request) -> Option<Value> {
        let reply = match request.method.as_str() {
            "ping" => json!({"ok": "pong"}),
            "registered" => json!(REGISTERED),
            "active" => {
                let active = lock(&self.active);
                Value::Array(
                    active
                        .iter()
                        .map(|(id, t)| {
                            json!({
                                "id": id,
                                "name": t.name,
                                "type": t.name,
                                "args": t.args,
                                "kwargs": t.kwargs,
                                "hostname": self.node,
                                "time_start": t.time_start,
                                "acknowledged": false,
                                "delivery_info": t.delivery_info,
                                "worker_pid": self.pid,
                            })
                        })
                        .collect(),
                )
            }
            "stats" => json!({
                "pid": self.pid,
                "clock": self.clock.load(Ordering::Relaxed).to_string(),
                "uptime": self.started.elapsed().as_secs(),
                "total": *lock(&self.processed),
                "pool": {
                    "implementation": "tokio",
                    "max-concurrency": ctx.concurrency,
                    "processes": [self.pid],
                    "max-tasks-per-child": "N/A",
                    "put-guarded-by-semaphore": false,
                    "timeouts": ctx.timeouts,
                },
                "broker": ctx.broker,
                "prefetch_count": ctx.prefetch,
                "rusage": {},
            }),
            "active_queues" => Value::Array(
                ctx.queues
                    .iter()
                    .map(|q| {
                        json!({"name": q, "exchange": {"name": q, "type": "direct"},
                               "routing_key": q, "durable": true, "auto_delete": false,
                               "exclusive": false, "no_ack": false, "queue_arguments": null,
                               "binding_arguments": null, "bindings": [],
                               "consumer_arguments": null, "alias": null, "expires": null,
                               "message_ttl": null, "max_length": null,
                               "max_length_bytes": null, "max_priority": null})
                    })
                    .collect(),
            ),
            "scheduled" | "reserved" | "revoked" => json!([]),
            "conf" => json!({}),
            "clock" => json!({"clock": self.tick()}),
            "report" => json!({"ok": format!("{} ({})", self.node, env!("CARGO_PKG_VERSION"))}),
            "enable_events" => {
                if !self.events_enabled.swap(true, Ordering::Relaxed) {
                    self.announce.store(true, Ordering::Relaxed);
                }
                json!({"ok": "task events enabled"})
            }
            "disable_events" => {
                self.events_enabled.store(false, Ordering::Relaxed);
                json!({"ok": "task events disabled"})
            }
            "shutdown" => {
                tracing::warn!(node = %self.node, "shutdown requested over remote control");
                ctx.shutdown.cancel();
                json!({"ok": "shutting down"})
            }
            "heartbeat" => return None,
            other => json!({"error": format!("No such command: {other}")}),
        };
        Some(reply)
    }
}

/// Facts about the worker that replies need.
pub struct ControlContext {
    pub concurrency: usize,
    pub prefetch: u16,
    pub timeouts: [f64; 2],
    pub broker: Value,
    pub queues: Vec<String>,
    /// The worker's root token: `shutdown` cancels it.
    pub shutdown: CancellationToken,
}

/// Serves remote control and sends heartbeats on `conn` until `stop`;
/// returns an error only when the broker connection fails.
pub async fn serve(
    conn: &Connection,
    state: Arc<WorkerState>,
    ctx: ControlContext,
    stop: CancellationToken,
) -> Result<(), lapin::Error> {
    let events = conn.create_channel().await?;
    pidbox::declare_event_exchange(&events).await?;
    *lock(&state.events) = Some(events);

    let channel = conn.create_channel().await?;
    let queue = pidbox::declare_node(&channel, &state.node).await?;
    let mut requests = channel
        .basic_consume(
            &queue,
            &format!("{}/pidbox", state.node),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut declared_replies = std::collections::HashSet::new();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                if state.events_enabled() {
                    if state.announce.swap(false, Ordering::Relaxed) {
                        state.emit("worker-online", state.worker_fields()).await;
                    }
                    state.emit("worker-heartbeat", state.worker_fields()).await;
                }
            }
            next = requests.next() => {
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => break Err(e),
                    None => break Err(lapin::Error::InvalidChannelState(lapin::ChannelState::Closed)),
                };
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    break Err(e);
                }
                if let Some(AMQPValue::LongLongInt(clock)) = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("clock").cloned())
                {
                    state.adjust_clock(clock.max(0) as u64);
                }
                let request = match Request::decode(&delivery.data) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a remote-control message");
                        continue;
                    }
                };
                if !request.is_for(&state.node) {
                    continue;
                }
                tracing::info!(node = %state.node, method = %request.method, "remote control");
                let Some(reply) = state.answer(&ctx, &request) else { continue };
                let Some(reply_to) = &request.reply_to else { continue };
                if !declared_replies.contains(&reply_to.exchange) {
                    if let Err(e) = pidbox::declare_reply_exchange(&channel, &reply_to.exchange).await {
                        break Err(e);
                    }
                    declared_replies.insert(reply_to.exchange.clone());
                }
                let sent = channel
                    .basic_publish(
                        &reply_to.exchange,
                        &reply_to.routing_key,
                        BasicPublishOptions::default(),
                        &pidbox::reply_body(&state.node, reply),
                        pidbox::reply_properties(request.ticket.as_ref(), state.tick()),
                    )
                    .await;
                if let Err(e) = sent {
                    break Err(e);
                }
            }
        }
    };
    // Events on the way out: the session's connection is still open.
    if state.events_enabled() && ctx.shutdown.is_cancelled() {
        state.emit("worker-offline", state.worker_fields()).await;
    }
    result
}

/// Broker facts for `stats`, without the password.
pub fn broker_info(url: &str, heartbeat: u16) -> Value {
    match url::Url::parse(url) {
        Ok(u) => {
            let path = u.path().trim_start_matches('/');
            let vhost = if path.is_empty() {
                "/".to_string()
            } else {
                path.replace("%2f", "/").replace("%2F", "/")
            };
            json!({
                "hostname": u.host_str(),
                "userid": u.username(),
                "virtual_host": vhost,
                "port": u.port().unwrap_or(5672),
                "insist": false,
                "ssl": u.scheme() == "amqps",
                "transport": "amqp",
                "connect_timeout": 4,
                "transport_options": {},
                "login_method": "PLAIN",
                "uri_prefix": null,
                "heartbeat": heartbeat,
            })
        }
        Err(_) => json!({"transport": "amqp"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ControlContext {
        ControlContext {
            concurrency: 4,
            prefetch: 8,
            timeouts: [10.0, 12.0],
            broker: broker_info("amqp://guest:secret@127.0.0.1:5672/%2f", 10),
            queues: vec!["q".into(), "q.bulk".into()],
            shutdown: CancellationToken::new(),
        }
    }

    fn request(method: &str) -> Request {
        Request::decode(json!({"method": method}).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn answers_ping_registered_stats_and_shutdown() {
        let state = WorkerState::new("w@h".into(), false);
        let ctx = ctx();
        assert_eq!(
            state.answer(&ctx, &request("ping")),
            Some(json!({"ok": "pong"}))
        );
        assert_eq!(
            state.answer(&ctx, &request("registered")),
            Some(json!([
                platform::tasks::SEND_EMAIL,
                platform::tasks::SEND_EMAIL_BATCH
            ]))
        );
        let stats = state.answer(&ctx, &request("stats")).unwrap();
        assert_eq!(stats["pool"]["max-concurrency"], 4);
        assert_eq!(stats["broker"]["virtual_host"], "/");
        assert!(!stats.to_string().contains("secret"));
        assert!(state.answer(&ctx, &request("heartbeat")).is_none());
        state.answer(&ctx, &request("enable_events"));
        assert!(state.events_enabled());
        state.answer(&ctx, &request("shutdown"));
        assert!(ctx.shutdown.is_cancelled());
    }
}
