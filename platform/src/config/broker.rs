//! RabbitMQ and Celery's queues: the broker nodes (`CELERY_BROKER_URL` or
//! `RABBITMQ_URL`), `RABBITMQ_PREFETCH_COUNT`, `RABBITMQ_HEARTBEAT`, the
//! queue names (`CELERY_DEFAULT_QUEUE`, `CELERY_QUEUE_TYPE`,
//! `CELERY_EXTRA_QUEUES`) with the delay ladder (`DELAY_LADDER_MAX_SECONDS`)
//! and their priorities (`CELERY_TASK_QUEUE_MAX_PRIORITY`), and whether
//! publishers announce their tasks (`CELERY_TASK_SEND_SENT_EVENT`).

use std::time::Duration;

use super::vars::{check_url, Vars};
use super::ConfigError;

/// Names of the queues and exchanges the platform uses. Everything derives
/// from the Celery default queue name so one setting isolates a deployment
/// (or a test) from another on the same broker.
#[derive(Debug, Clone)]
pub struct QueueNames {
    /// Celery's default queue; the exchange of the same name is direct and
    /// routes the routing key of the same name to it, as Celery declares it.
    pub tasks: String,
    /// Declare every queue as a quorum queue (replicated across a RabbitMQ
    /// cluster) instead of a classic one. Python producers must then declare
    /// the same (`queue_arguments={"x-queue-type": "quorum"}`).
    pub quorum: bool,
    /// The longest rung of the delay ladder (`DELAY_LADDER_MAX_SECONDS`):
    /// longer delays travel in several hops.
    pub ladder_max: Duration,
    /// Further queues the workers consume like the task queue
    /// (`CELERY_EXTRA_QUEUES`): e.g. the Python platform's queue while its
    /// workers and ours run side by side, and for good after, for Python
    /// producers that keep publishing there.
    pub extra: Vec<String>,
    /// Celery's `task_queue_max_priority` (`CELERY_TASK_QUEUE_MAX_PRIORITY`):
    /// the consumed queues are declared with `x-max-priority`, so RabbitMQ
    /// delivers a message of higher `priority` first. `None` (the default,
    /// as Celery's): no priority argument, first in first out.
    pub max_priority: Option<u8>,
}

/// The longest rung the ladder may have: 2^22 s (48.5 days) is the largest
/// power of two whose milliseconds stay under RabbitMQ's 2^32 - 1 ms limit
/// on `x-message-ttl`.
pub const LADDER_LIMIT_SECONDS: u64 = 1 << 22;

impl QueueNames {
    /// Campaign and batch sends: consumed beside the task queue with slots
    /// of their own, so a bulk backlog never delays transactional mail.
    pub fn bulk(&self) -> String {
        format!("{}.bulk", self.tasks)
    }
    /// The queues a worker consumes: the task queue, the bulk queue, then
    /// any extra ones.
    pub fn consumed(&self) -> Vec<String> {
        let mut queues = vec![self.tasks.clone(), self.bulk()];
        queues.extend(
            self.extra
                .iter()
                .filter(|q| !queues.contains(q))
                .cloned()
                .collect::<Vec<_>>(),
        );
        queues
    }
    pub fn dead_letter(&self) -> String {
        format!("{}.dead_letter", self.tasks)
    }
    /// The delay ladder of `target`: durable holding queues of 1 s, 2 s,
    /// 4 s, ... up to [`Self::ladder_max`], whose messages return to
    /// `target` when their rung's time is up. A fixed, bounded set (declared
    /// at start, never expiring) instead of one queue per distinct delay:
    /// queues that expire while messages wait in them lose those messages.
    pub fn ladder(&self, target: &str) -> Vec<(Duration, String)> {
        ladder_rungs(self.ladder_max)
            .map(|rung| (rung, self.rung(target, rung)))
            .collect()
    }

    /// The name of one rung of `target`'s ladder.
    pub fn rung(&self, target: &str, rung: Duration) -> String {
        format!("{target}.ladder.{}s", rung.as_secs().max(1))
    }

    /// The rung a message that must wait `remaining` takes next: the longest
    /// that does not overshoot it (whole seconds, at least 1 s). The message
    /// carries its due time (`eta`), so on its return the worker sends it on
    /// to the next rung until none is left: it never arrives early, and at
    /// most a second late.
    pub fn rung_for(&self, remaining: Duration) -> Duration {
        let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        ladder_rungs(self.ladder_max)
            .take_while(|rung| rung.as_secs() <= seconds.max(1))
            .last()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Powers of two seconds from 1 s up to `max` (inclusive when `max` is one).
pub fn ladder_rungs(max: Duration) -> impl Iterator<Item = Duration> {
    let max = max.as_secs().clamp(1, LADDER_LIMIT_SECONDS);
    (0..=22u32)
        .map(|k| 1u64 << k)
        .take_while(move |s| *s <= max)
        .map(Duration::from_secs)
}

/// The RabbitMQ nodes, in order of preference (never empty): one URL, or
/// the nodes of a cluster. `CELERY_BROKER_URL` wins over `RABBITMQ_URL`.
///
/// Celery separates failover URLs with `;`, and a comma-separated list is
/// the common form in environment files; both are accepted. Each URL must
/// be a valid `amqp`/`amqps` URL.
pub(super) fn urls(vars: &Vars<'_>) -> Result<Vec<String>, ConfigError> {
    let (var, raw) = match vars.get("CELERY_BROKER_URL") {
        Some(v) => ("CELERY_BROKER_URL", v),
        None => (
            "RABBITMQ_URL",
            vars.get("RABBITMQ_URL")
                .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
    };
    let urls: Vec<String> = raw
        .split([',', ';'])
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    if urls.is_empty() {
        return Err(ConfigError::Invalid {
            var,
            reason: "names no broker URL".into(),
        });
    }
    for url in &urls {
        check_url(var, url, &["amqp", "amqps"])?;
    }
    Ok(urls)
}

/// `RABBITMQ_PREFETCH_COUNT`: unacknowledged messages a worker holds at once.
pub(super) fn prefetch_count(vars: &Vars<'_>) -> Result<u16, ConfigError> {
    vars.parse_positive_or("RABBITMQ_PREFETCH_COUNT", 1024)
}

/// `CELERY_TASK_SEND_SENT_EVENT` (Celery's `task_send_sent_event`): the
/// API's and the scheduler's outbox relays emit `task-sent` on `celeryev`
/// for every task they publish. Off by default, as in Celery.
pub(super) fn send_sent_event(vars: &Vars<'_>) -> Result<bool, ConfigError> {
    vars.parse_bool_or("CELERY_TASK_SEND_SENT_EVENT", false)
}

/// `RABBITMQ_HEARTBEAT`, seconds.
pub(super) fn heartbeat(vars: &Vars<'_>) -> Result<u16, ConfigError> {
    vars.parse_or("RABBITMQ_HEARTBEAT", 60)
}

/// The queue names: `CELERY_DEFAULT_QUEUE`, `CELERY_QUEUE_TYPE` (classic
/// or quorum), `DELAY_LADDER_MAX_SECONDS` and `CELERY_EXTRA_QUEUES`.
pub(super) fn queues(vars: &Vars<'_>) -> Result<QueueNames, ConfigError> {
    let ladder_max = vars.parse_positive_or("DELAY_LADDER_MAX_SECONDS", 1u64 << 21)?;
    if ladder_max > LADDER_LIMIT_SECONDS {
        return Err(ConfigError::Invalid {
            var: "DELAY_LADDER_MAX_SECONDS",
            reason: format!(
                "at most {LADDER_LIMIT_SECONDS} (RabbitMQ's message TTL limit is 2^32 - 1 ms)"
            ),
        });
    }
    let max_priority = vars.parse::<u8>("CELERY_TASK_QUEUE_MAX_PRIORITY")?;
    if max_priority == Some(0) {
        return Err(ConfigError::Invalid {
            var: "CELERY_TASK_QUEUE_MAX_PRIORITY",
            reason: "must be 1 to 255 (RabbitMQ advises at most 10); unset for no priorities"
                .into(),
        });
    }
    let quorum = match vars.get("CELERY_QUEUE_TYPE").as_deref() {
        None | Some("classic") => false,
        Some("quorum") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "CELERY_QUEUE_TYPE",
                reason: format!("expected classic or quorum, got {other:?}"),
            })
        }
    };
    if quorum && max_priority.is_some() {
        return Err(ConfigError::Invalid {
            var: "CELERY_TASK_QUEUE_MAX_PRIORITY",
            reason: "RabbitMQ refuses x-max-priority on quorum queues (CELERY_QUEUE_TYPE=quorum); \
                     unset it, or use classic queues"
                .into(),
        });
    }
    Ok(QueueNames {
        quorum,
        tasks: vars
            .get("CELERY_DEFAULT_QUEUE")
            .unwrap_or_else(|| "celery".into()),
        ladder_max: Duration::from_secs(ladder_max),
        extra: extra_queues(vars)?,
        max_priority,
    })
}

/// `CELERY_EXTRA_QUEUES`: comma-separated queue names.
fn extra_queues(vars: &Vars<'_>) -> Result<Vec<String>, ConfigError> {
    let mut queues = Vec::new();
    for name in vars
        .get("CELERY_EXTRA_QUEUES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if name.len() > 200 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::Invalid {
                var: "CELERY_EXTRA_QUEUES",
                reason: format!("{name:?} is not a queue name"),
            });
        }
        queues.push(name.to_string());
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{assert_refused, base, load, with};
    use super::LADDER_LIMIT_SECONDS;

    #[test]
    fn the_delay_ladder_is_bounded_and_never_overshoots() {
        let s = load(&base()).unwrap();
        let ladder = s.queues.ladder("celery");
        assert_eq!(ladder.len(), 22);
        assert_eq!(
            ladder[0],
            (Duration::from_secs(1), "celery.ladder.1s".into())
        );
        // Every rung's TTL in milliseconds fits RabbitMQ's limit.
        assert!(ladder
            .iter()
            .all(|(rung, _)| rung.as_millis() < u128::from(u32::MAX)));
        for (wait, rung) in [
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1500), 2),
            (Duration::from_secs(2), 2),
            (Duration::from_secs(3), 2),
            (Duration::from_secs(60), 32),
            (Duration::from_secs(60 * 86_400), 1 << 21),
        ] {
            assert_eq!(
                s.queues.rung_for(wait),
                Duration::from_secs(rung),
                "{wait:?}"
            );
        }
        let s = load(&with(&[("DELAY_LADDER_MAX_SECONDS", "8")])).unwrap();
        assert_eq!(s.queues.ladder("q").len(), 4);
        assert_eq!(
            s.queues.rung_for(Duration::from_secs(100)),
            Duration::from_secs(8)
        );
        let too_long = (LADDER_LIMIT_SECONDS + 1).to_string();
        assert!(load(&with(&[("DELAY_LADDER_MAX_SECONDS", &too_long)])).is_err());
    }

    #[test]
    fn broker_urls_are_a_list_separated_by_commas_or_semicolons() {
        assert_eq!(
            load(&base()).unwrap().broker_urls,
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
        let cluster = (
            "RABBITMQ_URL",
            "amqp://a:5681/%2f, amqp://b:5682/%2f;amqps://c:5683/%2f,",
        );
        let s = load(&with(&[cluster])).unwrap();
        assert_eq!(
            s.broker_urls,
            [
                "amqp://a:5681/%2f",
                "amqp://b:5682/%2f",
                "amqps://c:5683/%2f"
            ]
        );
        assert_eq!(s.broker_url(), "amqp://a:5681/%2f");
        // CELERY_BROKER_URL wins, and a bad entry is named by its variable.
        assert_refused(
            &[cluster, ("CELERY_BROKER_URL", "amqp://a/%2f,redis://b")],
            &["CELERY_BROKER_URL"],
        );
        assert_refused(&[("RABBITMQ_URL", " , ;")], &["RABBITMQ_URL"]);
    }

    #[test]
    fn invalid_number_is_named() {
        assert_refused(
            &[("RABBITMQ_PREFETCH_COUNT", "lots")],
            &["RABBITMQ_PREFETCH_COUNT"],
        );
    }

    #[test]
    fn max_priority_is_unset_by_default_and_refused_on_quorum_queues() {
        assert_eq!(load(&base()).unwrap().queues.max_priority, None);
        let ten = ("CELERY_TASK_QUEUE_MAX_PRIORITY", "10");
        assert_eq!(load(&with(&[ten])).unwrap().queues.max_priority, Some(10));
        for bad in ["0", "256", "high"] {
            assert_refused(
                &[("CELERY_TASK_QUEUE_MAX_PRIORITY", bad)],
                &["CELERY_TASK_QUEUE_MAX_PRIORITY"],
            );
        }
        assert_refused(
            &[ten, ("CELERY_QUEUE_TYPE", "quorum")],
            &["CELERY_TASK_QUEUE_MAX_PRIORITY", "quorum"],
        );
    }

    #[test]
    fn extra_queues_are_consumed_after_our_own() {
        let queue = ("CELERY_DEFAULT_QUEUE", "notify");
        let settings = load(&with(&[
            queue,
            ("CELERY_EXTRA_QUEUES", " celery, legacy ,notify,"),
        ]))
        .unwrap();
        assert_eq!(
            settings.queues.consumed(),
            ["notify", "notify.bulk", "celery", "legacy"]
        );
        assert_refused(
            &[queue, ("CELERY_EXTRA_QUEUES", "has space")],
            &["CELERY_EXTRA_QUEUES"],
        );
    }
}
