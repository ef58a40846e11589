//! `celery inspect` answers with content: `stats`, `conf`, `report`,
//! `scheduled`, `reserved`, `active_queues`, shaped as Celery 5.4's worker
//! shapes them (`celery/worker/control.py`).

use std::sync::atomic::Ordering;

use platform::db::messages;
use serde_json::{json, Map, Value};

use super::ControlContext;
use crate::worker_state::{lock, WorkerState};

/// At most this many entries in `inspect scheduled`.
pub const SCHEDULED_MAX: i64 = 100;

/// Celery's timer priority for ETA tasks (`consumer.timer.call_at(...,
/// priority=6)`), which `inspect scheduled` reports.
const TIMER_PRIORITY: u8 = 6;

const MASK: &str = "********";

/// `inspect stats`: `WorkController.stats()`.
pub fn stats(state: &WorkerState, ctx: &ControlContext) -> Value {
    let mut stats = json!({
        "total": *lock(&state.processed),
        "pid": state.pid,
        "clock": state.clock.load(Ordering::Relaxed).to_string(),
        "uptime": state.started.elapsed().as_secs(),
        "pool": {
            "implementation": "notify_worker.pool:Pool",
            "max-concurrency": ctx.pool.limit(),
            "processes": [state.pid],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": ctx.timeouts,
            "writes": "N/A",
        },
        "prefetch_count": ctx.prefetch,
        "broker": ctx.broker,
        "rusage": rusage(),
    });
    if let Some(range) = ctx.pool.autoscale() {
        let busy = lock(&state.active).len() + lock(&state.reserved).len();
        stats["autoscaler"] = json!({
            "max": range.max,
            "min": range.min,
            "current": busy.clamp(range.min, range.max),
            "qty": lock(&state.reserved).len(),
        });
    }
    stats
}

/// `resource.getrusage(RUSAGE_SELF)` as Celery reports it, read from
/// `/proc` (Linux): CPU seconds, peak resident set (kB), page faults,
/// block I/O and context switches; what Linux does not count is 0.
pub fn rusage() -> Value {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is the
    // first (field 3 of proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
    let ticks = |n: usize| field(n) as f64 / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let line = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    json!({
        "utime": ticks(14),
        "stime": ticks(15),
        "maxrss": line(&status, "VmHWM"),
        "ixrss": 0,
        "idrss": 0,
        "isrss": 0,
        "minflt": field(10),
        "majflt": field(12),
        "nswap": 0,
        "inblock": line(&io, "read_bytes") / 512,
        "oublock": line(&io, "write_bytes") / 512,
        "msgsnd": 0,
        "msgrcv": 0,
        "nsignals": 0,
        "nvcsw": line(&status, "voluntary_ctxt_switches"),
        "nivcsw": line(&status, "nonvoluntary_ctxt_switches"),
    })
}

/// A URL with its password masked, as kombu's `as_uri(mask=...)` and
/// Celery's `maybe_sanitize_url` show it.
pub fn masked_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() && u.set_password(Some(MASK)).is_err() {
                return MASK.to_string();
            }
            u.to_string()
        }
        Err(_) => MASK.to_string(),
    }
}

/// Celery's `filter_hidden_settings`: a setting whose name looks secret is
/// masked whatever it holds.
pub fn censored(conf: Map<String, Value>) -> Map<String, Value> {
    const HIDDEN: [&str; 8] = [
        "API",
        "TOKEN",
        "KEY",
        "SECRET",
        "PASS",
        "PROFANITIES_LIST",
        "SIGNATURE",
        "DATABASE",
    ];
    conf.into_iter()
        .map(|(k, v)| {
            let upper = k.to_ascii_uppercase();
            if HIDDEN.iter().any(|h| upper.contains(h)) {
                (k, Value::String(MASK.into()))
            } else {
                (k, v)
            }
        })
        .collect()
}

/// `inspect conf`: the effective configuration under Celery's setting
/// names, passwords masked and secret-looking names censored as Celery's
/// `conf.table()` does. Our settings have no "defaults" apart from what
/// is set, so `with_defaults` changes nothing.
pub fn conf(settings: &platform::Settings, events: bool) -> Value {
    let brokers: Vec<String> = settings.broker_urls.iter().map(|u| masked_url(u)).collect();
    let queues = &settings.queues;
    let concurrency = settings.worker_concurrency.max(1);
    let conf = json!({
        "broker_url": brokers.join(";"),
        "broker_heartbeat": settings.heartbeat,
        "result_backend": masked_url(&settings.result_backend_url),
        "result_expires": settings.result_expires.as_secs(),
        "result_serializer": "json",
        "task_serializer": "json",
        "accept_content": ["json"],
        "enable_utc": true,
        "timezone": settings.tz.name(),
        "task_default_queue": queues.tasks,
        "task_default_exchange": queues.tasks,
        "task_default_exchange_type": "direct",
        "task_default_routing_key": queues.tasks,
        "task_create_missing_queues": true,
        "task_acks_late": true,
        "task_reject_on_worker_lost": true,
        "task_track_started": true,
        "task_soft_time_limit": settings.task_soft_time_limit.as_secs_f64(),
        "task_time_limit": settings.task_time_limit.as_secs_f64(),
        "worker_concurrency": settings.worker_concurrency,
        // Our prefetch is set per queue (`RABBITMQ_PREFETCH_COUNT`);
        // Celery's is a multiple of the concurrency: the nearest one.
        "worker_prefetch_multiplier": (usize::from(settings.prefetch_count)).div_ceil(concurrency).max(1),
        "worker_send_task_events": events,
        "task_send_sent_event": false,
    });
    match conf {
        Value::Object(map) => Value::Object(censored(map)),
        other => other,
    }
}

/// `inspect report`: Celery's `bugreport()` text, for our worker.
pub fn report(settings: &platform::Settings, events: bool) -> Value {
    let conf = conf(settings, events);
    let table = conf
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let text = format!(
        "\nsoftware -> notify-worker:{} (Celery protocol 2, JSON)\n\
         platform -> system:{} arch:{}\n\
         loader   -> none (Rust)\n\
         settings -> transport:amqp results:{}\n\n{table}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        masked_url(&settings.result_backend_url),
    );
    json!({"ok": text})
}

/// `inspect scheduled`: what waits for its time. Celery lists the ETA
/// tasks held in its worker's memory; ours holds none there: a task
/// waiting for an `eta` is in RabbitMQ's delay ladder (which RabbitMQ
/// cannot list without consuming it) and its message record says when it
/// is due. So the answer is the platform's records waiting for their time
/// (`scheduled` sends, and `queued` ones due back later: retries, quota or
/// rate-limit waits; every worker of the platform lists them), and the
/// tasks without a record (a Python producer's, sent with a countdown)
/// this worker put in the ladder, soonest first, at most
/// [`SCHEDULED_MAX`].
pub async fn scheduled(state: &WorkerState, ctx: &ControlContext) -> Value {
    // Bounded: remote control must keep answering while PostgreSQL is away.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        messages::waiting(&ctx.db, SCHEDULED_MAX),
    )
    .await
    .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    let waiting = match read {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the waiting messages");
            return json!({"error": format!("cannot read the waiting messages: {e}")});
        }
    };
    let mut entries: Vec<(chrono::DateTime<chrono::Utc>, Value)> = waiting
        .into_iter()
        .map(|w| {
            let queue = if w.bulk {
                ctx.queue_names.bulk()
            } else {
                ctx.queue_names.tasks.clone()
            };
            let request = json!({
                    "id": w.task_id,
                    "name": platform::tasks::SEND_EMAIL,
                    "args": [],
                    "kwargs": {"message_id": w.id.to_string()},
                    "type": platform::tasks::SEND_EMAIL,
                    "hostname": state.node,
                    "time_start": null,
                    "acknowledged": false,
                    "delivery_info": {
                        "exchange": queue,
                        "routing_key": queue,
                        "priority": null,
                        "redelivered": false,
                    },
                    "worker_pid": null,
            });
            (w.eta, request)
        })
        .collect();
    entries.extend(state.in_ladder());
    entries.sort_by_key(|(eta, _)| *eta);
    entries.truncate(SCHEDULED_MAX as usize);
    Value::Array(
        entries
            .into_iter()
            .map(|(eta, request)| {
                json!({"eta": eta.to_rfc3339(), "priority": TIMER_PRIORITY, "request": request})
            })
            .collect(),
    )
}

/// `inspect active_queues`: kombu queue dicts of what is consumed now.
pub fn active_queues(ctx: &ControlContext) -> Value {
    Value::Array(
        ctx.queues
            .current()
            .iter()
            .map(|q| q.as_kombu(&ctx.queue_arguments))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked_and_secret_names_censored() {
        assert_eq!(
            masked_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:********@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            masked_url("redis://127.0.0.1:6379/1"),
            "redis://127.0.0.1:6379/1"
        );
        assert_eq!(
            masked_url("redis://:pw@h:6379/1"),
            "redis://:********@h:6379/1"
        );
        let mut conf = Map::new();
        conf.insert("task_default_routing_key".into(), "q".into());
        conf.insert("worker_concurrency".into(), 4.into());
        let conf = censored(conf);
        assert_eq!(conf["task_default_routing_key"], MASK);
        assert_eq!(conf["worker_concurrency"], 4);
    }

    #[test]
    fn rusage_reads_this_process() {
        let r = rusage();
        assert!(r["maxrss"].as_u64().unwrap() > 0, "{r}");
        assert!(r["utime"].as_f64().is_some());
    }
}
