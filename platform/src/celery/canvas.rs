//! Celery's canvas: the signatures a task message embeds (`link`,
//! `link_error`, the rest of a chain, a chord's body) and the task
//! messages that applying one publishes, as `Signature.apply_async` does
//! in celery 5.4 (`celery/canvas.py`, `celery/app/base.py::send_task`,
//! `celery/app/amqp.py::as_task_v2`).
//!
//! A signature is `{"task", "args", "kwargs", "options", "subtask_type",
//! "immutable"}`; `subtask_type` is null for one task, `"chain"` or
//! `"group"` (their signatures in `kwargs.tasks`), or `"chord"`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::message::{parse_time, TaskMessage};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CanvasError {
    #[error("not a Celery signature: {0}")]
    Invalid(String),
    #[error("{0} is not supported by this worker")]
    Unsupported(String),
}

/// What a task message embeds (`[args, kwargs, embed]`), each list empty
/// when absent or null.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    /// `link`: applied with the result prepended, after a success.
    pub callbacks: Vec<Value>,
    /// `link_error`: applied after a final failure.
    pub errbacks: Vec<Value>,
    /// The rest of a chain, reversed: the last element runs next.
    pub chain: Vec<Value>,
    /// The body of the chord this task is a header part of.
    pub chord: Option<Value>,
}

fn listed(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items.iter().filter(|v| !v.is_null()).cloned().collect(),
        Some(Value::Null) | None => Vec::new(),
        // A lone signature where Celery would have a list of one.
        Some(other) => vec![other.clone()],
    }
}

impl Embed {
    pub fn of(message: &TaskMessage) -> Embed {
        let embed = &message.embed;
        Embed {
            callbacks: listed(embed.get("callbacks")),
            errbacks: listed(embed.get("errbacks")),
            chain: listed(embed.get("chain")),
            chord: embed.get("chord").filter(|c| !c.is_null()).cloned(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
            && self.errbacks.is_empty()
            && self.chain.is_empty()
            && self.chord.is_none()
    }
}

/// One signature, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub options: Map<String, Value>,
    pub immutable: bool,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Task,
    /// The signatures of a chain, first to run first.
    Chain(Vec<Signature>),
    Group(Vec<Signature>),
    Chord,
}

impl Signature {
    pub fn parse(value: &Value) -> Result<Signature, CanvasError> {
        let Value::Object(map) = value else {
            return Err(CanvasError::Invalid(format!("{value} is not an object")));
        };
        let task = map
            .get("task")
            .and_then(Value::as_str)
            .ok_or_else(|| CanvasError::Invalid("no task name".into()))?
            .to_string();
        let args = match map.get("args") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(CanvasError::Invalid("args is not a list".into())),
        };
        let kwargs = match map.get("kwargs") {
            Some(Value::Object(k)) => k.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(CanvasError::Invalid("kwargs is not an object".into())),
        };
        let options = match map.get("options") {
            Some(Value::Object(o)) => o.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(CanvasError::Invalid("options is not an object".into())),
        };
        let immutable = map
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let members = || -> Result<Vec<Signature>, CanvasError> {
            kwargs
                .get("tasks")
                .and_then(Value::as_array)
                .ok_or_else(|| CanvasError::Invalid("no tasks".into()))?
                .iter()
                .map(Signature::parse)
                .collect()
        };
        let kind = match map.get("subtask_type").and_then(Value::as_str) {
            None => Kind::Task,
            Some("chain") => Kind::Chain(members()?),
            Some("group") => Kind::Group(members()?),
            Some("chord") => Kind::Chord,
            Some(other) => return Err(CanvasError::Unsupported(format!("subtask_type {other:?}"))),
        };
        Ok(Signature {
            task,
            args,
            kwargs,
            options,
            immutable,
            kind,
        })
    }

    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The task id the signature was frozen with (a chain's members, a
    /// chord's body), if any.
    pub fn task_id(&self) -> Option<&str> {
        self.option_str("task_id")
    }

    /// Its `link_error` signatures.
    pub fn errbacks(&self) -> Vec<Value> {
        listed(self.options.get("link_error"))
    }
}

/// Where a task message goes: a queue by name (through the default
/// exchange, declared as Celery declares it if missing), or an exchange the
/// signature names.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Queue(String),
    Exchange {
        exchange: String,
        routing_key: String,
    },
}

/// A task message to publish, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub message: TaskMessage,
    pub route: Route,
}

/// What the applying side passes to `apply_async` besides the partial
/// arguments.
#[derive(Debug, Clone)]
pub struct Applying<'a> {
    /// `parent_id`: the task whose outcome applies the signature.
    pub parent_id: &'a str,
    /// `root_id`: the root of that task's workflow.
    pub root_id: &'a str,
    /// The applying task's priority (Celery's trace passes its own).
    pub priority: Option<u8>,
    /// The `origin` header: this worker's node name.
    pub origin: &'a str,
    /// Celery's `task_default_queue`: where a signature without a `queue`
    /// option goes.
    pub default_queue: &'a str,
    /// `true` for `callback.delay(results)` (a chord's body): the
    /// signature's own `root_id`/`parent_id` options win, as `send_task`
    /// only fills in missing ones; `false` for the trace's callbacks and
    /// chain steps, which pass ours explicitly.
    pub keep_own_ids: bool,
    /// Makes the ids this application invents (tasks and groups without
    /// one) the same on every application: a redelivery that publishes
    /// again publishes the same ids.
    pub seed: String,
    pub now: DateTime<Utc>,
}

impl Applying<'_> {
    fn derived(&self, label: &str) -> Applying<'_> {
        Applying {
            seed: format!("{}/{label}", self.seed),
            ..self.clone()
        }
    }
}

/// A stable task or group id from `seed`, shaped as a UUID.
pub fn derive_id(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl Signature {
    /// What `apply_async(partial_args, chain=chain, ...)` publishes:
    /// `partial_args` go before the signature's own arguments unless it is
    /// immutable; `chain` (reversed, last runs next) rides in the first
    /// message.
    pub fn apply(
        &self,
        partial_args: &[Value],
        chain: Vec<Value>,
        applying: &Applying<'_>,
    ) -> Result<Vec<Publication>, CanvasError> {
        match &self.kind {
            Kind::Task => Ok(vec![self.message(partial_args, chain, None, applying)]),
            Kind::Chain(tasks) => {
                let Some((first, rest)) = tasks.split_first() else {
                    return Ok(Vec::new());
                };
                if !chain.is_empty() {
                    return Err(CanvasError::Unsupported("a chain inside a chain".into()));
                }
                // Celery turns a group followed by a task into a chord
                // (`chain.prepare_steps`).
                if tasks[..tasks.len() - 1]
                    .iter()
                    .any(|t| !matches!(t.kind, Kind::Task))
                {
                    return Err(CanvasError::Unsupported(
                        "a chain with a group or chain before its last step".into(),
                    ));
                }
                let rest: Vec<Value> = rest.iter().rev().map(Signature::to_value).collect();
                first.apply(partial_args, rest, applying)
            }
            Kind::Group(_) => {
                if !chain.is_empty() {
                    return Err(CanvasError::Unsupported(
                        "a group followed by more chain steps (a chord)".into(),
                    ));
                }
                let group_id = self
                    .task_id()
                    .map(str::to_string)
                    .unwrap_or_else(|| derive_id(&format!("{}/group", applying.seed)));
                let mut members = Vec::new();
                self.flatten(&mut members)?;
                Ok(group_messages(&members, &group_id, partial_args, applying))
            }
            Kind::Chord => Err(CanvasError::Unsupported(
                "a chord as a callback or chain step".into(),
            )),
        }
    }

    fn flatten<'a>(&'a self, into: &mut Vec<&'a Signature>) -> Result<(), CanvasError> {
        match &self.kind {
            Kind::Group(tasks) => tasks.iter().try_for_each(|t| t.flatten(into)),
            Kind::Task => {
                into.push(self);
                Ok(())
            }
            Kind::Chain(_) | Kind::Chord => Err(CanvasError::Unsupported(
                "a chain or chord inside a group".into(),
            )),
        }
    }

    /// The signature as Celery serializes it, for a chain carried on.
    pub fn to_value(&self) -> Value {
        let (kwargs, subtask_type) = match &self.kind {
            Kind::Task | Kind::Chord => (self.kwargs.clone(), Value::Null),
            Kind::Chain(tasks) | Kind::Group(tasks) => {
                let mut kwargs = self.kwargs.clone();
                kwargs.insert(
                    "tasks".into(),
                    Value::Array(tasks.iter().map(Signature::to_value).collect()),
                );
                let kind = if matches!(self.kind, Kind::Chain(_)) {
                    "chain"
                } else {
                    "group"
                };
                (kwargs, Value::String(kind.into()))
            }
        };
        serde_json::json!({
            "task": self.task,
            "args": self.args,
            "kwargs": kwargs,
            "options": self.options,
            "subtask_type": subtask_type,
            "immutable": self.immutable,
        })
    }

    /// The task message of a plain signature (`send_task` with its
    /// options, then `as_task_v2`).
    fn message(
        &self,
        partial_args: &[Value],
        chain: Vec<Value>,
        group: Option<(&str, usize)>,
        applying: &Applying<'_>,
    ) -> Publication {
        let options = &self.options;
        let args: Vec<Value> = if self.immutable {
            self.args.clone()
        } else {
            partial_args.iter().chain(&self.args).cloned().collect()
        };
        let id = self
            .task_id()
            .map(str::to_string)
            .unwrap_or_else(|| derive_id(&format!("{}/task", applying.seed)));
        let mut message = TaskMessage::new(&self.task, &id, args, self.kwargs.clone());
        let h = &mut message.headers;
        let (own_root, own_parent) = (self.option_str("root_id"), self.option_str("parent_id"));
        let (root, parent) = if applying.keep_own_ids {
            (
                own_root.unwrap_or(applying.root_id),
                own_parent.unwrap_or(applying.parent_id),
            )
        } else {
            (applying.root_id, applying.parent_id)
        };
        h.root_id = Some(root.to_string());
        h.parent_id = Some(parent.to_string());
        // A group's own id wins over the one frozen in (as `freeze` keeps
        // an existing `group_id`).
        let (group_id, group_index) = match group {
            Some((gid, index)) => (
                Some(self.option_str("group_id").unwrap_or(gid).to_string()),
                Some(Value::from(index)),
            ),
            None => (
                self.option_str("group_id").map(str::to_string),
                options.get("group_index").cloned(),
            ),
        };
        h.group = group_id;
        h.retries = options
            .get("retries")
            .and_then(Value::as_u64)
            .map_or(0, |r| r.min(u32::MAX as u64) as u32);
        h.timelimit = (
            options.get("time_limit").and_then(Value::as_f64),
            options.get("soft_time_limit").and_then(Value::as_f64),
        );
        h.eta = match (options.get("countdown"), options.get("eta")) {
            (Some(Value::Number(n)), _) => n.as_f64().and_then(|s| after(applying.now, s)),
            (_, Some(Value::String(t))) => parse_time(t),
            _ => None,
        };
        h.expires = match options.get("expires") {
            Some(Value::Number(n)) => n.as_f64().and_then(|s| after(applying.now, s)),
            Some(Value::String(t)) => parse_time(t),
            _ => None,
        };
        h.origin = Some(applying.origin.to_string());
        for (key, default) in [
            ("shadow", Value::Null),
            ("ignore_result", Value::Bool(false)),
            ("replaced_task_nesting", Value::from(0)),
        ] {
            h.extra
                .insert(key.into(), options.get(key).cloned().unwrap_or(default));
        }
        h.extra
            .insert("group_index".into(), group_index.unwrap_or(Value::Null));
        h.extra.insert("stamped_headers".into(), Value::Null);
        h.extra.insert("stamps".into(), Value::Object(Map::new()));
        let chain = if chain.is_empty() {
            listed(options.get("chain"))
        } else {
            chain
        };
        let as_list = |items: Vec<Value>| {
            if items.is_empty() {
                Value::Null
            } else {
                Value::Array(items)
            }
        };
        message.embed = serde_json::json!({
            "callbacks": as_list(listed(options.get("link"))),
            "errbacks": as_list(listed(options.get("link_error"))),
            "chain": as_list(chain),
            "chord": options.get("chord").cloned().unwrap_or(Value::Null),
        });
        message.priority = applying.priority.or_else(|| {
            options
                .get("priority")
                .and_then(Value::as_u64)
                .map(|p| p.min(255) as u8)
        });
        message.reply_to = self.option_str("reply_to").map(str::to_string);
        let route = match (self.option_str("exchange"), self.option_str("routing_key")) {
            (Some(exchange), key) => Route::Exchange {
                exchange: exchange.to_string(),
                routing_key: key
                    .or(self.option_str("queue"))
                    .unwrap_or(applying.default_queue)
                    .to_string(),
            },
            (None, Some(key)) if self.option_str("queue").is_none() => Route::Exchange {
                // The default queue's exchange, as Celery's router picks it.
                exchange: applying.default_queue.to_string(),
                routing_key: key.to_string(),
            },
            _ => Route::Queue(
                self.option_str("queue")
                    .unwrap_or(applying.default_queue)
                    .to_string(),
            ),
        };
        Publication { message, route }
    }
}

fn after(now: DateTime<Utc>, seconds: f64) -> Option<DateTime<Utc>> {
    let delta =
        chrono::Duration::from_std(std::time::Duration::try_from_secs_f64(seconds).ok()?).ok()?;
    now.checked_add_signed(delta)
}

/// A group's members, each with the group's id and its index in it
/// (`group._prepared` and `_apply_tasks`).
fn group_messages(
    members: &[&Signature],
    group_id: &str,
    partial_args: &[Value],
    applying: &Applying<'_>,
) -> Vec<Publication> {
    members
        .iter()
        .enumerate()
        .map(|(index, sig)| {
            sig.message(
                partial_args,
                Vec::new(),
                Some((group_id, index)),
                &applying.derived(&index.to_string()),
            )
        })
        .collect()
}

/// Several signatures applied together as one group (what Celery does with
/// more than one `link`, and with every `link_error` it cannot call in
/// place): each group signature among them is applied on its own, the
/// others together under one group id.
pub fn apply_all(
    signatures: &[Signature],
    partial_args: &[Value],
    applying: &Applying<'_>,
) -> (Vec<Publication>, Vec<CanvasError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut plain: Vec<&Signature> = Vec::new();
    for (i, sig) in signatures.iter().enumerate() {
        match sig.kind {
            Kind::Task => plain.push(sig),
            _ => match sig.apply(
                partial_args,
                Vec::new(),
                &applying.derived(&format!("g{i}")),
            ) {
                Ok(p) => out.extend(p),
                Err(e) => errors.push(e),
            },
        }
    }
    if !plain.is_empty() {
        let group_id = derive_id(&format!("{}/group", applying.seed));
        out.extend(group_messages(&plain, &group_id, partial_args, applying));
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applying(now: DateTime<Utc>) -> Applying<'static> {
        Applying {
            parent_id: "parent",
            root_id: "root",
            priority: None,
            origin: "worker@host",
            default_queue: "celery",
            keep_own_ids: false,
            seed: "t1/callbacks".into(),
            now,
        }
    }

    #[test]
    fn a_callback_gets_the_result_first_and_its_own_options() {
        let sig = Signature::parse(&json!({
            "task": "py.follow_up", "args": [1], "kwargs": {"tag": "x"},
            "options": {"queue": "pyq", "countdown": 5, "priority": 3, "task_id": "cb1",
                        "link": {"task": "py.after", "args": [], "kwargs": {}, "options": {}}},
            "subtask_type": null, "immutable": false
        }))
        .unwrap();
        let now = Utc::now();
        let p = sig
            .apply(&[json!({"status": "sent"})], Vec::new(), &applying(now))
            .unwrap();
        assert_eq!(p.len(), 1);
        let m = &p[0].message;
        assert_eq!(p[0].route, Route::Queue("pyq".into()));
        assert_eq!(m.id(), "cb1");
        assert_eq!(m.args, vec![json!({"status": "sent"}), json!(1)]);
        assert_eq!(m.kwargs["tag"], "x");
        assert_eq!(m.headers.parent_id.as_deref(), Some("parent"));
        assert_eq!(m.headers.root_id.as_deref(), Some("root"));
        assert_eq!(m.priority, Some(3));
        assert_eq!(
            (m.headers.eta.unwrap() - now).num_seconds(),
            5,
            "countdown becomes an eta"
        );
        assert_eq!(m.embed["callbacks"][0]["task"], "py.after");
        // What a Python worker decodes.
        let decoded = TaskMessage::decode(&m.properties(), &m.body()).unwrap();
        assert_eq!(decoded.args, m.args);
    }

    #[test]
    fn an_immutable_signature_keeps_its_arguments_and_ids_are_stable() {
        let value = json!({"task": "py.t", "args": [7], "kwargs": {}, "options": {},
                           "subtask_type": null, "immutable": true});
        let sig = Signature::parse(&value).unwrap();
        let now = Utc::now();
        let a = sig
            .apply(&[json!("r")], Vec::new(), &applying(now))
            .unwrap();
        let b = sig
            .apply(&[json!("r")], Vec::new(), &applying(now))
            .unwrap();
        assert_eq!(a[0].message.args, vec![json!(7)]);
        assert_eq!(a[0].message.id(), b[0].message.id());
        assert_eq!(a[0].route, Route::Queue("celery".into()));
    }

    #[test]
    fn a_chain_callback_runs_its_first_task_and_carries_the_rest_reversed() {
        let step = |name: &str| json!({"task": name, "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false});
        let chain = json!({"task": "celery.chain", "args": [], "options": {}, "immutable": false,
                           "subtask_type": "chain", "kwargs": {"tasks": [step("a"), step("b"), step("c")]}});
        let p = Signature::parse(&chain)
            .unwrap()
            .apply(&[json!(1)], Vec::new(), &applying(Utc::now()))
            .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].message.task(), "a");
        let rest: Vec<&str> = p[0].message.embed["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["task"].as_str().unwrap())
            .collect();
        assert_eq!(rest, ["c", "b"]);
    }

    #[test]
    fn a_group_callback_publishes_each_member_with_the_group_id_and_index() {
        let member = |name: &str| json!({"task": name, "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false});
        let group = json!({"task": "celery.group", "args": [], "options": {"task_id": "g1"}, "immutable": false,
                           "subtask_type": "group", "kwargs": {"tasks": [member("a"), member("b")]}});
        let p = Signature::parse(&group)
            .unwrap()
            .apply(&[json!(1)], Vec::new(), &applying(Utc::now()))
            .unwrap();
        assert_eq!(p.len(), 2);
        for (i, p) in p.iter().enumerate() {
            assert_eq!(p.message.headers.group.as_deref(), Some("g1"));
            assert_eq!(p.message.headers.extra["group_index"], json!(i));
            assert_eq!(p.message.args, vec![json!(1)]);
        }
        assert_ne!(p[0].message.id(), p[1].message.id());
    }

    #[test]
    fn bad_and_unsupported_signatures_are_errors_not_panics() {
        for bad in [json!(1), json!({}), json!({"task": "x", "args": 3})] {
            assert!(matches!(
                Signature::parse(&bad),
                Err(CanvasError::Invalid(_))
            ));
        }
        let chord = json!({"task": "celery.chord", "subtask_type": "chord", "kwargs": {}});
        let sig = Signature::parse(&chord).unwrap();
        assert!(matches!(
            sig.apply(&[], Vec::new(), &applying(Utc::now())),
            Err(CanvasError::Unsupported(_))
        ));
    }

    #[test]
    fn the_embed_reads_nulls_lists_and_lone_signatures() {
        let mut m = TaskMessage::new("x", "y", vec![], Map::new());
        assert!(Embed::of(&m).is_empty());
        m.embed = json!({"callbacks": {"task": "a"}, "errbacks": [null, {"task": "b"}],
                         "chain": [], "chord": null});
        let e = Embed::of(&m);
        assert_eq!(e.callbacks.len(), 1);
        assert_eq!(e.errbacks.len(), 1);
        assert!(e.chord.is_none());
        m.embed = Value::Null;
        assert!(Embed::of(&m).is_empty());
    }
}
