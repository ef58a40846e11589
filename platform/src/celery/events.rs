//! Celery events (`celery.events.EventDispatcher`'s wire format), for
//! Flower and `celery events`: JSON on the topic exchange `celeryev`
//! ([`pidbox::EVENT_EXCHANGE`]), routing key = type with `-` replaced by
//! `.`, each body carrying `type`, `hostname`, `timestamp`, `utcoffset`,
//! `pid` and `clock` beside the event's own fields.
//!
//! The worker emits `worker-*` and `task-*` events of the tasks it runs;
//! the outbox relays of the API and the scheduler emit `task-sent` for the
//! tasks they publish ([`task_sent`], `CELERY_TASK_SEND_SENT_EVENT`), as a
//! Celery producer does with `task_send_sent_event`.

use std::sync::atomic::{AtomicU64, Ordering};

use lapin::options::BasicPublishOptions;
use lapin::Channel;
use serde_json::{json, Map, Value};

use super::pidbox;

/// Seconds since the epoch, as Celery's `time.time()`.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Celery's `utcoffset()`: hours west of UTC.
fn utcoffset() -> i32 {
    -(chrono::Local::now().offset().local_minus_utc() / 3600)
}

/// An event's body: `fields` with the fields every event carries.
pub fn event_body(kind: &str, fields: Value, hostname: &str, pid: u32, clock: u64) -> Vec<u8> {
    let mut event = match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    event.insert("type".into(), kind.into());
    event.insert("hostname".into(), hostname.into());
    event.insert("timestamp".into(), unix_now().into());
    event.insert("utcoffset".into(), utcoffset().into());
    event.insert("pid".into(), pid.into());
    event.insert("clock".into(), clock.into());
    Value::Object(event).to_string().into_bytes()
}

/// Publishes one event body (not confirmed, transient: events are
/// advisory, as Celery's are).
pub async fn publish(
    channel: &Channel,
    kind: &str,
    hostname: &str,
    body: &[u8],
) -> Result<(), lapin::Error> {
    channel
        .basic_publish(
            pidbox::EVENT_EXCHANGE,
            &pidbox::event_routing_key(kind),
            BasicPublishOptions::default(),
            body,
            pidbox::event_properties(hostname),
        )
        .await
        .map(drop)
}

/// The fields of `task-sent` for a task message's headers (as JSON), as
/// Celery's `amqp.send_task_message` fills them: `uuid`, `root_id`,
/// `parent_id`, `name`, `args` and `kwargs` (their reprs), `retries`,
/// `eta`, `expires`, `queue`, `exchange`, `routing_key`.
pub fn task_sent(headers: &Map<String, Value>, exchange: &str, routing_key: &str) -> Value {
    let field = |name: &str| headers.get(name).cloned().unwrap_or(Value::Null);
    json!({
        "uuid": field("id"),
        "root_id": field("root_id"),
        "parent_id": field("parent_id"),
        "name": field("task"),
        "args": field("argsrepr"),
        "kwargs": field("kwargsrepr"),
        "retries": headers.get("retries").cloned().unwrap_or(json!(0)),
        "eta": field("eta"),
        "expires": field("expires"),
        "queue": routing_key,
        "exchange": exchange,
        "routing_key": routing_key,
    })
}

/// A producer's events: its name and Lamport clock.
pub struct Dispatcher {
    hostname: String,
    pid: u32,
    clock: AtomicU64,
}

impl Dispatcher {
    /// Celery names a producer that is not a worker `gen<pid>@<host>`
    /// (`anon_nodename`).
    pub fn producer(host: &str) -> Self {
        let pid = std::process::id();
        Dispatcher {
            hostname: format!("gen{pid}@{host}"),
            pid,
            clock: AtomicU64::new(0),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Sends one event on `channel`.
    pub async fn send(
        &self,
        channel: &Channel,
        kind: &str,
        fields: Value,
    ) -> Result<(), lapin::Error> {
        let clock = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let body = event_body(kind, fields, &self.hostname, self.pid, clock);
        publish(channel, kind, &self.hostname, &body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::TaskMessage;

    #[test]
    fn task_sent_has_celerys_fields() {
        let mut task = TaskMessage::new("notifications.send_email", "t-1", vec![], Map::new());
        task.headers.retries = 2;
        let fields = task_sent(&task.headers_json(), "q", "q");
        let body = event_body("task-sent", fields, "gen1@h", 1, 7);
        let event: Value = serde_json::from_slice(&body).unwrap();
        for key in [
            "uuid",
            "root_id",
            "parent_id",
            "name",
            "args",
            "kwargs",
            "retries",
            "eta",
            "expires",
            "queue",
            "exchange",
            "routing_key",
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "timestamp",
            "type",
        ] {
            assert!(event.get(key).is_some(), "{key} missing from {event}");
        }
        assert_eq!(event["type"], "task-sent");
        assert_eq!(event["uuid"], "t-1");
        assert_eq!(event["name"], "notifications.send_email");
        assert_eq!(event["retries"], 2);
        assert_eq!(event["queue"], "q");
        assert_eq!(event["clock"], 7);
        assert_eq!(
            Dispatcher::producer("h").hostname(),
            format!("gen{}@h", std::process::id())
        );
    }
}
