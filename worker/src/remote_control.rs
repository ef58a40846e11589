//! Celery remote control for this worker: answers `celery inspect` /
//! `celery control` requests arriving over the pidbox and sends the
//! heartbeat events, from what [`WorkerState`] knows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use platform::celery::pidbox::{self, Request};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::revoked::Revocations;
use crate::worker_state::{lock, WorkerState, HEARTBEAT};

/// Facts about the worker that replies need.
pub struct ControlContext {
    /// Task names this worker runs (`inspect registered`).
    pub registered: Vec<&'static str>,
    pub concurrency: usize,
    pub prefetch: u16,
    pub timeouts: [f64; 2],
    pub broker: Value,
    pub queues: Vec<String>,
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
        "registered" => json!(ctx.registered),
        "active" => {
            let active = lock(&state.active);
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
                            "hostname": state.node,
                            "time_start": t.time_start,
                            "acknowledged": false,
                            "delivery_info": t.delivery_info,
                            "worker_pid": state.pid,
                        })
                    })
                    .collect(),
            )
        }
        "stats" => json!({
            "pid": state.pid,
            "clock": state.clock.load(Ordering::Relaxed).to_string(),
            "uptime": state.started.elapsed().as_secs(),
            "total": *lock(&state.processed),
            "pool": {
                "implementation": "tokio",
                "max-concurrency": ctx.concurrency,
                "processes": [state.pid],
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
        "scheduled" | "reserved" => json!([]),
        "conf" => json!({}),
        "clock" => json!({"clock": state.tick()}),
        "report" => json!({"ok": format!("{} ({})", state.node, env!("CARGO_PKG_VERSION"))}),
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
        "heartbeat" => return None,
        other => json!({"error": format!("No such command: {other}")}),
    };
    Some(reply)
}

/// `revoke`: the ids (one or a list) are kept for every worker of the
/// platform, so a task not yet run never runs. `terminate` cannot stop a
/// send in its SMTP transaction (once the server has accepted the message
/// it is sent), and the reply says so for the tasks this worker is running.
async fn revoke(state: &WorkerState, ctx: &ControlContext, request: &Request) -> Value {
    let ids: Vec<String> = match request.argument("task_id") {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
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
        ControlContext {
            registered: vec![
                platform::tasks::SEND_EMAIL,
                platform::tasks::SEND_EMAIL_BATCH,
            ],
            concurrency: 4,
            prefetch: 8,
            timeouts: [10.0, 12.0],
            broker: broker_info("amqp://guest:secret@127.0.0.1:5672/%2f", 10),
            queues: vec!["q".into(), "q.bulk".into()],
            shutdown: CancellationToken::new(),
            revoked: Revocations::new(
                deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .unwrap(),
                "q",
                platform::config::Revokes {
                    expires: std::time::Duration::from_secs(60),
                    max: 10,
                },
            ),
        }
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
        assert_eq!(stats["broker"]["virtual_host"], "/");
        assert!(!stats.to_string().contains("secret"));
        assert!(answer(&state, &ctx, &request("heartbeat")).await.is_none());
        answer(&state, &ctx, &request("enable_events")).await;
        assert!(state.events_enabled());
        answer(&state, &ctx, &request("shutdown")).await;
        assert!(ctx.shutdown.is_cancelled());
    }
}
