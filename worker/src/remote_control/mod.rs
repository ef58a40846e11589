//! Celery remote control for this worker: answers `celery inspect` /
//! `celery control` requests arriving over the pidbox and sends the
//! heartbeat events, from what [`WorkerState`] knows.

mod control;
mod inspect;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use platform::celery::pidbox::{self, Request};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::consumed_queues::ConsumedQueues;
use crate::pool::Pool;
use crate::rate_limits::RateLimits;
use crate::revoked::Revocations;
use crate::time_limits::TimeLimits;
use crate::worker_state::{lock, WorkerState, HEARTBEAT};

/// Facts about the worker that replies need, and what commands change.
pub struct ControlContext {
    /// Task names this worker runs (`inspect registered`).
    pub registered: Vec<&'static str>,
    /// Python task names mapped to ours (commands may name either).
    pub aliases: platform::celery::TaskAliases,
    pub prefetch: u16,
    /// The configured (soft, hard) time limits.
    pub timeouts: [f64; 2],
    pub broker: Value,
    pub settings: Arc<platform::Settings>,
    /// The queues consumed, changed by `add_consumer` / `cancel_consumer`.
    pub queues: Arc<ConsumedQueues>,
    /// What task queues are declared with (their `queue_arguments`).
    pub queue_arguments: Value,
    pub queue_names: platform::config::QueueNames,
    /// The concurrency, changed by `pool_grow` / `pool_shrink` / `autoscale`.
    pub pool: Arc<Pool>,
    pub time_limits: Arc<TimeLimits>,
    pub rate_limits: RateLimits,
    /// For `inspect scheduled` (records waiting for their time).
    pub db: sqlx::PgPool,
    /// The worker's root token: `shutdown` cancels it.
    pub shutdown: CancellationToken,
    /// Where revokes are kept for every worker of the platform.
    pub revoked: Revocations,
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
                let Some(reply) = answer(&state, &ctx, &request).await else { continue };
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

/// Answers one request; `None` for a command that sends no reply.
async fn answer(state: &WorkerState, ctx: &ControlContext, request: &Request) -> Option<Value> {
    let reply = match request.method.as_str() {
        "revoke" => revoke(state, ctx, request).await,
        "revoked" => match ctx.revoked.list().await {
            Ok(ids) => json!(ids),
            Err(e) => json!({"error": format!("cannot read revoked tasks: {e}")}),
        },
        "ping" => json!({"ok": "pong"}),
        "registered" => registered(ctx).await,
        "active" => Value::Array(active(state)),
        "query_task" => query_task(state, request),
        "stats" => inspect::stats(state, ctx),
        "active_queues" => inspect::active_queues(ctx),
        "scheduled" | "dump_schedule" => inspect::scheduled(state, ctx).await,
        "reserved" | "dump_reserved" => Value::Array(state.reserved()),
        "conf" | "dump_conf" => inspect::conf(&ctx.settings, state.events_enabled()),
        "clock" => json!({"clock": state.clock.load(Ordering::Relaxed)}),
        "report" => inspect::report(&ctx.settings, state.events_enabled()),
        "add_consumer" => control::add_consumer(ctx, request),
        "cancel_consumer" => control::cancel_consumer(ctx, request),
        "rate_limit" => control::rate_limit(ctx, request).await,
        "time_limit" => control::time_limit(ctx, request),
        "pool_grow" => control::pool_grow(ctx, request),
        "pool_shrink" => control::pool_shrink(ctx, request),
        "autoscale" => control::autoscale(ctx, request),
        "enable_events" => {
            if !state.events_enabled.swap(true, Ordering::Relaxed) {
                state.announce.store(true, Ordering::Relaxed);
            }
            json!({"ok": "task events enabled"})
        }
        "disable_events" => {
            state.events_enabled.store(false, Ordering::Relaxed);
            json!({"ok": "task events disabled"})
        }
        "shutdown" => {
            tracing::warn!(node = %state.node, "shutdown requested over remote control");
            ctx.shutdown.cancel();
            json!({"ok": "shutting down"})
        }
        // There is no pool of processes to restart: sends run as tasks
        // of one async runtime. Celery answers so when restarts are off.
        "pool_restart" => json!({"error": "Pool restarts not enabled"}),
        "heartbeat" => return None,
        other => json!({"error": format!("No such command: {other}")}),
    };
    Some(reply)
}

/// `inspect active`: the tasks this worker is executing.
fn active(state: &WorkerState) -> Vec<Value> {
    lock(&state.active)
        .iter()
        .map(|(id, t)| {
            json!({
                "id": id,
                "name": t.name,
                "type": t.name,
                "args": t.args,
                "kwargs": t.kwargs,
                "hostname": state.node,
                "time_start": t.time_start,
                "acknowledged": false,
                "delivery_info": t.delivery_info,
                "worker_pid": state.pid,
            })
        })
        .collect()
}

/// One task id or a list of them, from a request's argument.
fn ids_of(argument: Option<&Value>) -> Vec<String> {
    match argument {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// `inspect query_task <id>...`: `{id: [state, request]}` for each asked
/// task this worker holds, `active` or `reserved`, as Celery answers;
/// tasks it does not hold are left out.
fn query_task(state: &WorkerState, request: &Request) -> Value {
    let ids = ids_of(request.argument("ids"));
    let held = active(state)
        .into_iter()
        .map(|t| ("active", t))
        .chain(state.reserved().into_iter().map(|t| ("reserved", t)));
    let mut found = serde_json::Map::new();
    for (kind, task) in held {
        if let Some(id) = task["id"].as_str().filter(|id| ids.iter().any(|i| i == id)) {
            found.insert(id.to_string(), json!([kind, task]));
        }
    }
    Value::Object(found)
}

/// `inspect registered`: our task names, with `[rate_limit=...]` for a
/// task type that has one, as Celery lists them.
async fn registered(ctx: &ControlContext) -> Value {
    let limits = ctx.rate_limits.all().await.unwrap_or_default();
    Value::Array(
        ctx.registered
            .iter()
            .map(|name| match limits.get(*name) {
                Some(rate) => json!(format!("{name} [rate_limit={rate}]")),
                None => json!(name),
            })
            .collect(),
    )
}

/// `revoke`: the ids (one or a list) are kept for every worker of the
/// platform, so a task not yet run never runs. `terminate` cannot stop a
/// send in its SMTP transaction (once the server has accepted the message
/// it is sent), and the reply says so for the tasks this worker is running.
async fn revoke(state: &WorkerState, ctx: &ControlContext, request: &Request) -> Value {
    let ids = ids_of(request.argument("task_id"));
    if let Err(e) = ctx.revoked.revoke(&ids).await {
        tracing::warn!(error = %e, "cannot record a revoke");
        return json!({"error": format!("cannot record the revoke: {e}")});
    }
    tracing::info!(tasks = ?ids, "tasks revoked");
    // As Python prints the set of ids Celery replies with.
    let listed = ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut reply = format!("tasks {{{listed}}} flagged as revoked");
    let terminate = request
        .argument("terminate")
        .is_some_and(|t| t.as_bool() == Some(true));
    if terminate {
        let active = lock(&state.active);
        let running: Vec<&String> = ids.iter().filter(|id| active.contains_key(*id)).collect();
        if !running.is_empty() {
            reply.push_str(&format!(
                "; not terminated: {running:?} in an SMTP transaction, which cannot be \
                 recalled (its outcome is recorded as usual)"
            ));
        }
    }
    json!({"ok": reply})
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
        let vars = std::collections::HashMap::from([
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1/x".to_string(),
            ),
            (
                "ENCRYPTION_KEY",
                "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=".to_string(),
            ),
            (
                "CELERY_BROKER_URL",
                "amqp://guest:secret@127.0.0.1:5672/%2f".to_string(),
            ),
            ("CELERY_DEFAULT_QUEUE", "q".to_string()),
        ]);
        let settings = platform::Settings::from_lookup_for(platform::config::Role::Worker, |k| {
            vars.get(k).cloned()
        })
        .unwrap();
        let redis = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        ControlContext {
            registered: vec![
                platform::tasks::SEND_EMAIL,
                platform::tasks::SEND_EMAIL_BATCH,
            ],
            aliases: platform::celery::TaskAliases::parse(
                "app.tasks.send_email=notifications.send_email",
            )
            .unwrap(),
            prefetch: 8,
            timeouts: [10.0, 12.0],
            broker: broker_info("amqp://guest:secret@127.0.0.1:5672/%2f", 10),
            queues: Arc::new(ConsumedQueues::new(&["q".into(), "q.bulk".into()])),
            queue_arguments: json!({}),
            queue_names: settings.queues.clone(),
            settings: Arc::new(settings),
            pool: Arc::new(Pool::new(4)),
            time_limits: Arc::new(TimeLimits::new(
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(12),
            )),
            rate_limits: RateLimits::new(redis.clone(), "remote-control-unit-test"),
            db: sqlx::PgPool::connect_lazy("postgres://postgres@127.0.0.1/x").unwrap(),
            shutdown: CancellationToken::new(),
            revoked: Revocations::new(
                redis,
                "q",
                platform::config::Revokes {
                    expires: std::time::Duration::from_secs(60),
                    max: 10,
                },
            ),
        }
    }

    fn request_with(method: &str, arguments: Value) -> Request {
        Request::decode(
            json!({"method": method, "arguments": arguments})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    fn request(method: &str) -> Request {
        Request::decode(json!({"method": method}).to_string().as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn answers_ping_registered_stats_and_shutdown() {
        let state = WorkerState::new("w@h".into(), false);
        let ctx = ctx();
        assert_eq!(
            answer(&state, &ctx, &request("ping")).await,
            Some(json!({"ok": "pong"}))
        );
        assert_eq!(
            answer(&state, &ctx, &request("registered")).await,
            Some(json!([
                platform::tasks::SEND_EMAIL,
                platform::tasks::SEND_EMAIL_BATCH
            ]))
        );
        let stats = answer(&state, &ctx, &request("stats")).await.unwrap();
        assert_eq!(stats["pool"]["max-concurrency"], 4);
        assert!(stats["rusage"]["maxrss"].as_u64().is_some());
        assert_eq!(stats["broker"]["virtual_host"], "/");
        assert!(!stats.to_string().contains("secret"));
        assert!(answer(&state, &ctx, &request("heartbeat")).await.is_none());
        answer(&state, &ctx, &request("enable_events")).await;
        assert!(state.events_enabled());
        answer(&state, &ctx, &request("shutdown")).await;
        assert!(ctx.shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn control_commands_change_the_worker_and_reply_as_celery() {
        let state = WorkerState::new("w@h".into(), false);
        let ctx = ctx();
        let ask = |method: &str, arguments: Value| {
            let request = request_with(method, arguments);
            let (state, ctx) = (&state, &ctx);
            async move { answer(state, ctx, &request).await.unwrap() }
        };
        assert_eq!(
            ask("pool_grow", json!({"n": 2})).await,
            json!({"ok": "pool will grow"})
        );
        assert_eq!(ctx.pool.limit(), 6);
        assert_eq!(
            ask("pool_shrink", json!({"n": 3})).await,
            json!({"ok": "pool will shrink"})
        );
        assert_eq!(ask("stats", json!({})).await["pool"]["max-concurrency"], 3);
        assert_eq!(
            ask("autoscale", json!({"max": 5, "min": 2})).await,
            json!({"ok": "autoscale now max=5 min=2"})
        );
        assert_eq!(ask("stats", json!({})).await["autoscaler"]["max"], 5);
        assert!(ask("pool_grow", json!({"n": 1})).await["error"]
            .as_str()
            .unwrap()
            .contains("not supported with autoscale"));

        assert_eq!(
            ask(
                "time_limit",
                json!({"task_name": "app.tasks.send_email", "soft": 2, "hard": 3})
            )
            .await,
            json!({"ok": "time limits set successfully"})
        );
        assert_eq!(
            ctx.time_limits.of(platform::tasks::SEND_EMAIL).soft,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            ask("time_limit", json!({"task_name": "nope", "soft": 2})).await,
            json!({"error": "unknown task"})
        );
        assert!(ask(
            "rate_limit",
            json!({"task_name": "nope", "rate_limit": "fast"})
        )
        .await["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid rate limit string"));

        assert_eq!(
            ask("add_consumer", json!({"queue": "extra", "exchange": null})).await,
            json!({"ok": "add consumer extra"})
        );
        let queues = ask("active_queues", json!({})).await;
        let names: Vec<&str> = queues
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["q", "q.bulk", "extra"]);
        assert_eq!(queues[2]["exchange"]["name"], "extra");
        assert_eq!(
            ask("cancel_consumer", json!({"queue": "q.bulk"})).await,
            json!({"ok": "no longer consuming from q.bulk"})
        );
        assert_eq!(
            ask("active_queues", json!({}))
                .await
                .as_array()
                .unwrap()
                .len(),
            2
        );

        let conf = ask("conf", json!({"with_defaults": false})).await;
        assert_eq!(
            conf["broker_url"],
            "amqp://guest:********@127.0.0.1:5672/%2f"
        );
        assert_eq!(conf["task_default_queue"], "q");
        assert_eq!(conf["task_acks_late"], true);
        assert!(!conf.to_string().contains("secret"));
        assert!(ask("report", json!({})).await["ok"]
            .as_str()
            .unwrap()
            .contains("software -> notify-worker"));
        assert_eq!(ask("reserved", json!({})).await, json!([]));
    }
}
