//! Settings read from the environment (and a `.env` file), using the
//! variable names of the Python platform where they exist. Every variable is
//! documented in `.env.example` and parsed in one place: the section of this
//! module its concern belongs to.
//!
//! Each binary reads only the sections it uses ([`Role`]), so the worker
//! and the scheduler, which sign no tokens, start without `JWT_SECRET_KEY`.
//! All three need `ENCRYPTION_KEY`: the scheduler opens webhook signing
//! secrets to sign the events it delivers.

mod api;
mod bounces;
mod broker;
mod database;
mod delivery;
mod process;
mod python;
mod redis;
mod scheduler;
mod security;
mod unsubscribe;
mod vars;
mod webhooks;
mod worker;

use std::time::Duration;

use chrono_tz::Tz;
use secrecy::SecretString;

pub use api::AuthThrottle;
pub use bounces::{BounceSettings, InboundSettings};
pub use broker::{ladder_rungs, QueueNames, LADDER_LIMIT_SECONDS};
pub use process::Environment;
pub use scheduler::SchedulerSettings;
pub use security::JwtSettings;
pub use webhooks::WebhookSettings;
pub use worker::{Liveness, Revokes, WorkerSettings};

use crate::crypto::Keyring;
use vars::Vars;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0} is required but not set")]
    Missing(&'static str),
    #[error("configuration: {var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("configuration: {var} is not safe for ENV=production: {reason}")]
    Insecure { var: &'static str, reason: String },
}

/// The binary settings are loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Scheduler,
}

/// The sections not every binary reads. Every binary reads the others:
/// `process` (but `METRICS_PORT`), `database`, `broker` and `delivery`.
#[derive(Debug, Clone, Copy)]
enum Section {
    /// `METRICS_PORT`: the API serves its metrics on `API_PORT`.
    Metrics,
    Redis,
    Python,
    /// The token signing key of `security`.
    Jwt,
    /// The keyring of `security` (`ENCRYPTION_KEY`, ...).
    Keyring,
    Api,
    Worker,
    Scheduler,
    /// Event webhooks: the API checks endpoints, the scheduler delivers.
    Webhooks,
    /// Unsubscribe links: the worker signs them, the API checks them.
    Unsubscribe,
    /// Bounces and complaints: the scheduler reads mailboxes, the API
    /// takes provider webhooks; both apply reports.
    Bounces,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Api, Role::Worker, Role::Scheduler];

    /// The binary's name, as its messages begin.
    pub fn binary(self) -> &'static str {
        match self {
            Role::Api => "notify-api",
            Role::Worker => "notify-worker",
            Role::Scheduler => "notify-scheduler",
        }
    }

    fn reads(self, section: Section) -> bool {
        use Section::*;
        match self {
            Role::Api => matches!(
                section,
                Redis | Python | Jwt | Keyring | Api | Webhooks | Unsubscribe | Bounces
            ),
            Role::Worker => matches!(
                section,
                Metrics | Redis | Python | Keyring | Worker | Unsubscribe
            ),
            Role::Scheduler => {
                matches!(section, Metrics | Keyring | Scheduler | Webhooks | Bounces)
            }
        }
    }

    /// The variable naming the port of this binary's own HTTP listener,
    /// which its `health-check` asks: `API_PORT`, or the worker's and the
    /// scheduler's `METRICS_PORT`.
    pub fn listener_var(self) -> &'static str {
        match self {
            Role::Api => "API_PORT",
            Role::Worker | Role::Scheduler => "METRICS_PORT",
        }
    }

    /// That port, read alone from `.env` and the environment (a health
    /// probe needs nothing else); `None` when the binary has no listener.
    pub fn listener_port_from_env(self) -> Result<Option<u16>, ConfigError> {
        let _ = dotenvy::dotenv();
        let vars = Vars::new(&environment);
        match self {
            Role::Api => api::port(&vars).map(Some),
            Role::Worker | Role::Scheduler => process::metrics_port(&vars),
        }
    }
}

/// The process environment: every variable is read through this.
fn environment(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Every setting, by the section of this module that reads it. The fields
/// of a section the binary does not read hold their defaults; `jwt`,
/// `keyring`, `worker` and `scheduler`, which not every binary uses, are
/// `None` then.
#[derive(Debug, Clone)]
pub struct Settings {
    // process
    pub env: Environment,
    pub debug: bool,
    pub log_level: String,
    pub tz: Tz,
    /// Days added to today's date for quotas and warm-up
    /// (`TEST_CLOCK_OFFSET_DAYS`, tests only; 0 otherwise).
    pub clock_offset_days: i64,
    pub metrics_port: Option<u16>,
    // database
    pub database_url: String,
    pub db_pool_size: u32,
    // python
    /// The Python platform's database during a switch
    /// (`PYTHON_DATABASE_URL`): workers then reserve each send in its
    /// `email_accounts` too, so the two platforms together keep every
    /// account under its daily limit.
    pub python_database_url: Option<String>,
    /// The Fernet keys `import-python` decrypts the Python platform's SMTP
    /// passwords with (`PYTHON_ENCRYPTION_KEY`, else `ENCRYPTION_KEY`).
    pub python_encryption_keys: SecretString,
    // redis
    pub redis_url: String,
    pub result_backend_url: String,
    pub result_expires: Duration,
    // broker
    /// The RabbitMQ nodes to connect to, in order of preference (never
    /// empty): one URL, or the nodes of a cluster (`RABBITMQ_URL` /
    /// `CELERY_BROKER_URL` as a list separated by `,` or `;`, as Celery's
    /// `broker_url` accepts). Connections fail over between them.
    pub broker_urls: Vec<String>,
    pub prefetch_count: u16,
    pub heartbeat: u16,
    pub queues: QueueNames,
    /// Emit `task-sent` for every task the outbox relay publishes
    /// (`CELERY_TASK_SEND_SENT_EVENT`, Celery's `task_send_sent_event`).
    pub send_sent_event: bool,
    /// This machine's name (`HOSTNAME`, else `/etc/hostname`), in the
    /// names events carry.
    pub host_name: String,
    // security
    /// The API's token signing key.
    pub jwt: Option<JwtSettings>,
    /// The keys SMTP passwords and webhook secrets are sealed with: every
    /// binary loads it (and refuses to start without it); see [`Settings::keyring`].
    pub keyring: Option<Keyring>,
    // delivery
    pub email_timeout: Duration,
    pub email_max_size: usize,
    pub attachment_max_size: usize,
    pub task_time_limit: Duration,
    pub task_soft_time_limit: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub quota_wait: Duration,
    pub breaker: crate::db::email_accounts::Breaker,
    // worker
    pub worker_concurrency: usize,
    pub liveness: Liveness,
    pub worker: Option<WorkerSettings>,
    // api
    pub api_host: String,
    pub api_port: u16,
    pub rate_limit_enabled: bool,
    pub rate_limit_per_minute: u32,
    /// Length of a rate-limit window (`RATE_LIMIT_WINDOW_SECONDS`, default
    /// 60): a key may make its per-minute limit of requests per window.
    pub rate_limit_window: Duration,
    /// Prefix of the rate-limit counters in Redis (`RATE_LIMIT_REDIS_PREFIX`).
    pub rate_limit_prefix: String,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub auth_throttle: AuthThrottle,
    // scheduler
    pub scheduler: Option<SchedulerSettings>,
    // webhooks (the API and the scheduler)
    pub webhooks: Option<WebhookSettings>,
    // unsubscribe (the API and the worker)
    /// One-click unsubscribe links: signed by the worker, checked by the API.
    pub unsubscribe: Option<crate::mail::unsubscribe::UnsubscribeLinks>,
    // bounces (the API and the scheduler)
    pub bounces: Option<BounceSettings>,
}

impl Settings {
    /// The first configured broker URL: what is shown where one URL is
    /// expected (Celery's `broker` in `inspect stats`).
    pub fn broker_url(&self) -> &str {
        self.broker_urls.first().map_or("", String::as_str)
    }

    /// The keyring, for a binary that loaded it.
    pub fn keyring(&self) -> Result<&Keyring, ConfigError> {
        self.keyring
            .as_ref()
            .ok_or(ConfigError::Missing("ENCRYPTION_KEY"))
    }

    /// What `role` uses, from `.env` (when present) and then the process
    /// environment.
    pub fn from_env_for(role: Role) -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        load(&[role], &environment)
    }

    /// What `role` uses, from any variable source; tests pass a map.
    pub fn from_lookup_for(
        role: Role,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        load(&[role], &lookup)
    }

    /// What every binary uses (and requires), from any variable source:
    /// for tests and tools that play several roles.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        load(&Role::ALL, &lookup)
    }
}

fn load(roles: &[Role], lookup: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let vars = Vars::new(lookup);
    let reads = |section| roles.iter().any(|role| role.reads(section));
    let section = |s| vars.only_if(reads(s));
    let env = process::environment(&vars)?;
    let jwt = reads(Section::Jwt)
        .then(|| security::jwt(&vars, env))
        .transpose()?;
    let encryption_key = security::encryption_key(&section(Section::Keyring))?;
    let (task_time_limit, task_soft_time_limit) = delivery::time_limits(&vars)?;
    let (for_python, for_redis) = (section(Section::Python), section(Section::Redis));
    let (for_worker, for_api) = (section(Section::Worker), section(Section::Api));
    Ok(Settings {
        env,
        debug: process::debug(&vars, env)?,
        log_level: process::log_level(&vars),
        tz: process::time_zone(&vars)?,
        clock_offset_days: process::clock_offset_days(&vars, env)?,
        metrics_port: process::metrics_port(&section(Section::Metrics))?,
        database_url: database::url(&vars)?,
        db_pool_size: database::pool_size(&vars)?,
        python_database_url: python::database_url(&for_python)?,
        python_encryption_keys: python::encryption_keys(
            &for_python,
            encryption_key.as_deref().unwrap_or_default(),
        ),
        redis_url: redis::url(&for_redis)?,
        result_backend_url: redis::result_backend_url(&for_redis)?,
        result_expires: redis::result_expires(&for_redis)?,
        broker_urls: broker::urls(&vars)?,
        prefetch_count: broker::prefetch_count(&vars)?,
        heartbeat: broker::heartbeat(&vars)?,
        queues: broker::queues(&vars)?,
        send_sent_event: broker::send_sent_event(&vars)?,
        host_name: worker::host_name(&vars),
        jwt,
        keyring: encryption_key
            .as_deref()
            .map(|key| security::keyring(&vars, env, key))
            .transpose()?,
        email_timeout: delivery::email_timeout(&vars)?,
        email_max_size: delivery::email_max_size(&vars)?,
        attachment_max_size: delivery::attachment_max_size(&vars)?,
        task_time_limit,
        task_soft_time_limit,
        max_retries: delivery::max_retries(&vars)?,
        retry_backoff: delivery::retry_backoff(&vars)?,
        retry_backoff_max: delivery::retry_backoff_max(&vars)?,
        quota_wait: delivery::quota_wait(&vars)?,
        breaker: delivery::breaker(&vars)?,
        worker_concurrency: worker::concurrency(&for_worker)?,
        liveness: worker::liveness(&for_worker)?,
        worker: reads(Section::Worker)
            .then(|| worker::settings(&vars))
            .transpose()?,
        api_host: api::host(&for_api),
        api_port: api::port(&for_api)?,
        rate_limit_enabled: api::rate_limit_enabled(&for_api)?,
        rate_limit_per_minute: api::rate_limit_per_minute(&for_api)?,
        rate_limit_window: api::rate_limit_window(&for_api)?,
        rate_limit_prefix: api::rate_limit_prefix(&for_api),
        trusted_proxies: api::trusted_proxies(&for_api)?,
        auth_throttle: api::auth_throttle(&for_api)?,
        scheduler: reads(Section::Scheduler)
            .then(|| scheduler::settings(&vars))
            .transpose()?,
        webhooks: reads(Section::Webhooks)
            .then(|| webhooks::settings(&vars))
            .transpose()?,
        unsubscribe: reads(Section::Unsubscribe)
            .then(|| unsubscribe::settings(&vars, env))
            .transpose()?,
        bounces: reads(Section::Bounces)
            .then(|| bounces::settings(&vars, env))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The variables every binary requires, and the API's signing key.
    pub(super) fn base() -> HashMap<&'static str, String> {
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

    /// [`base`] with `changes`; an empty value removes the variable.
    pub(super) fn with(changes: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        let mut vars = base();
        for (key, value) in changes {
            if value.is_empty() {
                vars.remove(key);
            } else {
                vars.insert(key, value.to_string());
            }
        }
        vars
    }

    /// Every binary's settings.
    pub(super) fn load(vars: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|k| vars.get(k).cloned())
    }

    /// One binary's settings.
    pub(super) fn load_for(
        role: Role,
        vars: &HashMap<&'static str, String>,
    ) -> Result<Settings, ConfigError> {
        Settings::from_lookup_for(role, |k| vars.get(k).cloned())
    }

    /// Asserts that every binary's settings are refused with `changes`,
    /// with an error that names each of `naming`.
    pub(super) fn assert_refused(changes: &[(&'static str, &str)], naming: &[&str]) {
        let err = load(&with(changes)).unwrap_err().to_string();
        assert!(naming.iter().all(|n| err.contains(n)), "{err}");
    }

    #[test]
    fn defaults_match_the_python_platform() {
        let s = load(&base()).unwrap();
        let jwt = s.jwt.as_ref().unwrap();
        assert_eq!(jwt.access_ttl, Duration::from_secs(3600));
        assert_eq!(jwt.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(s.queues.tasks, "celery");
        assert_eq!(s.task_time_limit, Duration::from_secs(300));
        assert_eq!(s.api_port, 8000);
    }

    #[test]
    fn only_the_api_requires_the_token_signing_key() {
        let vars = with(&[("JWT_SECRET_KEY", "")]);
        let err = load_for(Role::Api, &vars).unwrap_err();
        assert!(
            matches!(err, ConfigError::Missing("JWT_SECRET_KEY")),
            "{err}"
        );
        assert!(
            load(&vars).is_err(),
            "every binary's settings include the API's"
        );
        let worker = load_for(Role::Worker, &vars).unwrap();
        assert!(worker.jwt.is_none() && worker.worker.is_some());
        let scheduler = load_for(Role::Scheduler, &vars).unwrap();
        assert!(scheduler.jwt.is_none() && scheduler.scheduler.is_some());
    }

    #[test]
    fn a_binary_ignores_the_sections_it_does_not_read() {
        let metrics = ("METRICS_PORT", "9091");
        let vars = with(&[
            metrics,
            ("API_PORT", "not a port"),
            ("SCHEDULER_POLL_MS", "0"),
            ("CELERY_TASK_ALIASES", "nonsense"),
        ]);
        let refused = |role, var| load_for(role, &vars).unwrap_err().to_string().contains(var);
        assert!(refused(Role::Api, "API_PORT"));
        assert!(refused(Role::Worker, "CELERY_TASK_ALIASES"));
        assert!(refused(Role::Scheduler, "SCHEDULER_POLL_MS"));
        let vars = with(&[metrics]);
        let api = load_for(Role::Api, &vars).unwrap();
        assert!(api.worker.is_none() && api.scheduler.is_none());
        assert_eq!(api.metrics_port, None, "the API serves metrics on API_PORT");
        assert_eq!(
            load_for(Role::Worker, &vars).unwrap().metrics_port,
            Some(9091)
        );
    }
}
