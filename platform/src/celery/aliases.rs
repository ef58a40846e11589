//! Task-name aliases, so that existing Python callers keep their own task
//! names (`app.tasks.send_email.delay(to, subject, content)`) and reach our
//! tasks unchanged.
//!
//! `CELERY_TASK_ALIASES=app.tasks.send_email=notifications.send_email,old.name=notifications.send_email`
//! (read by `config`) maps Python task names to ours. Independently,
//! positional arguments of `notifications.send_email` are mapped to keyword
//! arguments in the order `[to, subject, content]` (the Python platform's
//! signature).

use std::collections::BTreeMap;

use serde_json::Value;

use super::TaskMessage;

/// The positional parameters of `notifications.send_email`, in order.
pub const SEND_EMAIL_POSITIONAL: [&str; 3] = ["to", "subject", "content"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AliasError {
    #[error("{0:?} is not `python.name=our.name`")]
    Malformed(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskAliases {
    map: BTreeMap<String, String>,
}

impl TaskAliases {
    /// Parses `from=to,from=to` (whitespace and empty items ignored).
    pub fn parse(spec: &str) -> Result<Self, AliasError> {
        let mut map = BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (from, to) = item
                .split_once('=')
                .map(|(f, t)| (f.trim(), t.trim()))
                .filter(|(f, t)| !f.is_empty() && !t.is_empty())
                .ok_or_else(|| AliasError::Malformed(item.to_string()))?;
            map.insert(from.to_string(), to.to_string());
        }
        Ok(TaskAliases { map })
    }

    /// Python name → our name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Renames an aliased task and moves `send_email`'s positional
    /// arguments into its keyword arguments (an explicit keyword wins).
    pub fn apply(&self, message: &mut TaskMessage) {
        if let Some(ours) = self.map.get(&message.headers.task) {
            message.headers.task = ours.clone();
        }
        if message.headers.task == crate::tasks::SEND_EMAIL && !message.args.is_empty() {
            let n = message.args.len().min(SEND_EMAIL_POSITIONAL.len());
            let positional: Vec<Value> = message.args.drain(..n).collect();
            for (name, value) in SEND_EMAIL_POSITIONAL.iter().zip(positional) {
                message.kwargs.entry(name.to_string()).or_insert(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    #[test]
    fn parses_and_refuses_malformed_items() {
        let a =
            TaskAliases::parse(" app.tasks.send_email = notifications.send_email ,, x=y").unwrap();
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [
                ("app.tasks.send_email", "notifications.send_email"),
                ("x", "y")
            ]
        );
        assert!(TaskAliases::parse("nonsense").is_err());
        assert!(TaskAliases::parse("a=").is_err());
        assert_eq!(TaskAliases::parse("").unwrap(), TaskAliases::default());
    }

    #[test]
    fn renames_and_maps_positional_arguments() {
        let a = TaskAliases::parse("app.tasks.send_email=notifications.send_email").unwrap();
        let mut m = TaskMessage::new(
            "app.tasks.send_email",
            "id-1",
            vec![json!("a@example.org"), json!("Hi"), json!("<p>x</p>")],
            Map::from_iter([("subject".to_string(), json!("Explicit"))]),
        );
        a.apply(&mut m);
        assert_eq!(m.task(), crate::tasks::SEND_EMAIL);
        assert!(m.args.is_empty());
        assert_eq!(m.kwargs["to"], "a@example.org");
        assert_eq!(m.kwargs["subject"], "Explicit");
        assert_eq!(m.kwargs["content"], "<p>x</p>");

        let mut other = TaskMessage::new("other.task", "id-2", vec![json!(1)], Map::new());
        a.apply(&mut other);
        assert_eq!(other.task(), "other.task");
        assert_eq!(other.args, [json!(1)]);
    }
}
