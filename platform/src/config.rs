//! Settings read from the environment (and a `.env` file), using the
//! variable names of the Python platform where they exist. Every variable is
//! documented in `.env.example`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::{KeyId, Keyring, MasterKey};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0} is required but not set")]
    Missing(&'static str),
    #[error("configuration: {var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("configuration: {var} is not safe for ENV=production: {reason}")]
    Insecure { var: &'static str, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    pub fn is_production(self) -> bool {
        self == Environment::Production
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "test" => Ok(Self::Test),
            "staging" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!(
                "expected development, test, staging or production, got {other:?}"
            )),
        }
    }
}

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

/// `CELERY_EXTRA_QUEUES`: comma-separated queue names.
fn extra_queues(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let mut queues = Vec::new();
    for name in raw
        .unwrap_or("")
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

/// Powers of two seconds from 1 s up to `max` (inclusive when `max` is one).
pub fn ladder_rungs(max: Duration) -> impl Iterator<Item = Duration> {
    let max = max.as_secs().clamp(1, LADDER_LIMIT_SECONDS);
    (0..=22u32)
        .map(|k| 1u64 << k)
        .take_while(move |s| *s <= max)
        .map(Duration::from_secs)
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub env: Environment,
    pub debug: bool,
    pub log_level: String,
    pub database_url: String,
    /// The Python platform's database during a switch
    /// (`PYTHON_DATABASE_URL`): workers then reserve each send in its
    /// `email_accounts` too, so the two platforms together keep every
    /// account under its daily limit.
    pub python_database_url: Option<String>,
    pub db_pool_size: u32,
    pub redis_url: String,
    pub result_backend_url: String,
    pub result_expires: Duration,
    /// The RabbitMQ nodes to connect to, in order of preference (never
    /// empty): one URL, or the nodes of a cluster (`RABBITMQ_URL` /
    /// `CELERY_BROKER_URL` as a list separated by `,` or `;`, as Celery's
    /// `broker_url` accepts). Connections fail over between them.
    pub broker_urls: Vec<String>,
    pub prefetch_count: u16,
    pub heartbeat: u16,
    pub queues: QueueNames,
    pub jwt: JwtSettings,
    pub keyring: Keyring,
    pub email_timeout: Duration,
    pub email_max_size: usize,
    pub attachment_max_size: usize,
    pub worker_concurrency: usize,
    pub task_time_limit: Duration,
    pub task_soft_time_limit: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub quota_wait: Duration,
    pub breaker: crate::db::email_accounts::Breaker,
    pub rate_limit_enabled: bool,
    pub rate_limit_per_minute: u32,
    /// Length of a rate-limit window (`RATE_LIMIT_WINDOW_SECONDS`, default
    /// 60): a key may make its per-minute limit of requests per window.
    pub rate_limit_window: Duration,
    /// Prefix of the rate-limit counters in Redis (`RATE_LIMIT_REDIS_PREFIX`).
    pub rate_limit_prefix: String,
    pub tz: Tz,
    pub api_host: String,
    pub api_port: u16,
    pub metrics_port: Option<u16>,
    pub scheduler: SchedulerSettings,
    pub liveness: Liveness,
}

/// Each worker's liveness lease (`worker_leases`), renewed while it runs and
/// recorded with its claims, so a message whose claimant is known to be
/// gone is sent again at once instead of after the hard time limit.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How long a lease lasts unless renewed (`WORKER_LEASE_SECONDS`).
    pub lease: Duration,
    /// How often a worker renews it (`WORKER_LEASE_RENEW_SECONDS`).
    pub renew: Duration,
}

/// The scheduler's timing and maintenance settings.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often due delayed sends are looked for (`SCHEDULER_POLL_MS`).
    pub poll: Duration,
    /// How often a follower retries the leader lock (`SCHEDULER_LEADER_RETRY_MS`).
    pub leader_retry: Duration,
    /// Delayed sends released per transaction (`SCHEDULER_RELEASE_BATCH`).
    pub release_batch: i64,
    /// Members enqueued per campaign fan-out transaction (`CAMPAIGN_BATCH_SIZE`).
    pub campaign_batch: i64,
    /// Finished message records older than this are deleted (`MESSAGE_RETENTION_DAYS`).
    pub message_retention_days: u32,
    /// Idempotency keys older than this are deleted (`IDEMPOTENCY_RETENTION_HOURS`).
    pub idempotency_retention_hours: u32,
    /// How often the leader runs maintenance (`MAINTENANCE_INTERVAL_SECONDS`).
    pub maintenance_interval: Duration,
    /// Rows deleted per maintenance statement (`MAINTENANCE_BATCH`).
    pub maintenance_batch: i64,
    /// A `queued` record whose broker message has not come back for this
    /// long past its due time is published again (`RECONCILE_AFTER_SECONDS`).
    pub reconcile_after: Duration,
    /// How often the leader looks for such records (`RECONCILE_INTERVAL_SECONDS`).
    pub reconcile_interval: Duration,
    /// Records re-published per reconciler statement (`RECONCILE_BATCH`).
    pub reconcile_batch: i64,
}

#[derive(Clone)]
pub struct JwtSettings {
    pub secret: SecretString,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("secret", &"[redacted]")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish()
    }
}

/// Placeholders that ship in documentation and `.env.example`; refused in production.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "your",
    "change",
    "placeholder",
    "example",
    "secret_key",
    "dev-only",
    "insecure",
];

/// Keys published in `.env.example` and the tests; refused in production.
const DEVELOPMENT_KEYS: &[&str] = &[
    "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzJieXRlcyE=",
    "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=",
];

impl Settings {
    /// The first configured broker URL: what is shown where one URL is
    /// expected (Celery's `broker` in `inspect stats`).
    pub fn broker_url(&self) -> &str {
        self.broker_urls.first().map_or("", String::as_str)
    }

    /// Reads `.env` (when present) and then the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds settings from any variable source; tests pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(&lookup);
        let env: Environment = vars.parse_or("ENV", Environment::Development)?;

        let jwt_secret = vars.required("JWT_SECRET_KEY")?;
        let algorithm = vars.get("JWT_ALGORITHM").unwrap_or_else(|| "HS256".into());
        if algorithm != "HS256" {
            return Err(ConfigError::Invalid {
                var: "JWT_ALGORITHM",
                reason: format!("only HS256 is supported, got {algorithm:?}"),
            });
        }
        if env.is_production() {
            check_production_secret("JWT_SECRET_KEY", &jwt_secret)?;
        }

        let keyring = build_keyring(&vars, env)?;

        let redis_url = vars
            .get("REDIS_URL")
            .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
        let (broker_var, broker_setting) = match vars.get("CELERY_BROKER_URL") {
            Some(v) => ("CELERY_BROKER_URL", v),
            None => (
                "RABBITMQ_URL",
                vars.get("RABBITMQ_URL")
                    .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            ),
        };
        let broker_urls = parse_broker_urls(broker_var, &broker_setting)?;
        let result_backend_url = vars
            .get("CELERY_RESULT_BACKEND")
            .unwrap_or_else(|| "redis://127.0.0.1:6379/1".into());
        check_url(
            "CELERY_RESULT_BACKEND",
            &result_backend_url,
            &["redis", "rediss"],
        )?;
        check_url("REDIS_URL", &redis_url, &["redis", "rediss"])?;
        let database_url = vars.required("DATABASE_URL")?;
        check_url("DATABASE_URL", &database_url, &["postgres", "postgresql"])?;
        let python_database_url = vars
            .get("PYTHON_DATABASE_URL")
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = &python_database_url {
            check_url("PYTHON_DATABASE_URL", url, &["postgres", "postgresql"])?;
        }

        let tz_name = vars.get("TZ").unwrap_or_else(|| "UTC".into());
        let tz = Tz::from_str(&tz_name).map_err(|_| ConfigError::Invalid {
            var: "TZ",
            reason: format!("{tz_name:?} is not an IANA time zone name"),
        })?;

        let soft = vars.parse_or("CELERY_TASK_SOFT_TIME_LIMIT", 270u64)?;
        let hard = vars.parse_or("CELERY_TASK_TIME_LIMIT", 300u64)?;
        if soft > hard || hard == 0 {
            return Err(ConfigError::Invalid {
                var: "CELERY_TASK_SOFT_TIME_LIMIT",
                reason: format!("must be positive and at most CELERY_TASK_TIME_LIMIT ({hard})"),
            });
        }

        let ladder_max = vars.parse_positive_or("DELAY_LADDER_MAX_SECONDS", 1u64 << 21)?;
        if ladder_max > LADDER_LIMIT_SECONDS {
            return Err(ConfigError::Invalid {
                var: "DELAY_LADDER_MAX_SECONDS",
                reason: format!(
                    "at most {LADDER_LIMIT_SECONDS} (RabbitMQ's message TTL limit is 2^32 - 1 ms)"
                ),
            });
        }
        let liveness = Liveness {
            lease: Duration::from_secs(vars.parse_positive_or("WORKER_LEASE_SECONDS", 15u64)?),
            renew: Duration::from_secs(vars.parse_positive_or("WORKER_LEASE_RENEW_SECONDS", 5u64)?),
        };
        if liveness.renew * 2 > liveness.lease {
            return Err(ConfigError::Invalid {
                var: "WORKER_LEASE_RENEW_SECONDS",
                reason: "must be at most half of WORKER_LEASE_SECONDS".into(),
            });
        }

        let settings = Settings {
            env,
            debug: vars.parse_bool_or("DEBUG", false)?,
            log_level: vars.get("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            database_url,
            python_database_url,
            db_pool_size: vars.parse_positive_or("DB_POOL_SIZE", 10u32)?,
            redis_url,
            result_backend_url,
            result_expires: Duration::from_secs(
                vars.parse_positive_or("CELERY_RESULT_EXPIRES", 86_400u64)?,
            ),
            broker_urls,
            prefetch_count: vars.parse_positive_or("RABBITMQ_PREFETCH_COUNT", 32u16)?,
            heartbeat: vars.parse_or("RABBITMQ_HEARTBEAT", 60u16)?,
            queues: QueueNames {
                quorum: match vars.get("CELERY_QUEUE_TYPE").as_deref() {
                    None | Some("classic") => false,
                    Some("quorum") => true,
                    Some(other) => {
                        return Err(ConfigError::Invalid {
                            var: "CELERY_QUEUE_TYPE",
                            reason: format!("expected classic or quorum, got {other:?}"),
                        })
                    }
                },
                tasks: vars
                    .get("CELERY_DEFAULT_QUEUE")
                    .unwrap_or_else(|| "celery".into()),
                ladder_max: Duration::from_secs(ladder_max),
                extra: extra_queues(vars.get("CELERY_EXTRA_QUEUES").as_deref())?,
            },
            jwt: JwtSettings {
                secret: SecretString::from(jwt_secret),
                access_ttl: Duration::from_secs(
                    60 * vars.parse_positive_or("JWT_EXPIRE_MINUTES", 60u64)?,
                ),
                refresh_ttl: Duration::from_secs(
                    86_400 * vars.parse_positive_or("JWT_REFRESH_EXPIRE_DAYS", 7u64)?,
                ),
            },
            keyring,
            email_timeout: Duration::from_secs(vars.parse_positive_or("EMAIL_TIMEOUT", 30u64)?),
            email_max_size: vars.parse_positive_or("EMAIL_MAX_SIZE", 20 * 1024 * 1024usize)?,
            attachment_max_size: vars
                .parse_positive_or("ATTACHMENT_MAX_SIZE", 10 * 1024 * 1024usize)?,
            worker_concurrency: vars.parse_positive_or("CELERY_WORKER_CONCURRENCY", 16usize)?,
            task_time_limit: Duration::from_secs(hard),
            task_soft_time_limit: Duration::from_secs(soft),
            max_retries: vars.parse_or("SEND_MAX_RETRIES", 3u32)?,
            retry_backoff: Duration::from_secs(
                vars.parse_positive_or("SEND_RETRY_BACKOFF", 10u64)?,
            ),
            retry_backoff_max: Duration::from_secs(
                vars.parse_positive_or("SEND_RETRY_BACKOFF_MAX", 1800u64)?,
            ),
            quota_wait: Duration::from_secs(vars.parse_positive_or("QUOTA_WAIT_SECONDS", 60u64)?),
            breaker: crate::db::email_accounts::Breaker {
                threshold: vars.parse_positive_or("CIRCUIT_FAILURE_THRESHOLD", 3i32)?,
                cooldown: Duration::from_secs(
                    vars.parse_positive_or("CIRCUIT_COOLDOWN_SECONDS", 60u64)?,
                ),
            },
            rate_limit_enabled: vars.parse_bool_or("RATE_LIMIT_ENABLED", true)?,
            rate_limit_per_minute: vars.parse_positive_or("RATE_LIMIT_PER_MINUTE", 600u32)?,
            rate_limit_window: Duration::from_secs(
                vars.parse_positive_or("RATE_LIMIT_WINDOW_SECONDS", 60u64)?,
            ),
            rate_limit_prefix: vars
                .get("RATE_LIMIT_REDIS_PREFIX")
                .unwrap_or_else(|| "notify:ratelimit".into()),
            tz,
            api_host: vars.get("API_HOST").unwrap_or_else(|| "0.0.0.0".into()),
            api_port: vars.parse_or("API_PORT", 8000u16)?,
            metrics_port: vars
                .get("METRICS_PORT")
                .map(|_| vars.parse_or("METRICS_PORT", 0u16))
                .transpose()?,
            scheduler: SchedulerSettings {
                poll: Duration::from_millis(vars.parse_positive_or("SCHEDULER_POLL_MS", 200u64)?),
                leader_retry: Duration::from_millis(
                    vars.parse_positive_or("SCHEDULER_LEADER_RETRY_MS", 1000u64)?,
                ),
                release_batch: vars.parse_positive_or("SCHEDULER_RELEASE_BATCH", 500i64)?,
                campaign_batch: vars.parse_positive_or("CAMPAIGN_BATCH_SIZE", 500i64)?,
                message_retention_days: vars.parse_positive_or("MESSAGE_RETENTION_DAYS", 30u32)?,
                idempotency_retention_hours: vars
                    .parse_positive_or("IDEMPOTENCY_RETENTION_HOURS", 24u32)?,
                maintenance_interval: Duration::from_secs(
                    vars.parse_positive_or("MAINTENANCE_INTERVAL_SECONDS", 300u64)?,
                ),
                maintenance_batch: vars.parse_positive_or("MAINTENANCE_BATCH", 1000i64)?,
                reconcile_after: Duration::from_secs(
                    vars.parse_positive_or("RECONCILE_AFTER_SECONDS", 900u64)?,
                ),
                reconcile_interval: Duration::from_secs(
                    vars.parse_positive_or("RECONCILE_INTERVAL_SECONDS", 30u64)?,
                ),
                reconcile_batch: vars.parse_positive_or("RECONCILE_BATCH", 500i64)?,
            },
            liveness,
        };
        if settings.env.is_production() && settings.debug {
            return Err(ConfigError::Insecure {
                var: "DEBUG",
                reason: "must be false in production".into(),
            });
        }
        Ok(settings)
    }
}

struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn get(&self, key: &str) -> Option<String> {
        (self.0)(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        self.get(key).ok_or(ConfigError::Missing(key))
    }

    fn parse_or<T: FromStr>(&self, key: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| ConfigError::Invalid {
                var: key,
                reason: format!("{raw:?}: {e}"),
            }),
        }
    }

    fn parse_positive_or<T>(&self, key: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default,
        T::Err: std::fmt::Display,
    {
        let value = self.parse_or(key, default)?;
        if value <= T::default() {
            return Err(ConfigError::Invalid {
                var: key,
                reason: "must be greater than zero".into(),
            });
        }
        Ok(value)
    }

    fn parse_bool_or(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(ConfigError::Invalid {
                var: key,
                reason: format!("{v:?} is not a boolean (true/false)"),
            }),
        }
    }
}

/// Splits a broker setting into its URLs: Celery separates failover URLs
/// with `;`, and a comma-separated list is the common form in environment
/// files; both are accepted. Each URL must be a valid `amqp`/`amqps` URL.
fn parse_broker_urls(var: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
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

fn check_url(var: &'static str, raw: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("not a URL: {e}"),
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("scheme must be one of {schemes:?}, got {:?}", url.scheme()),
        });
    }
    Ok(())
}

fn check_production_secret(var: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.len() < 32 {
        return Err(ConfigError::Insecure {
            var,
            reason: "must be at least 32 characters".into(),
        });
    }
    let lower = value.to_ascii_lowercase();
    if let Some(marker) = PLACEHOLDER_MARKERS.iter().find(|m| lower.contains(*m)) {
        return Err(ConfigError::Insecure {
            var,
            reason: format!(
                "looks like a placeholder (contains {marker:?}); generate a random value"
            ),
        });
    }
    Ok(())
}

/// `ENCRYPTION_KEY` is the current key (base64 of 32 bytes, so a Fernet key
/// from the Python platform is accepted); `ENCRYPTION_KEY_ID` names it so
/// stored values say which key sealed them; `ENCRYPTION_PREVIOUS_KEYS` holds
/// `id:base64key` pairs, comma separated, still accepted for decryption
/// while values are re-encrypted during a rotation.
fn build_keyring(vars: &Vars<'_>, env: Environment) -> Result<Keyring, ConfigError> {
    let raw = vars.required("ENCRYPTION_KEY")?;
    if env.is_production() {
        check_production_secret("ENCRYPTION_KEY", &raw)?;
    }
    let current = decode_key("ENCRYPTION_KEY", &raw)?;
    if env.is_production() && DEVELOPMENT_KEYS.contains(&raw.as_str()) {
        return Err(ConfigError::Insecure {
            var: "ENCRYPTION_KEY",
            reason: "this is the published development key from .env.example; generate one".into(),
        });
    }
    if env.is_production() && current.is_weak() {
        return Err(ConfigError::Insecure {
            var: "ENCRYPTION_KEY",
            reason: "key bytes are not random".into(),
        });
    }
    let id_raw = vars.get("ENCRYPTION_KEY_ID").unwrap_or_else(|| "k1".into());
    let current_id = KeyId::parse(&id_raw).map_err(|reason| ConfigError::Invalid {
        var: "ENCRYPTION_KEY_ID",
        reason,
    })?;
    let mut previous = HashMap::new();
    if let Some(list) = vars.get("ENCRYPTION_PREVIOUS_KEYS") {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry.split_once(':').ok_or_else(|| ConfigError::Invalid {
                var: "ENCRYPTION_PREVIOUS_KEYS",
                reason: "entries must look like id:base64key".into(),
            })?;
            let id = KeyId::parse(id).map_err(|reason| ConfigError::Invalid {
                var: "ENCRYPTION_PREVIOUS_KEYS",
                reason,
            })?;
            previous.insert(id, decode_key("ENCRYPTION_PREVIOUS_KEYS", key)?);
        }
    }
    Ok(Keyring::new(current_id, current, previous))
}

fn decode_key(var: &'static str, raw: &str) -> Result<MasterKey, ConfigError> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ];
    let bytes = engines
        .iter()
        .find_map(|engine| engine.decode(raw.as_bytes()).ok())
        .ok_or_else(|| ConfigError::Invalid {
            var,
            reason: "must be base64 (generate one with `openssl rand -base64 32`)".into(),
        })?;
    MasterKey::from_slice(&bytes).ok_or_else(|| ConfigError::Invalid {
        var,
        reason: format!("must decode to 32 bytes, got {}", bytes.len()),
    })
}

impl JwtSettings {
    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.expose_secret().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1/x".to_string(),
            ),
            ("JWT_SECRET_KEY", "a".repeat(40)),
            (
                "ENCRYPTION_KEY",
                "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=".to_string(),
            ),
        ])
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|k| vars.get(k).cloned())
    }

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
        let mut vars = base();
        vars.insert("DELAY_LADDER_MAX_SECONDS", "8".into());
        let s = load(&vars).unwrap();
        assert_eq!(s.queues.ladder("q").len(), 4);
        assert_eq!(
            s.queues.rung_for(Duration::from_secs(100)),
            Duration::from_secs(8)
        );
        vars.insert(
            "DELAY_LADDER_MAX_SECONDS",
            (LADDER_LIMIT_SECONDS + 1).to_string(),
        );
        assert!(load(&vars).is_err());
    }

    #[test]
    fn defaults_match_the_python_platform() {
        let s = load(&base()).unwrap();
        assert_eq!(s.jwt.access_ttl, Duration::from_secs(3600));
        assert_eq!(s.jwt.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(s.queues.tasks, "celery");
        assert_eq!(s.task_time_limit, Duration::from_secs(300));
        assert_eq!(s.api_port, 8000);
    }

    #[test]
    fn broker_urls_are_a_list_separated_by_commas_or_semicolons() {
        assert_eq!(
            load(&base()).unwrap().broker_urls,
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
        let mut vars = base();
        vars.insert(
            "RABBITMQ_URL",
            "amqp://a:5681/%2f, amqp://b:5682/%2f;amqps://c:5683/%2f,".into(),
        );
        let s = load(&vars).unwrap();
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
        vars.insert("CELERY_BROKER_URL", "amqp://a/%2f,redis://b".into());
        let err = load(&vars).unwrap_err().to_string();
        assert!(err.contains("CELERY_BROKER_URL"), "{err}");
        vars.remove("CELERY_BROKER_URL");
        vars.insert("RABBITMQ_URL", " , ;".into());
        let err = load(&vars).unwrap_err().to_string();
        assert!(err.contains("RABBITMQ_URL"), "{err}");
    }

    #[test]
    fn missing_database_url_is_named() {
        let mut vars = base();
        vars.remove("DATABASE_URL");
        let err = load(&vars).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn invalid_number_is_named() {
        let mut vars = base();
        vars.insert("RABBITMQ_PREFETCH_COUNT", "lots".into());
        let err = load(&vars).unwrap_err().to_string();
        assert!(err.contains("RABBITMQ_PREFETCH_COUNT"), "{err}");
    }

    #[test]
    fn short_encryption_key_is_refused() {
        let mut vars = base();
        vars.insert("ENCRYPTION_KEY", "c2hvcnQ=".into());
        let err = load(&vars).unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
    }

    #[test]
    fn production_refuses_placeholder_secrets() {
        let mut vars = base();
        vars.insert("ENV", "production".into());
        vars.insert(
            "JWT_SECRET_KEY",
            "your-jwt-secret-key-at-least-32-chars".into(),
        );
        let err = load(&vars).unwrap_err().to_string();
        assert!(
            err.contains("JWT_SECRET_KEY") && err.contains("placeholder"),
            "{err}"
        );

        let mut vars = base();
        vars.insert("ENV", "production".into());
        vars.insert("JWT_SECRET_KEY", "short".into());
        assert!(matches!(load(&vars), Err(ConfigError::Insecure { .. })));

        let mut vars = base();
        vars.insert("ENV", "production".into());
        vars.insert(
            "JWT_SECRET_KEY",
            "Zk3q9XrT2vLmP8sYwA1bC4dE6fG7hJ0kN5oQ".into(),
        );
        vars.insert(
            "ENCRYPTION_KEY",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        );
        let err = load(&vars).unwrap_err().to_string();
        assert!(err.contains("ENCRYPTION_KEY"), "{err}");
    }

    #[test]
    fn only_hs256_is_accepted() {
        let mut vars = base();
        vars.insert("JWT_ALGORITHM", "none".into());
        assert!(load(&vars).is_err());
    }

    #[test]
    fn fernet_style_url_safe_key_is_accepted() {
        let mut vars = base();
        vars.insert(
            "ENCRYPTION_KEY",
            "_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-8=".into(),
        );
        assert!(load(&vars).is_ok());
    }

    #[test]
    fn extra_queues_are_consumed_after_our_own() {
        let mut vars = base();
        vars.insert("CELERY_DEFAULT_QUEUE", "notify".into());
        vars.insert("CELERY_EXTRA_QUEUES", " celery, legacy ,notify,".into());
        let settings = load(&vars).unwrap();
        assert_eq!(
            settings.queues.consumed(),
            ["notify", "notify.bulk", "celery", "legacy"]
        );
        vars.insert("CELERY_EXTRA_QUEUES", "has space".into());
        let err = load(&vars).unwrap_err();
        assert!(err.to_string().contains("CELERY_EXTRA_QUEUES"), "{err}");
    }
}
