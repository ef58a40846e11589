//! The task queues this worker consumes: the configured ones at start, then
//! as `celery control add_consumer` / `cancel_consumer` change them. The
//! set outlives broker reconnects (each session consumes what it holds
//! then) but not the process, as with Celery.

use serde_json::{json, Value};
use tokio::sync::watch;

/// A consumed queue and how it is bound, as kombu's `Queue` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub exchange: String,
    /// `direct`, `topic`, `fanout` or `headers`.
    pub exchange_type: String,
    pub routing_key: String,
}

impl QueueSpec {
    /// Our layout: a direct exchange of the queue's name, routing key too.
    pub fn named(name: &str) -> Self {
        QueueSpec {
            name: name.to_string(),
            exchange: name.to_string(),
            exchange_type: "direct".into(),
            routing_key: name.to_string(),
        }
    }

    /// kombu's `Queue.as_dict(recurse=True)`, as `inspect active_queues`
    /// lists it; `arguments`: the queue's declaration arguments.
    pub fn as_kombu(&self, arguments: &Value) -> Value {
        let queue_arguments = match arguments {
            Value::Object(map) if map.is_empty() => Value::Null,
            other => other.clone(),
        };
        json!({
            "name": self.name,
            "exchange": {
                "name": self.exchange, "type": self.exchange_type, "arguments": null,
                "durable": true, "passive": false, "auto_delete": false,
                "delivery_mode": null, "no_declare": false,
            },
            "routing_key": self.routing_key,
            "queue_arguments": queue_arguments,
            "binding_arguments": null,
            "consumer_arguments": null,
            "durable": true,
            "exclusive": false,
            "auto_delete": false,
            "no_ack": false,
            "alias": null,
            "bindings": [],
            "no_declare": null,
            "expires": null,
            "message_ttl": null,
            "max_length": null,
            "max_length_bytes": null,
            "max_priority": arguments.get("x-max-priority").cloned().unwrap_or(Value::Null),
        })
    }
}

pub struct ConsumedQueues {
    set: watch::Sender<Vec<QueueSpec>>,
}

impl ConsumedQueues {
    pub fn new(names: &[String]) -> Self {
        ConsumedQueues {
            set: watch::Sender::new(names.iter().map(|n| QueueSpec::named(n)).collect()),
        }
    }

    pub fn current(&self) -> Vec<QueueSpec> {
        self.set.borrow().clone()
    }

    /// Follows the set (a session starts the lanes it lacks and stops the
    /// ones no longer in it).
    pub fn watch(&self) -> watch::Receiver<Vec<QueueSpec>> {
        self.set.subscribe()
    }

    /// Adds a queue; `false` if it is consumed already.
    pub fn add(&self, spec: QueueSpec) -> bool {
        self.set.send_if_modified(|set| {
            if set.iter().any(|q| q.name == spec.name) {
                return false;
            }
            set.push(spec);
            true
        })
    }

    /// Stops consuming a queue; `false` if it was not consumed.
    pub fn cancel(&self, name: &str) -> bool {
        self.set.send_if_modified(|set| {
            let before = set.len();
            set.retain(|q| q.name != name);
            set.len() != before
        })
    }
}

/// A queue name RabbitMQ accepts and our ladder can extend (its rungs add
/// a suffix): 1 to 200 bytes, no control characters, not `amq.`-reserved.
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with("amq.")
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_cancels_queues_once() {
        let queues = ConsumedQueues::new(&["q".into(), "q.bulk".into()]);
        assert!(queues.add(QueueSpec::named("extra")));
        assert!(!queues.add(QueueSpec::named("extra")));
        assert!(queues.cancel("q.bulk"));
        assert!(!queues.cancel("q.bulk"));
        let names: Vec<String> = queues.current().into_iter().map(|q| q.name).collect();
        assert_eq!(names, ["q", "extra"]);
        let dict = QueueSpec::named("q").as_kombu(&json!({}));
        assert_eq!(dict["exchange"]["type"], "direct");
        assert_eq!(dict["queue_arguments"], Value::Null);
        assert!(!valid_queue_name("amq.gen"));
        assert!(!valid_queue_name(""));
    }
}
