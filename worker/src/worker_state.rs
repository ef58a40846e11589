//! What this worker is doing, for remote control and events: the tasks it
//! is executing, how many of each it has processed, its Lamport clock, and
//! the Celery events (`task-*`, `worker-*`) it emits while they are enabled.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::Channel;
use platform::celery::events::{self, unix_now};
use platform::celery::{ResultBackend, TaskMessage};
use serde_json::{json, Value};

/// How often `worker-heartbeat` is sent while events are enabled.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// At most this many ladder entries are remembered for `inspect scheduled`.
const LADDERED_MAX: usize = 1000;

/// A task being executed, as `inspect active` lists it.
#[derive(Debug, Clone)]
pub(crate) struct ActiveTask {
    pub(crate) name: String,
    pub(crate) args: Value,
    pub(crate) kwargs: Value,
    pub(crate) time_start: f64,
    started: Instant,
    pub(crate) delivery_info: Value,
}

/// What remote control and events report about this worker.
pub struct WorkerState {
    pub node: String,
    pub pid: u32,
    pub(crate) started: Instant,
    pub(crate) clock: AtomicU64,
    pub(crate) active: Mutex<HashMap<String, ActiveTask>>,
    /// Deliveries received and not yet started (`inspect reserved`), as
    /// Celery's `Request.info()`, by a token of their own.
    pub(crate) reserved: Mutex<BTreeMap<u64, (u64, Value)>>,
    next_reserved: AtomicU64,
    /// Tasks without a message record (a Python producer's, with a
    /// countdown) this worker put in the delay ladder, by task id, with
    /// their due time: `inspect scheduled` lists them until they come back.
    laddered: Mutex<HashMap<String, (DateTime<Utc>, Value)>>,
    pub(crate) processed: Mutex<BTreeMap<String, u64>>,
    pub(crate) events_enabled: AtomicBool,
    pub(crate) events: Mutex<Option<Channel>>,
    /// Set when events become enabled; the heartbeat loop sends
    /// `worker-online` for it.
    pub(crate) announce: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
            reserved: Mutex::new(BTreeMap::new()),
            next_reserved: AtomicU64::new(0),
            laddered: Mutex::new(HashMap::new()),
            processed: Mutex::new(BTreeMap::new()),
            events_enabled: AtomicBool::new(send_events),
            events: Mutex::new(None),
            announce: AtomicBool::new(send_events),
        }
    }

    /// The Lamport clock, moved forward.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the clock past a peer's.
    pub(crate) fn adjust_clock(&self, other: u64) {
        self.clock.fetch_max(other, Ordering::Relaxed);
    }

    pub fn events_enabled(&self) -> bool {
        self.events_enabled.load(Ordering::Relaxed)
    }

    /// A new owner of reserved deliveries (a lane's consumer), whose
    /// leftovers [`Self::release_owner`] takes back when it stops.
    pub fn reserving_owner(&self) -> u64 {
        self.next_reserved.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a delivery received but not started; the token takes it
    /// back with [`Self::unreserve`].
    pub fn reserve(&self, owner: u64, message: &TaskMessage, delivery_info: Value) -> u64 {
        let token = self.next_reserved.fetch_add(1, Ordering::Relaxed);
        let info = self.request_info(message, delivery_info);
        lock(&self.reserved).insert(token, (owner, info));
        token
    }

    /// Forgets what `owner` still had reserved (its deliveries return to
    /// the queue when its channel closes).
    pub fn release_owner(&self, owner: u64) {
        lock(&self.reserved).retain(|_, (o, _)| *o != owner);
    }

    /// Notes a task without a record held in the delay ladder until `eta`.
    pub fn laddered(&self, message: &TaskMessage, eta: DateTime<Utc>, delivery_info: Value) {
        let mut laddered = lock(&self.laddered);
        let now = Utc::now();
        // What has been due for a while came back to another worker (or
        // was lost with a queue): it is not listed for ever.
        laddered.retain(|_, (due, _)| *due + chrono::Duration::minutes(5) > now);
        if laddered.len() >= LADDERED_MAX {
            return;
        }
        let info = self.request_info(message, delivery_info);
        laddered.insert(message.id().to_string(), (eta, info));
    }

    /// Forgets ladder entries for tasks that came back.
    pub fn back_from_ladder(&self, ids: &[&str]) {
        let mut laddered = lock(&self.laddered);
        if laddered.is_empty() {
            return;
        }
        for id in ids {
            laddered.remove(*id);
        }
    }

    /// What this worker put in the ladder and has not seen again, as
    /// (eta, `Request.info()`).
    pub fn in_ladder(&self) -> Vec<(DateTime<Utc>, Value)> {
        let now = Utc::now();
        lock(&self.laddered)
            .values()
            .filter(|(due, _)| *due + chrono::Duration::minutes(5) > now)
            .cloned()
            .collect()
    }

    fn request_info(&self, message: &TaskMessage, delivery_info: Value) -> Value {
        json!({
            "id": message.id(),
            "name": message.task(),
            "args": Value::Array(message.args.clone()),
            "kwargs": Value::Object(message.kwargs.clone()),
            "type": message.task(),
            "hostname": self.node,
            "time_start": null,
            "acknowledged": false,
            "delivery_info": delivery_info,
            "worker_pid": null,
        })
    }

    /// `inspect reserved`.
    pub fn reserved(&self) -> Vec<Value> {
        lock(&self.reserved)
            .values()
            .map(|(_, info)| info.clone())
            .collect()
    }

    pub fn unreserve(&self, tokens: &[u64]) {
        let mut reserved = lock(&self.reserved);
        for token in tokens {
            reserved.remove(token);
        }
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
        let body = events::event_body(kind, fields, &self.node, self.pid, self.tick());
        if let Err(e) = events::publish(&channel, kind, &self.node, &body).await {
            tracing::debug!(error = %e, event = kind, "event not published");
        }
    }

    pub(crate) fn worker_fields(&self) -> Value {
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
}
