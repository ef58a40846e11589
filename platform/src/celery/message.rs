//! Celery protocol v2 task messages with JSON bodies.
//!
//! Headers carry the task's identity and scheduling (`task`, `id`, `eta`,
//! `expires`, `retries`, ...); the body is `[args, kwargs, embed]`. Unknown
//! headers are kept (and re-published on retry) but otherwise ignored.
//! A body kombu compressed (the `compression` header) is decompressed; the
//! message is then carried on uncompressed, without that header.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::amqp_table::{json_to_table, table_to_json};
use super::compression::{self, CompressionError};

pub const CONTENT_TYPE: &str = "application/json";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("unsupported content type {0:?}: only application/json task messages are accepted")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}: expected utf-8")]
    UnsupportedEncoding(String),
    #[error("message has no headers: not a Celery protocol v2 task message")]
    NoHeaders,
    #[error("invalid task headers: {0}")]
    InvalidHeaders(String),
    #[error("body is not a JSON array [args, kwargs, embed]: {0}")]
    InvalidBody(String),
    #[error("{0}")]
    Compression(#[from] CompressionError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHeaders {
    #[serde(default = "default_lang")]
    pub lang: String,
    pub task: String,
    pub id: String,
    #[serde(default)]
    pub root_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default, with = "celery_time")]
    pub eta: Option<DateTime<Utc>>,
    #[serde(default, with = "celery_time")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub retries: u32,
    /// `[hard, soft]` seconds (`[time_limit, soft_time_limit]`), as Celery
    /// writes it; see [`TaskHeaders::time_limits`].
    #[serde(default = "no_timelimit")]
    pub timelimit: (Option<f64>, Option<f64>),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argsrepr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargsrepr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Headers this implementation does not interpret, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_lang() -> String {
    "py".into()
}

fn no_timelimit() -> (Option<f64>, Option<f64>) {
    (None, None)
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or(0))
}

/// Celery writes `datetime.isoformat()`: RFC 3339, or without an offset,
/// which means UTC.
mod celery_time {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, false)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let Some(raw) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        parse(&raw)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{raw:?} is not an ISO 8601 time")))
    }

    pub fn parse(raw: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
            return Some(t.with_timezone(&Utc));
        }
        NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc())
    }
}

/// A Celery time header (`eta`, `expires`) or option, as `celery_time` reads it.
pub(super) fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    celery_time::parse(raw)
}

impl TaskHeaders {
    /// The soft and hard time limits this task runs under: its `timelimit`
    /// header, `[hard, soft]` as Celery writes it (`[time_limit,
    /// soft_time_limit]` of `apply_async`), each capped by the worker's own
    /// (`soft`, `hard`): the lower wins, and a null (or a value that is no
    /// positive number of seconds) means the worker's.
    pub fn time_limits(&self, soft: Duration, hard: Duration) -> (Duration, Duration) {
        let capped = |asked: Option<f64>, own: Duration| {
            asked
                .filter(|s| *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map_or(own, |asked| asked.min(own))
        };
        (
            capped(self.timelimit.1, soft),
            capped(self.timelimit.0, hard),
        )
    }

    pub fn new(task: &str, id: &str) -> Self {
        TaskHeaders {
            lang: default_lang(),
            task: task.to_string(),
            id: id.to_string(),
            root_id: Some(id.to_string()),
            parent_id: None,
            group: None,
            eta: None,
            expires: None,
            retries: 0,
            timelimit: no_timelimit(),
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    pub headers: TaskHeaders,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// `null` or `{callbacks, errbacks, chain, chord}`.
    pub embed: Value,
    pub priority: Option<u8>,
    pub reply_to: Option<String>,
}

impl TaskMessage {
    pub fn new(task: &str, id: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let mut headers = TaskHeaders::new(task, id);
        headers.argsrepr = Some(Value::Array(args.clone()).to_string());
        headers.kwargsrepr = Some(Value::Object(kwargs.clone()).to_string());
        TaskMessage {
            headers,
            args,
            kwargs,
            embed: Value::Object(Map::from_iter([
                ("callbacks".to_string(), Value::Null),
                ("errbacks".to_string(), Value::Null),
                ("chain".to_string(), Value::Null),
                ("chord".to_string(), Value::Null),
            ])),
            priority: None,
            reply_to: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.headers.id
    }

    pub fn task(&self) -> &str {
        &self.headers.task
    }

    pub fn body(&self) -> Vec<u8> {
        let body = Value::Array(vec![
            Value::Array(self.args.clone()),
            Value::Object(self.kwargs.clone()),
            self.embed.clone(),
        ]);
        body.to_string().into_bytes()
    }

    pub fn headers_json(&self) -> Map<String, Value> {
        match serde_json::to_value(&self.headers) {
            Ok(Value::Object(map)) => map,
            // TaskHeaders always serializes to an object.
            _ => Map::new(),
        }
    }

    pub fn properties(&self) -> BasicProperties {
        amqp_properties(
            &self.headers.id,
            &self.headers_json(),
            self.priority,
            self.reply_to.as_deref(),
        )
    }

    /// Decodes a delivery. Refuses anything but JSON: pickle and other
    /// serializers would let a producer run code in the worker.
    pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Self, DecodeError> {
        let content_type = properties.content_type().as_ref().map(ShortString::as_str);
        if content_type != Some(CONTENT_TYPE) {
            return Err(DecodeError::UnsupportedContentType(
                content_type.unwrap_or("<none>").to_string(),
            ));
        }
        if let Some(encoding) = properties.content_encoding() {
            let encoding = encoding.as_str().to_ascii_lowercase();
            if encoding != "utf-8" && encoding != "utf8" {
                return Err(DecodeError::UnsupportedEncoding(encoding));
            }
        }
        let table = properties
            .headers()
            .as_ref()
            .ok_or(DecodeError::NoHeaders)?;
        let mut headers: TaskHeaders = serde_json::from_value(Value::Object(table_to_json(table)))
            .map_err(|e| DecodeError::InvalidHeaders(e.to_string()))?;
        let decompressed;
        let body = match headers.extra.remove("compression") {
            None | Some(Value::Null) => body,
            Some(Value::String(method)) => {
                decompressed =
                    compression::decompress(&method, body, compression::MAX_DECOMPRESSED)?;
                &decompressed[..]
            }
            Some(other) => {
                return Err(CompressionError::Unsupported(other.to_string()).into());
            }
        };

        let body: Value =
            serde_json::from_slice(body).map_err(|e| DecodeError::InvalidBody(e.to_string()))?;
        let Value::Array(mut parts) = body else {
            return Err(DecodeError::InvalidBody("not an array".into()));
        };
        if parts.len() < 2 || parts.len() > 3 {
            return Err(DecodeError::InvalidBody(format!(
                "{} elements",
                parts.len()
            )));
        }
        let embed = if parts.len() == 3 {
            parts.pop().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let kwargs = match parts.pop() {
            Some(Value::Object(map)) => map,
            Some(Value::Null) => Map::new(),
            _ => return Err(DecodeError::InvalidBody("kwargs is not an object".into())),
        };
        let args = match parts.pop() {
            Some(Value::Array(args)) => args,
            Some(Value::Null) => Vec::new(),
            _ => return Err(DecodeError::InvalidBody("args is not an array".into())),
        };
        Ok(TaskMessage {
            headers,
            args,
            kwargs,
            embed,
            priority: *properties.priority(),
            reply_to: properties.reply_to().as_ref().map(|s| s.to_string()),
        })
    }
}

/// AMQP properties of a Celery task message, as kombu sets them.
pub fn amqp_properties(
    task_id: &str,
    headers: &Map<String, Value>,
    priority: Option<u8>,
    reply_to: Option<&str>,
) -> BasicProperties {
    let table: FieldTable = json_to_table(headers);
    let mut props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_content_encoding("utf-8".into())
        .with_correlation_id(task_id.into())
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(p) = priority {
        props = props.with_priority(p);
    }
    if let Some(r) = reply_to {
        props = props.with_reply_to(r.into());
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encode_decode_round_trip() {
        let kwargs = json!({"message_id": "m1"}).as_object().cloned().unwrap();
        let mut msg = TaskMessage::new("notifications.send_email", "t1", vec![json!(1)], kwargs);
        msg.headers.eta = Some(Utc::now());
        msg.headers.retries = 2;
        let decoded = TaskMessage::decode(&msg.properties(), &msg.body()).unwrap();
        assert_eq!(decoded.headers.task, "notifications.send_email");
        assert_eq!(decoded.headers.retries, 2);
        assert_eq!(decoded.args, vec![json!(1)]);
        assert_eq!(decoded.kwargs["message_id"], "m1");
        assert_eq!(
            decoded.headers.eta.unwrap().timestamp_micros(),
            msg.headers.eta.unwrap().timestamp_micros()
        );
        assert_eq!(
            decoded
                .properties()
                .correlation_id()
                .as_ref()
                .unwrap()
                .as_str(),
            "t1"
        );
    }

    #[test]
    fn python_shaped_headers_decode_and_unknown_ones_are_kept() {
        let headers = json!({
            "lang": "py", "task": "x", "id": "abc", "shadow": null, "eta": "2026-01-02T03:04:05.000006",
            "expires": null, "group": null, "group_index": null, "retries": 0,
            "timelimit": [null, null], "root_id": "abc", "parent_id": null,
            "argsrepr": "()", "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": false,
            "stamped_headers": null, "stamps": {}, "future_field": [1, 2]
        });
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(json_to_table(headers.as_object().unwrap()));
        let body = br#"[[], {"to": "a@b.c"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
        let msg = TaskMessage::decode(&props, body).unwrap();
        assert_eq!(
            msg.headers.eta.unwrap().to_rfc3339(),
            "2026-01-02T03:04:05.000006+00:00"
        );
        assert_eq!(msg.headers.extra["future_field"], json!([1, 2]));
        assert_eq!(msg.kwargs["to"], "a@b.c");
    }

    #[test]
    fn a_messages_time_limits_are_capped_by_the_workers() {
        let (soft, hard) = (Duration::from_secs(30), Duration::from_secs(60));
        let mut h = TaskHeaders::new("x", "y");
        // The header is [hard, soft]; the answer (soft, hard).
        for (asked, want) in [
            ((None, None), (30.0, 60.0)),
            ((Some(2.0), Some(1.0)), (1.0, 2.0)),
            ((None, Some(0.5)), (0.5, 60.0)),
            ((Some(5.0), None), (30.0, 5.0)),
            ((Some(100.0), Some(200.0)), (30.0, 60.0)),
            ((Some(-1.0), Some(f64::NAN)), (30.0, 60.0)),
            ((Some(0.0), Some(f64::INFINITY)), (30.0, 60.0)),
        ] {
            h.timelimit = asked;
            let (s, hd) = h.time_limits(soft, hard);
            assert_eq!((s.as_secs_f64(), hd.as_secs_f64()), want, "{asked:?}");
        }
    }

    #[test]
    fn a_compressed_body_is_decompressed_and_carried_on_plain() {
        use std::io::Write;
        let msg = TaskMessage::new(
            "notifications.send_email",
            "t1",
            vec![],
            json!({"to": "z@example.org"}).as_object().cloned().unwrap(),
        );
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&msg.body()).unwrap();
        let compressed = zlib.finish().unwrap();
        let mut headers = msg.headers_json();
        headers.insert("compression".into(), json!("application/x-gzip"));
        let props = amqp_properties("t1", &headers, None, None);
        let decoded = TaskMessage::decode(&props, &compressed).unwrap();
        assert_eq!(decoded.kwargs["to"], "z@example.org");
        // Re-published (a retry, a delay) as it is now: plain JSON.
        assert!(!decoded.headers_json().contains_key("compression"));
        assert!(TaskMessage::decode(&decoded.properties(), &decoded.body()).is_ok());

        headers.insert("compression".into(), json!("application/zstd"));
        let props = amqp_properties("t1", &headers, None, None);
        assert!(matches!(
            TaskMessage::decode(&props, &compressed),
            Err(DecodeError::Compression(CompressionError::Unsupported(_)))
        ));
    }

    #[test]
    fn pickle_and_garbage_are_refused() {
        let props =
            BasicProperties::default().with_content_type("application/x-python-serialize".into());
        assert!(matches!(
            TaskMessage::decode(&props, b"\x80\x04"),
            Err(DecodeError::UnsupportedContentType(_))
        ));
        let msg = TaskMessage::new("x", "y", vec![], Map::new());
        for body in [
            &b"not json"[..],
            b"{}",
            b"[1]",
            b"[1, 2, 3]",
            b"[[], [], null]",
        ] {
            assert!(
                TaskMessage::decode(&msg.properties(), body).is_err(),
                "{body:?}"
            );
        }
        let no_headers = BasicProperties::default().with_content_type("application/json".into());
        assert_eq!(
            TaskMessage::decode(&no_headers, b"[[],{},null]"),
            Err(DecodeError::NoHeaders)
        );
    }
}
