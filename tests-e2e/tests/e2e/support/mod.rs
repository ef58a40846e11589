//! Test harness: every test gets its own database, its own queue names and
//! its own SMTP server, runs the real API in-process and real worker
//! processes, and talks to the real PostgreSQL, RabbitMQ and Redis.

pub mod api;
pub mod browser;
pub mod imap;
pub mod proxy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use smtp_sink::SmtpSink;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_RESULTS: &str = "redis://127.0.0.1:6379/1";

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection to this machine's RabbitMQ and a channel on it.
pub async fn rabbitmq_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(RABBITMQ, lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// Publishes task messages to `queue` through its exchange, as a Celery
/// producer does, each confirmed by the broker.
pub async fn publish_tasks(queue: &str, tasks: &[platform::celery::TaskMessage]) {
    let (conn, channel) = rabbitmq_channel().await;
    for task in tasks {
        channel
            .basic_publish(
                queue,
                queue,
                lapin::options::BasicPublishOptions::default(),
                &task.body(),
                task.properties(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let _ = conn.close(200, "published").await;
}

/// Messages in a queue, or `None` when it does not exist (a passive
/// declaration, which creates nothing).
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let (conn, channel) = rabbitmq_channel().await;
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let depth = channel
        .queue_declare(queue, options, lapin::types::FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = conn.close(200, "done").await;
    depth
}

/// A GET on RabbitMQ's management API (`path` after `/api/`).
pub async fn rabbitmq_management(path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:15672/api/{path}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("RabbitMQ management API")
        .json()
        .await
        .expect("JSON from the management API")
}

/// A built binary of the workspace, next to this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

pub struct TestEnv {
    pub vars: HashMap<String, String>,
    pub pool: PgPool,
    pub smtp: SmtpSink,
    pub queue: String,
    pub api: Option<api::RunningApi>,
    /// Further queues (and their exchanges and ladders) a test declared,
    /// removed with the test's own.
    pub extra_queues: Vec<String>,
    workers: Vec<Child>,
    schedulers: Vec<Child>,
    shutdown: CancellationToken,
    database: String,
}

impl TestEnv {
    /// A fresh database (migrated), unique queue names and an SMTP server.
    pub async fn new() -> TestEnv {
        Self::with_vars(&[]).await
    }

    pub async fn with_vars(overrides: &[(&str, &str)]) -> TestEnv {
        let id = Uuid::new_v4().simple().to_string();
        // The creation time in the name lets scripts/test.sh drop databases
        // that interrupted runs left behind without touching live ones.
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let database = format!("notify_test_{created}_{id}");
        let admin = PgPool::connect(&format!("{POSTGRES}/postgres?sslmode=disable"))
            .await
            .expect("postgres");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let database_url = format!("{POSTGRES}/{database}?sslmode=disable");
        platform::db::migrate(&database_url).await.expect("migrate");
        let pool = PgPool::connect(&database_url)
            .await
            .expect("connect test database");

        let smtp = SmtpSink::start().await.expect("smtp sink");
        let queue = format!("t_{id}");
        let mut vars: HashMap<String, String> = [
            ("ENV", "test"),
            ("LOG_LEVEL", "info"),
            ("DATABASE_URL", database_url.as_str()),
            ("DB_POOL_SIZE", "5"),
            ("CELERY_BROKER_URL", RABBITMQ),
            ("CELERY_RESULT_BACKEND", REDIS_RESULTS),
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("CELERY_DEFAULT_QUEUE", queue.as_str()),
            (
                "JWT_SECRET_KEY",
                "test-jwt-secret-0123456789abcdef0123456789",
            ),
            (
                "ENCRYPTION_KEY",
                "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=",
            ),
            ("API_HOST", "127.0.0.1"),
            ("API_PORT", "0"),
            ("QUOTA_WAIT_SECONDS", "1"),
            ("SEND_RETRY_BACKOFF", "1"),
            ("SEND_RETRY_BACKOFF_MAX", "2"),
            ("EMAIL_TIMEOUT", "5"),
            ("CELERY_TASK_SOFT_TIME_LIMIT", "10"),
            ("CELERY_TASK_TIME_LIMIT", "12"),
            ("CELERY_WORKER_CONCURRENCY", "4"),
            ("RABBITMQ_HEARTBEAT", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // Rate-limit counters of this test only, and a limit high enough
        // that only the rate-limit tests (which set their own) meet it.
        vars.insert(
            "RATE_LIMIT_REDIS_PREFIX".into(),
            format!("{queue}:ratelimit"),
        );
        vars.insert("RATE_LIMIT_PER_MINUTE".into(), "1000000".into());
        for (k, v) in overrides {
            vars.insert(k.to_string(), v.to_string());
        }
        TestEnv {
            vars,
            pool,
            smtp,
            queue,
            api: None,
            extra_queues: Vec::new(),
            workers: Vec::new(),
            schedulers: Vec::new(),
            shutdown: CancellationToken::new(),
            database,
        }
    }

    pub fn settings(&self) -> platform::Settings {
        platform::Settings::from_lookup(|k| self.vars.get(k).cloned()).expect("test settings")
    }

    /// Starts the API in this process, with its outbox relay.
    pub async fn start_api(&mut self) -> &api::RunningApi {
        self.start_api_with(self.settings()).await
    }

    pub async fn start_api_with(&mut self, settings: platform::Settings) -> &api::RunningApi {
        let running = api::RunningApi::start(settings, self.shutdown.child_token()).await;
        self.api = Some(running);
        self.api.as_ref().expect("api just started")
    }

    pub fn api(&self) -> &api::RunningApi {
        self.api.as_ref().expect("start_api first")
    }

    /// Starts the API and returns an admin key's access token.
    pub async fn start_api_as_admin(&mut self) -> String {
        self.start_api().await;
        self.api().admin_token(&self.pool).await
    }

    /// A fresh environment (with `overrides`) whose API and one worker
    /// run and which sends through `sender@example.com` (with
    /// `daily_limit`); returns it with an admin key's access token.
    pub async fn sending(overrides: &[(&str, &str)], daily_limit: i64) -> (TestEnv, String) {
        let mut env = TestEnv::with_vars(overrides).await;
        let token = env.start_api_as_admin().await;
        env.add_sender(&token, daily_limit).await;
        env.start_worker();
        (env, token)
    }

    /// Adds `sender@example.com`, sending through this test's SMTP server
    /// with `daily_limit` and priority 0.
    pub async fn add_sender(&self, token: &str, daily_limit: i64) -> serde_json::Value {
        self.api()
            .add_account(
                token,
                self.smtp.port(),
                "sender@example.com",
                daily_limit,
                0,
            )
            .await
    }

    /// Starts a worker process with this environment's settings.
    pub fn start_worker(&mut self) {
        self.start_worker_with(&[]);
    }

    pub fn start_worker_with(&mut self, extra: &[(&str, &str)]) {
        let n = self.workers.len();
        let worker_name = format!("worker{n}@{}", self.queue);
        let mut vars = vec![("CELERY_WORKER_NAME", worker_name.as_str())];
        vars.extend_from_slice(extra);
        let worker = self.spawn_service("notify-worker", &vars);
        self.workers.push(worker);
    }

    /// Spawns one of the workspace's service binaries with this
    /// environment's settings and `extra` on top.
    fn spawn_service(&self, name: &str, extra: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new(binary(name));
        cmd.env_clear()
            .envs(&self.vars)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // Away from the repository, so a developer's .env is not read.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // E2E_WORKER_LOG=notify_worker=debug shows a worker's details in a test run.
        if let Ok(level) = std::env::var("E2E_WORKER_LOG") {
            cmd.env("LOG_LEVEL", level);
        }
        if std::env::var("E2E_QUIET").is_ok() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"))
    }

    /// Starts a scheduler process (`notify-scheduler`) with this
    /// environment's settings; returns its index.
    pub fn start_scheduler(&mut self) -> usize {
        self.start_scheduler_with(&[])
    }

    /// Starts a scheduler with `extra` on top of this environment's
    /// settings (a `DATABASE_URL` through a proxy, say); returns its index.
    pub fn start_scheduler_with(&mut self, extra: &[(&str, &str)]) -> usize {
        let scheduler = self.spawn_service("notify-scheduler", extra);
        self.schedulers.push(scheduler);
        self.schedulers.len() - 1
    }

    /// The process id of scheduler `index`.
    pub fn scheduler_pid(&self, index: usize) -> u32 {
        self.schedulers[index]
            .id()
            .expect("scheduler still running")
    }

    /// Sends a signal (`TERM`, `KILL`) to scheduler `index` and, for `KILL`,
    /// waits for it to be gone.
    pub async fn signal_scheduler(&mut self, index: usize, signal: &str) {
        let pid = self.scheduler_pid(index);
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
        if signal == "KILL" {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), self.schedulers[index].wait()).await;
        }
    }

    /// The process id of the scheduler holding the leader lock, if any
    /// (from the lock connection's `application_name`).
    pub async fn scheduler_leader_pid(&self) -> Option<u32> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.database =
                    (SELECT oid FROM pg_database WHERE datname = current_database())
                AND a.application_name LIKE 'notify-scheduler-leader:%'",
        )
        .fetch_optional(&self.pool)
        .await
        .expect("query leader");
        name.and_then(|n| n.rsplit(':').next().and_then(|p| p.parse().ok()))
    }

    /// Waits for a scheduler to take the leader lock; returns its pid.
    pub async fn wait_scheduler_leader(&self, what: &str, timeout: Duration) -> u32 {
        eventually(what, timeout, || async {
            self.scheduler_leader_pid().await
        })
        .await
    }

    /// Sends a signal (`TERM`, `KILL`) to worker `index`.
    pub async fn signal_worker(&self, index: usize, signal: &str) {
        let pid = self.workers[index].id().expect("worker still running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
    }

    /// The process id of worker `index`.
    pub fn worker_pid(&self, index: usize) -> u32 {
        self.workers[index].id().expect("worker still running")
    }

    /// How many workers this test has started (running or not).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The index of the scheduler with process id `pid`.
    pub fn scheduler_index(&self, pid: u32) -> Option<usize> {
        self.schedulers.iter().position(|s| s.id() == Some(pid))
    }

    /// Waits for worker `index` to exit and returns its exit status.
    pub async fn wait_worker(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.workers[index].wait())
            .await
            .expect("worker exited in time")
            .expect("wait for worker")
    }

    /// Status of a message as recorded.
    pub async fn status(&self, id: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM message_records WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("message exists")
    }

    /// Waits until message `id` has webhook events (the scheduler's
    /// fan-out makes them from what each change recorded); their types, in
    /// order.
    pub async fn wait_webhook_event_types(&self, id: Uuid, timeout: Duration) -> Vec<String> {
        eventually(&format!("webhook events of {id}"), timeout, || async {
            let types: Vec<String> = sqlx::query_scalar(
                "SELECT event_type FROM webhook_events WHERE message_id = $1 ORDER BY sequence",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .expect("webhook events");
            (!types.is_empty()).then_some(types)
        })
        .await
    }

    pub async fn wait_status(&self, id: Uuid, want: &str, timeout: Duration) {
        eventually(&format!("message {id} to be {want}"), timeout, || async {
            (self.status(id).await == want).then_some(())
        })
        .await
    }

    /// Sends a simple email to `to` and waits until its status is `want`;
    /// returns the message id.
    pub async fn send_until(&self, token: &str, to: &str, want: &str, timeout: Duration) -> Uuid {
        let id = self.api().send_simple(token, to).await;
        self.wait_status(id, want, timeout).await;
        id
    }

    /// How many copies of each Message-ID the SMTP server has received.
    pub fn received_per_message_id(&self) -> HashMap<String, usize> {
        let mut copies: HashMap<String, usize> = HashMap::new();
        for mail in self.smtp.received() {
            let parsed = mail_parser::MessageParser::default()
                .parse(&mail.data)
                .expect("email");
            *copies
                .entry(parsed.message_id().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        copies
    }

    /// Messages accepted and not yet published to the broker.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .expect("count the outbox")
    }

    /// Waits until the relay has published everything in the outbox.
    pub async fn wait_outbox_drained(&self, what: &str, timeout: Duration) {
        eventually(what, timeout, || async {
            (self.outbox_len().await == 0).then_some(())
        })
        .await
    }

    pub async fn count_status(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM message_records WHERE status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for w in self.workers.iter_mut().chain(self.schedulers.iter_mut()) {
            let _ = w.start_kill();
        }
        // Remove this test's queues and database from a separate thread (the
        // test's runtime is finishing). The delay ladders never expire by
        // themselves, so every rung a test may have declared goes too.
        let mut queues = vec![
            self.queue.clone(),
            format!("{}.bulk", self.queue),
            format!("{}.dead_letter", self.queue),
        ];
        let mut exchanges = vec![self.queue.clone(), format!("{}.bulk", self.queue)];
        exchanges.extend(self.extra_queues.iter().cloned());
        queues.extend(self.extra_queues.iter().cloned());
        let longest = Duration::from_secs(platform::config::LADDER_LIMIT_SECONDS);
        for target in &exchanges {
            for rung in platform::config::ladder_rungs(longest) {
                queues.push(format!("{target}.ladder.{}s", rung.as_secs()));
            }
        }
        let database = self.database.clone();
        // The broker this test used (a cluster test's nodes, say), the first
        // of its nodes that answers.
        let brokers: Vec<String> = self
            .vars
            .get("CELERY_BROKER_URL")
            .map(|v| {
                v.split([',', ';'])
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_else(|| vec![RABBITMQ.to_string()]);
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                for broker in &brokers {
                    let Ok(conn) =
                        lapin::Connection::connect(broker, lapin::ConnectionProperties::default())
                            .await
                    else {
                        continue;
                    };
                    if let Ok(channel) = conn.create_channel().await {
                        for q in &queues {
                            let _ = channel.queue_delete(q, Default::default()).await;
                        }
                        for exchange in &exchanges {
                            let _ = channel.exchange_delete(exchange, Default::default()).await;
                        }
                    }
                    let _ = conn.close(200, "test done").await;
                    break;
                }
                if let Ok(admin) =
                    PgPool::connect(&format!("{POSTGRES}/postgres?sslmode=disable")).await
                {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                            .execute(&admin)
                            .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
