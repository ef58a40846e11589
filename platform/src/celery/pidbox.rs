//! Celery's remote control ("pidbox") and event wire formats, as kombu's
//! `Mailbox`/`Node` and Celery's `EventDispatcher` use them.
//!
//! * Requests arrive on the fanout exchange `celery.pidbox` (declared by
//!   kombu as non-durable, not auto-delete), each node consuming its own
//!   auto-delete queue `<node>.celery.pidbox`.
//! * A request body is `{"method", "arguments", "destination", "ticket",
//!   "reply_to": {"exchange", "routing_key"}}`; `destination` null means
//!   every node, otherwise a list of node names.
//! * Replies go to the direct exchange named in `reply_to` (normally
//!   `reply.celery.pidbox`, non-durable) with its routing key, body
//!   `{"<node>": <reply>}`, the `ticket` and a `clock` in the headers
//!   (kombu's `Mailbox._publish_reply`), transient, JSON.
//! * Events go to the topic exchange `celeryev` (durable, as Celery's
//!   `event_exchange`) with routing key = type with `-` replaced by `.`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The control exchange (`app.conf.control_exchange` + `.pidbox`).
pub const EXCHANGE: &str = "celery.pidbox";
/// Where replies go by default (`reply.<namespace>.pidbox`).
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// Celery's event exchange.
pub const EVENT_EXCHANGE: &str = "celeryev";
/// Celery's `control_queue_expires` (10 s) and `control_queue_ttl` (300 s).
const QUEUE_EXPIRES_MS: i64 = 10_000;
const QUEUE_TTL_MS: i64 = 300_000;

#[derive(Debug, thiserror::Error)]
pub enum PidboxError {
    #[error("not a remote-control request: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReplyTo {
    pub exchange: String,
    pub routing_key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Request {
    pub method: String,
    #[serde(default)]
    pub arguments: Option<Map<String, Value>>,
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub ticket: Option<Value>,
    #[serde(default)]
    pub reply_to: Option<ReplyTo>,
}

impl Request {
    pub fn decode(body: &[u8]) -> Result<Request, PidboxError> {
        Ok(serde_json::from_slice(body)?)
    }

    /// kombu's `Node.handle_message`: a non-empty destination names the
    /// nodes; otherwise a pattern (matched here exactly or as `*`), else all.
    pub fn is_for(&self, node: &str) -> bool {
        match (&self.destination, &self.pattern) {
            (Some(d), _) if !d.is_empty() => d.iter().any(|n| n == node),
            (_, Some(p)) if !p.is_empty() => p == "*" || p == node,
            _ => true,
        }
    }

    pub fn argument(&self, name: &str) -> Option<&Value> {
        self.arguments.as_ref().and_then(|a| a.get(name))
    }
}

/// The queue a node consumes its requests from.
pub fn node_queue(node: &str) -> String {
    format!("{node}.celery.pidbox")
}

/// `{"<node>": reply}`.
pub fn reply_body(node: &str, reply: Value) -> Vec<u8> {
    Value::Object(Map::from_iter([(node.to_string(), reply)]))
        .to_string()
        .into_bytes()
}

/// Properties of a reply: JSON, transient, `ticket` and `clock` headers.
pub fn reply_properties(ticket: Option<&Value>, clock: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(ticket) = ticket {
        let ticket = match ticket {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        headers.insert(
            ShortString::from("ticket"),
            AMQPValue::LongString(LongString::from(ticket.into_bytes())),
        );
    }
    headers.insert(
        ShortString::from("clock"),
        AMQPValue::LongLongInt(clock as i64),
    );
    json_properties(headers)
}

/// Properties of an event: JSON, transient, a `hostname` header.
pub fn event_properties(node: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("hostname"),
        AMQPValue::LongString(LongString::from(node.as_bytes().to_vec())),
    );
    json_properties(headers)
}

fn json_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(1)
        .with_headers(headers)
}

/// The routing key of an event type (`task-succeeded` → `task.succeeded`).
pub fn event_routing_key(event_type: &str) -> String {
    event_type.replace('-', ".")
}

fn non_durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: false,
        auto_delete: false,
        ..Default::default()
    }
}

/// Declares the control exchange and this node's queue, bound to it.
pub async fn declare_node(channel: &Channel, node: &str) -> Result<String, lapin::Error> {
    channel
        .exchange_declare(
            EXCHANGE,
            ExchangeKind::Fanout,
            non_durable(),
            FieldTable::default(),
        )
        .await?;
    let queue = node_queue(node);
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongLongInt(QUEUE_EXPIRES_MS),
    );
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(QUEUE_TTL_MS),
    );
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: false,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            &queue,
            EXCHANGE,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(queue)
}

/// Declares a reply exchange as kombu does (direct, non-durable).
pub async fn declare_reply_exchange(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name,
            ExchangeKind::Direct,
            non_durable(),
            FieldTable::default(),
        )
        .await
}

/// Declares Celery's event exchange (topic, durable).
pub async fn declare_event_exchange(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            EVENT_EXCHANGE,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_celery_request_and_filters_by_destination() {
        let body = br#"{"method": "ping", "arguments": {}, "destination": ["a@x"],
            "pattern": null, "matcher": null, "ticket": "t-1",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "r-1"}}"#;
        let r = Request::decode(body).unwrap();
        assert_eq!(r.method, "ping");
        assert!(r.is_for("a@x"));
        assert!(!r.is_for("b@x"));
        assert_eq!(r.reply_to.unwrap().routing_key, "r-1");
        let all = Request::decode(br#"{"method": "stats", "destination": null}"#).unwrap();
        assert!(all.is_for("anyone"));
    }

    #[test]
    fn reply_carries_the_ticket() {
        let p = reply_properties(Some(&Value::String("t-1".into())), 3);
        let h = p.headers().clone().unwrap();
        assert!(h.inner().contains_key("ticket"));
        assert_eq!(
            reply_body("n@h", serde_json::json!({"ok": "pong"})),
            br#"{"n@h":{"ok":"pong"}}"#.to_vec()
        );
        assert_eq!(event_routing_key("worker-heartbeat"), "worker.heartbeat");
    }
}
