//! `celery control` commands that change the worker at run time:
//! `add_consumer` / `cancel_consumer`, `rate_limit`, `time_limit`,
//! `pool_grow` / `pool_shrink` / `autoscale`. Replies are worded as Celery
//! 5.4's (`celery/worker/control.py`).

use platform::celery::pidbox::Request;
use serde_json::{json, Value};

use super::ControlContext;
use crate::consumed_queues::{valid_queue_name, QueueSpec};
use crate::rate_limits::parse_rate;

fn ok(text: impl Into<String>) -> Value {
    json!({"ok": text.into()})
}

fn nok(text: impl Into<String>) -> Value {
    json!({"error": text.into()})
}

/// A string argument (the CLI sends typed values; a script may not).
fn text(request: &Request, name: &str) -> Option<String> {
    match request.argument(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A number argument, as a JSON number or a numeric string.
fn number(request: &Request, name: &str) -> Option<f64> {
    match request.argument(name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn count(request: &Request, name: &str) -> Option<usize> {
    number(request, name)
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n as usize)
}

/// Our name for a task a command names: one of ours, or a Python name
/// mapped to ours (`CELERY_TASK_ALIASES`).
fn task_name(ctx: &ControlContext, name: &str) -> Option<&'static str> {
    if let Some(ours) = ctx.registered.iter().find(|t| **t == name) {
        return Some(ours);
    }
    let aliased = ctx.aliases.iter().find(|(python, _)| *python == name)?.1;
    ctx.registered.iter().copied().find(|t| *t == aliased)
}

/// `add_consumer <queue> [exchange [type [routing_key]]]`: the queue is
/// declared as our task queues are (durable; a direct exchange and routing
/// key of its name unless given) with its delay ladder, then consumed in a
/// lane of its own.
pub fn add_consumer(ctx: &ControlContext, request: &Request) -> Value {
    let Some(queue) = text(request, "queue").filter(|q| valid_queue_name(q)) else {
        return nok("add_consumer needs a queue name RabbitMQ accepts");
    };
    let mut spec = QueueSpec::named(&queue);
    if let Some(exchange) = text(request, "exchange").filter(|e| !e.is_empty()) {
        spec.exchange = exchange;
    }
    if let Some(kind) = text(request, "exchange_type").filter(|k| !k.is_empty()) {
        if !matches!(kind.as_str(), "direct" | "topic" | "fanout" | "headers") {
            return nok(format!("unknown exchange type {kind:?}"));
        }
        spec.exchange_type = kind;
    }
    if let Some(key) = text(request, "routing_key").filter(|k| !k.is_empty()) {
        spec.routing_key = key;
    }
    if ctx.queues.add(spec) {
        tracing::info!(%queue, "consuming a queue added over remote control");
    }
    ok(format!("add consumer {queue}"))
}

/// `cancel_consumer <queue>`: that lane stops taking deliveries and
/// finishes what it runs.
pub fn cancel_consumer(ctx: &ControlContext, request: &Request) -> Value {
    let Some(queue) = text(request, "queue") else {
        return nok("cancel_consumer needs a queue name");
    };
    if ctx.queues.cancel(&queue) {
        tracing::info!(%queue, "queue cancelled over remote control");
    }
    ok(format!("no longer consuming from {queue}"))
}

/// `rate_limit <task> <rate>`: kept in Redis for every worker of the
/// platform. A batch task's emails are rate-limited one by one as
/// `notifications.send_email` tasks.
pub async fn rate_limit(ctx: &ControlContext, request: &Request) -> Value {
    let raw = text(request, "rate_limit").unwrap_or_default();
    let rate = match parse_rate(&raw) {
        Ok(rate) => rate,
        Err(e) => return nok(format!("Invalid rate limit string: {e}")),
    };
    let Some(task) = text(request, "task_name").and_then(|n| task_name(ctx, &n)) else {
        return nok("unknown task");
    };
    if task == platform::tasks::SEND_EMAIL_BATCH {
        return nok(format!(
            "rate limits apply to {}: a batch's emails count one by one",
            platform::tasks::SEND_EMAIL
        ));
    }
    if let Err(e) = ctx.rate_limits.set(task, &raw).await {
        tracing::warn!(error = %e, "cannot record a rate limit");
        return nok(format!("cannot record the rate limit: {e}"));
    }
    match rate {
        None => {
            tracing::info!(task, "rate limits disabled");
            ok("rate limit disabled successfully")
        }
        Some(_) => {
            tracing::info!(task, rate = %raw, "new rate limit");
            ok("new rate limit set successfully")
        }
    }
}

/// `time_limit <task> <soft> [hard]`: this worker's limits for the task
/// type, capped by the configured hard limit.
pub fn time_limit(ctx: &ControlContext, request: &Request) -> Value {
    let Some(task) = text(request, "task_name").and_then(|n| task_name(ctx, &n)) else {
        return nok("unknown task");
    };
    let limits = ctx
        .time_limits
        .set(task, number(request, "soft"), number(request, "hard"));
    tracing::info!(task, soft = ?limits.soft, hard = ?limits.hard, "new time limits");
    ok("time limits set successfully")
}

pub fn pool_grow(ctx: &ControlContext, request: &Request) -> Value {
    match ctx.pool.grow(count(request, "n").unwrap_or(1)) {
        Ok(limit) => {
            tracing::info!(concurrency = limit, "pool grown over remote control");
            ok("pool will grow")
        }
        Err(e) => nok(e.to_string()),
    }
}

pub fn pool_shrink(ctx: &ControlContext, request: &Request) -> Value {
    match ctx.pool.shrink(count(request, "n").unwrap_or(1)) {
        Ok(limit) => {
            tracing::info!(concurrency = limit, "pool shrunk over remote control");
            ok("pool will shrink")
        }
        Err(e) => nok(e.to_string()),
    }
}

/// `autoscale [max [min]]`: an omitted bound keeps its value (the current
/// concurrency and 0 the first time).
pub fn autoscale(ctx: &ControlContext, request: &Request) -> Value {
    let current = ctx.pool.autoscale();
    let max = count(request, "max")
        .or(current.map(|c| c.max))
        .unwrap_or_else(|| ctx.pool.limit());
    let min = count(request, "min")
        .or(current.map(|c| c.min))
        .unwrap_or(0);
    match ctx.pool.set_autoscale(max, min) {
        Ok(range) => {
            tracing::info!(
                max = range.max,
                min = range.min,
                "autoscale set over remote control"
            );
            ok(format!("autoscale now max={} min={}", range.max, range.min))
        }
        Err(e) => nok(e.to_string()),
    }
}
