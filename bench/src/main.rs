//! `notify-bench`: measures the platform end to end on this machine.
//!
//! Starts the release `notify-api` and `notify-worker` binaries against the
//! local PostgreSQL, RabbitMQ and Redis (a fresh database and queue), with
//! an in-process SMTP sink, then:
//!   1. ingest: N sends through the API at C concurrent clients with the
//!      workers stopped — requests/s, p50/p99 latency;
//!   2. drain: starts the workers — emails/s until the backlog is delivered;
//!   3. end to end: N more sends with the workers running — first request
//!      to last email received and recorded `sent`, and per-message latency
//!      (created → sent) p50/p99; worker peak RSS.
//!
//! `notify-scheduler` runs throughout. With `--webhooks E`, E endpoints on
//! an in-process receiver (answering 204) subscribe to `email.accepted`
//! and `email.sent`, and the run ends with the dispatcher's figures: events
//! delivered per second and the lag from event to delivery. Comparing a
//! run with `--webhooks 0` shows what webhooks cost the sending rate.
//!
//! With `--smtp-latency MS` the sink answers as a real provider does: 50 ms
//! for the greeting and for each RCPT, the rest of MS after the data, so a
//! message on a warm connection takes MS. `--accounts A` SMTP accounts
//! (distinct logins) share the load, each capped at `--account-connections
//! C` connections (the account's `max_connections`, and the sink refuses a
//! login's connection beyond C with 421). Such a run prints its bound,
//! A × C ÷ latency, and each phase's ratio to it.
//!
//! Every phase prints PostgreSQL's WAL bytes per email (the whole server's
//! WAL: run it on a quiet machine); the run ends with the rows written per
//! email (inserted, updated and how many of those were HOT, deleted), per
//! table.
//!
//! With `--apis N`, N API processes share the clients' requests (the
//! scale-out case: two APIs and two workers against one PostgreSQL and
//! RabbitMQ).
//!
//! Usage: notify-bench [--messages N] [--concurrency C] [--workers W] [--apis N] [--rate R]
//!                     [--worker-concurrency N] [--prefetch N] [--webhooks E]
//!                     [--accounts A] [--account-connections C] [--smtp-latency MS]
//!                     [--deferred-dispatch 0|1]
//!
//! `--deferred-dispatch 1` starts the scheduler only after the sending
//! phases: they then show what recording webhook events costs the sending
//! path, apart from the dispatcher's share of the CPU, and the dispatch
//! rate is measured alone, on the whole backlog.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use smtp_sink::SmtpSink;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

mod cpu;
mod receiver;
mod writes;
use cpu::CpuSnapshot;

struct Options {
    messages: usize,
    concurrency: usize,
    workers: usize,
    /// Requests per second offered in the end-to-end phase (0: as fast as
    /// the clients go). A paced run shows whether a rate is sustained:
    /// delivery keeps up and per-message latency stays flat.
    rate: usize,
    /// Sends in flight per worker process (CELERY_WORKER_CONCURRENCY).
    worker_concurrency: usize,
    /// Unacknowledged deliveries per queue (RABBITMQ_PREFETCH_COUNT).
    prefetch: usize,
    /// Webhook endpoints receiving each message's events.
    webhooks: usize,
    /// SMTP accounts (distinct logins on the sink) sharing the load.
    accounts: usize,
    /// Each account's `max_connections` (0: no cap).
    account_connections: usize,
    /// Milliseconds the sink takes per message on a warm connection.
    smtp_latency: usize,
    /// API processes; the clients spread their requests over them.
    apis: usize,
    /// 1: start the scheduler (and so the webhook dispatcher) only after
    /// the end-to-end phase, so the sending phases pay only for recording
    /// events, and the dispatch rate is measured alone on a backlog.
    deferred_dispatch: bool,
}

impl Options {
    /// How long sending the messages may take before the benchmark looks
    /// for stragglers: twice what it should take (at the bound, or at
    /// 2,000 emails/s on loopback), and at least 30 s. A phase this slow
    /// is a bug to find, not a figure.
    fn patience(&self) -> Duration {
        let expected = self.messages as f64 / self.bound().unwrap_or(2000.0);
        Duration::from_secs_f64((2.0 * expected).max(30.0))
    }

    /// Emails per second the SMTP side allows at most: every allowed
    /// connection busy all the time. None without a latency or a cap.
    fn bound(&self) -> Option<f64> {
        (self.smtp_latency > 0 && self.account_connections > 0).then(|| {
            (self.accounts * self.account_connections) as f64 * 1000.0 / self.smtp_latency as f64
        })
    }

    fn versus_bound(&self, rate: f64) -> String {
        match self.bound() {
            Some(bound) => format!(
                " — {:.0}% of the bound ({bound:.0} emails/s)",
                100.0 * rate / bound
            ),
            None => String::new(),
        }
    }
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        messages: 20_000,
        concurrency: 64,
        workers: 1,
        rate: 0,
        worker_concurrency: 1024,
        prefetch: 1024,
        webhooks: 0,
        accounts: 1,
        account_connections: 0,
        smtp_latency: 0,
        apis: 1,
        deferred_dispatch: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: usize = args.next().context("flag needs a value")?.parse()?;
        match flag.as_str() {
            "--messages" => o.messages = value,
            "--concurrency" => o.concurrency = value,
            "--workers" => o.workers = value,
            "--rate" => o.rate = value,
            "--worker-concurrency" => o.worker_concurrency = value,
            "--prefetch" => o.prefetch = value,
            "--webhooks" => o.webhooks = value,
            "--accounts" => o.accounts = value.max(1),
            "--account-connections" => o.account_connections = value,
            "--smtp-latency" => o.smtp_latency = value,
            "--apis" => o.apis = value.max(1),
            "--deferred-dispatch" => o.deferred_dispatch = value > 0,
            other => bail!(
                "unknown flag {other}; usage: notify-bench [--messages N] [--concurrency C] [--workers W] [--apis N] [--rate R] [--worker-concurrency N] [--prefetch N] [--webhooks E] [--accounts A] [--account-connections C] [--smtp-latency MS] [--deferred-dispatch 0|1]"
            ),
        }
    }
    if o.smtp_latency > 0 && o.smtp_latency < 100 {
        bail!("--smtp-latency is at least 100 ms (50 for RCPT, the rest after the data)");
    }
    Ok(o)
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} is not built (cargo build --release --workspace)",
            path.display()
        );
    }
    Ok(path)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Platform {
    vars: Vec<(String, String)>,
    apis: Vec<Child>,
    scheduler: Option<Child>,
    workers: Vec<Child>,
}

impl Platform {
    /// Starts `name`; with `log`, its output goes to
    /// notify-bench-worker-<log>.log in the temporary directory.
    fn spawn(
        &self,
        name: &str,
        extra: &[(&str, String)],
        log: Option<usize>,
    ) -> anyhow::Result<Child> {
        let output = match log {
            Some(i) => Stdio::from(std::fs::File::create(
                std::env::temp_dir().join(format!("notify-bench-worker-{i}.log")),
            )?),
            None => Stdio::null(),
        };
        Ok(Command::new(binary(name)?)
            .env_clear()
            .envs(self.vars.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .current_dir(std::env::temp_dir())
            .stdout(output)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?)
    }
}

async fn send_all(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    count: usize,
    concurrency: usize,
    offset: usize,
    rate: usize,
) -> anyhow::Result<(Duration, Vec<f64>)> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let request = client
            .post(&urls[i % urls.len()])
            .bearer_auth(token)
            .json(&json!({"to": format!("user{}@example.org", offset + i), "subject": "Bench", "content": "<p>Hello from the benchmark</p>"}));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let res = request.send().await;
            drop(permit);
            match res {
                Ok(r) if r.status().as_u16() == 202 => Ok(t.elapsed().as_secs_f64() * 1000.0),
                Ok(r) => Err(anyhow::anyhow!("status {}", r.status())),
                Err(e) => Err(e.into()),
            }
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for t in tasks {
        latencies.push(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Ok((elapsed, latencies))
}

/// Prints the messages not yet `sent`, by status, and the timeline of a
/// few.
async fn stragglers(pool: &PgPool, after: Duration, arrived: usize) -> anyhow::Result<()> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM message_records WHERE status <> 'sent' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    println!("stragglers after {after:?} ({arrived} emails at the sink): {counts:?}");
    let timelines: Vec<(uuid::Uuid, String, String, serde_json::Value, String)> = sqlx::query_as(
        "SELECT e.message_id, e.event, e.status, e.detail, e.created_at::text
               FROM (SELECT id FROM message_records WHERE status <> 'sent' ORDER BY id LIMIT 3) m
               JOIN message_events e ON e.message_id = m.id
              ORDER BY e.message_id, e.id",
    )
    .fetch_all(pool)
    .await?;
    for (id, event, status, detail, at) in timelines {
        println!("  {id} {at} {event} → {status} {detail}");
    }
    Ok(())
}

/// Waits until the SMTP sink has `total` emails and PostgreSQL records them
/// all `sent`. The sink's counter is free to read; the database count (a
/// scan of the records) is only asked once the sink has them all, so the
/// benchmark does not load the database it measures.
/// Should that take longer than `patience`, it prints the stragglers.
async fn wait_sent(
    pool: &PgPool,
    sink: &SmtpSink,
    total: i64,
    limit: Duration,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut diagnose_at = Some(Instant::now() + patience);
    loop {
        if diagnose_at.is_some_and(|at| Instant::now() > at) {
            diagnose_at = None;
            stragglers(pool, patience, sink.count()).await?;
        }
        if sink.count() as i64 >= total {
            let sent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM message_records WHERE status = 'sent'")
                    .fetch_one(pool)
                    .await?;
            if sent >= total {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} emails arrived after {limit:?}",
                sink.count()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the dispatcher to deliver all `expected` events (two per
/// message and endpoint), then prints its rate and the delivery lag.
async fn report_webhooks(
    pool: &PgPool,
    receiver: &receiver::Receiver,
    expected: u64,
    dispatch_started: Option<Instant>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    while receiver.received() < expected {
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} webhook events arrived",
                receiver.received()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since_dispatch = dispatch_started.map(|started| started.elapsed().as_secs_f64());
    let (span, delivered): (f64, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(d.delivered_at) - min(v.created_at))::float8, count(*)
           FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id
          WHERE d.status = 'delivered'",
    )
    .fetch_one(pool)
    .await?;
    if let Some(span) = since_dispatch {
        println!(
            "webhooks (dispatched after the sending phases): {delivered} events in {span:.1} s from the scheduler's start: {:.0} events/s",
            delivered as f64 / span
        );
        return Ok(());
    }
    let mut lag: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM d.delivered_at - v.created_at) * 1000)::float8
           FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id
          WHERE d.status = 'delivered'",
    )
    .fetch_all(pool)
    .await?;
    lag.sort_by(f64::total_cmp);
    println!(
        "webhooks: {delivered} events delivered ({} requests received) in {span:.1} s from the first event: {:.0} events/s; lag event → delivered p50 {:.0} ms, p99 {:.0} ms",
        receiver.received(),
        delivered as f64 / span,
        percentile(&lag, 0.5),
        percentile(&lag, 0.99)
    );
    Ok(())
}

/// PostgreSQL's current WAL position, in bytes.
async fn wal_position(pool: &PgPool) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
            .fetch_one(pool)
            .await?,
    )
}

async fn report_wal(pool: &PgPool, before: f64, emails: usize) -> anyhow::Result<()> {
    let written = wal_position(pool).await? - before;
    println!(
        "  WAL: {:.0} bytes per email ({:.1} MB in all)",
        written / emails as f64,
        written / 1e6
    );
    Ok(())
}

fn peak_rss_mb(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("notify_bench_{}", &id[..8]);
    let admin =
        PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable").await?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await?;
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}?sslmode=disable");
    platform::db::migrate(&database_url).await?;
    let pool = PgPool::connect(&database_url).await?;
    // BENCH_SETUP_SQL=<file>: SQL run after the migrations, to measure a
    // schema change (an index, a storage parameter) before writing its
    // migration.
    if let Ok(file) = std::env::var("BENCH_SETUP_SQL") {
        let sql = std::fs::read_to_string(&file)?;
        sqlx::raw_sql(&sql).execute(&pool).await?;
        println!("setup: ran {file}");
    }
    let sink = SmtpSink::start().await?;
    let mut api_ports = Vec::new();
    for _ in 0..o.apis {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        api_ports.push(l.local_addr()?.port());
    }
    let queue = format!("bench_{}", &id[..8]);
    let vars: Vec<(String, String)> = [
        ("ENV", "production"),
        ("LOG_LEVEL", "warn"),
        ("DATABASE_URL", database_url.as_str()),
        ("DB_POOL_SIZE", "20"),
        ("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
        ("CELERY_DEFAULT_QUEUE", queue.as_str()),
        (
            "JWT_SECRET_KEY",
            "Zq8vB3nR6tY1uW4xK7mP0sD2fG5hJ9lA3cV6bN8mQ1wE4rT7",
        ),
        (
            "ENCRYPTION_KEY",
            "q0ZJmR3wX8y2Vt6Nf1Kp4Lc7Hs9Ua5Db0Eg3Ii6Oo8Y=",
        ),
        ("API_HOST", "127.0.0.1"),
        (
            "CELERY_WORKER_CONCURRENCY",
            o.worker_concurrency.to_string().as_str(),
        ),
        ("RABBITMQ_PREFETCH_COUNT", o.prefetch.to_string().as_str()),
        ("PATH", "/usr/bin:/bin"),
        // One key drives the whole load; per-key rate limiting would refuse it.
        ("RATE_LIMIT_ENABLED", "false"),
        // The receiver is on loopback.
        ("WEBHOOK_ALLOW_PRIVATE", "true"),
        // Production requires the unsubscribe links' key and https base.
        ("UNSUBSCRIBE_SECRET", "Hk4tW9pZ2xQm7Lr5Nc8Vb1Jd6Fs3Ga0YeUo"),
        ("PUBLIC_BASE_URL", "https://bench.invalid"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut platform = Platform {
        vars,
        apis: Vec::new(),
        scheduler: None,
        workers: Vec::new(),
    };
    for port in &api_ports {
        let api = platform.spawn("notify-api", &[("API_PORT", port.to_string())], None)?;
        platform.apis.push(api);
    }
    let bases: Vec<String> = api_ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let base = bases[0].clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for base in &bases {
        while client.get(format!("{base}/health")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("notify-api did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let credentials = platform::crypto::generate_api_credentials();
    let scopes = vec!["send".to_string(), "read".to_string(), "admin".to_string()];
    platform::db::api_keys::insert(&pool, "bench", "", &scopes, &credentials).await?;
    let token: serde_json::Value = client
        .post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"api_key": credentials.key, "api_secret": credentials.secret}))
        .send()
        .await?
        .json()
        .await?;
    let token = token["data"]["access_token"]
        .as_str()
        .context("token")?
        .to_string();
    if o.smtp_latency > 0 {
        let data = o.smtp_latency - 50;
        sink.set_latency(
            smtp_sink::Latency::parse(&format!("greeting=50,rcpt=50,data={data}"))
                .map_err(anyhow::Error::msg)?,
        );
    }
    sink.limit_connections_per_login(o.account_connections);
    for a in 0..o.accounts {
        let mut account = json!({"email": format!("bench{a}@example.com"), "smtp_host": "127.0.0.1",
            "smtp_port": sink.port(), "smtp_password": "pw", "daily_limit": 10_000_000, "tls_mode": "none"});
        if o.account_connections > 0 {
            account["max_connections"] = json!(o.account_connections);
        }
        client
            .post(format!("{base}/api/v1/admin/email-accounts"))
            .bearer_auth(&token)
            .json(&account)
            .send()
            .await?
            .error_for_status()?;
    }
    let receiver = receiver::Receiver::start().await?;
    for _ in 0..o.webhooks {
        client
            .post(format!("{base}/api/v1/webhooks"))
            .bearer_auth(&token)
            .json(
                &json!({"url": format!("http://127.0.0.1:{}/hook", receiver.port),
                "event_types": ["email.accepted", "email.sent"]}),
            )
            .send()
            .await?
            .error_for_status()?;
    }
    if !o.deferred_dispatch {
        platform.scheduler = Some(platform.spawn("notify-scheduler", &[], None)?);
    }
    let send_urls: Vec<String> = bases
        .iter()
        .map(|base| format!("{base}/api/v1/messages/email/send"))
        .collect();
    println!(
        "notify-bench: {} messages, {} concurrent clients, {} API process(es), {} worker process(es) of concurrency {}, prefetch {}, {} webhook endpoint(s)",
        o.messages, o.concurrency, o.apis, o.workers, o.worker_concurrency, o.prefetch, o.webhooks
    );
    if let Some(bound) = o.bound() {
        println!(
            "SMTP: {} accounts × {} connections, {} ms per message: bound {bound:.0} emails/s",
            o.accounts, o.account_connections, o.smtp_latency
        );
    }

    let writes_before = writes::Writes::take(&pool).await?;

    // 1. Ingest with the workers stopped.
    let wal_before = wal_position(&pool).await?;
    let cpu_before = CpuSnapshot::take();
    let (elapsed, lat) =
        send_all(&client, &send_urls, &token, o.messages, o.concurrency, 0, 0).await?;
    println!(
        "ingest (workers idle): {:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms",
        o.messages as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    CpuSnapshot::take().report(&cpu_before, o.messages, elapsed.as_secs_f64());
    report_wal(&pool, wal_before, o.messages).await?;

    // 2. Drain the backlog.
    let wal_before = wal_position(&pool).await?;
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    for i in 0..o.workers {
        let mut env = vec![("CELERY_WORKER_NAME", format!("bench{i}@{queue}"))];
        // BENCH_WORKER_LOG=<filter>: the workers log at that level to
        // notify-bench-worker-<i>.log in the temporary directory.
        let log = std::env::var("BENCH_WORKER_LOG").ok();
        if let Some(filter) = &log {
            env.push(("LOG_LEVEL", filter.clone()));
            env.push(("ENV", "development".to_string()));
        }
        let worker = platform.spawn("notify-worker", &env, log.is_some().then_some(i))?;
        platform.workers.push(worker);
    }
    wait_sent(
        &pool,
        &sink,
        o.messages as i64,
        Duration::from_secs(600),
        o.patience(),
    )
    .await?;
    let drained = started.elapsed();
    let rate = o.messages as f64 / drained.as_secs_f64();
    println!(
        "drain: {rate:.0} emails/s ({} emails in {:.1} s){}",
        o.messages,
        drained.as_secs_f64(),
        o.versus_bound(rate)
    );
    CpuSnapshot::take().report(&cpu_before, o.messages, drained.as_secs_f64());
    report_wal(&pool, wal_before, o.messages).await?;

    // 3. End to end with the workers running (paced when --rate is given).
    if o.rate > 0 {
        println!("end-to-end phase offered at {} requests/s", o.rate);
    }
    let wal_before = wal_position(&pool).await?;
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    let (elapsed, lat) = send_all(
        &client,
        &send_urls,
        &token,
        o.messages,
        o.concurrency,
        o.messages,
        o.rate,
    )
    .await?;
    wait_sent(
        &pool,
        &sink,
        2 * o.messages as i64,
        Duration::from_secs(600),
        o.patience(),
    )
    .await?;
    let total = started.elapsed();
    let cpu_after = CpuSnapshot::take();
    let e2e: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM sent_at - created_at) * 1000)::float8 FROM message_records
         WHERE status = 'sent' ORDER BY created_at DESC LIMIT $1",
    )
    .bind(o.messages as i64)
    .fetch_all(&pool)
    .await?;
    let mut e2e = e2e;
    e2e.sort_by(f64::total_cmp);
    println!(
        "ingest (workers draining): {:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms",
        o.messages as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let rate = o.messages as f64 / total.as_secs_f64();
    println!(
        "end to end: {rate:.0} emails/s (first request to last email sent: {:.1} s); per-message latency p50 {:.0} ms, p99 {:.0} ms{}",
        total.as_secs_f64(),
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99),
        o.versus_bound(rate)
    );
    cpu_after.report(&cpu_before, o.messages, total.as_secs_f64());
    report_wal(&pool, wal_before, o.messages).await?;
    if o.account_connections > 0 {
        println!(
            "SMTP connections: at most {} per login at once (cap {}); {} refused for the cap",
            sink.peak_connections_per_login(),
            o.account_connections,
            sink.refused_for_limit()
        );
    }
    for (i, w) in platform.workers.iter().enumerate() {
        println!("worker {i} peak RSS: {:.0} MB", peak_rss_mb(w.id()));
    }
    for (i, api) in platform.apis.iter().enumerate() {
        println!("api {i} peak RSS: {:.0} MB", peak_rss_mb(api.id()));
    }
    let mut dispatch_started = None;
    if o.deferred_dispatch {
        dispatch_started = Some(Instant::now());
        platform.scheduler = Some(platform.spawn("notify-scheduler", &[], None)?);
    }
    if o.webhooks > 0 {
        let expected = (4 * o.messages * o.webhooks) as u64;
        report_webhooks(&pool, &receiver, expected, dispatch_started).await?;
    }
    if let Some(scheduler) = &platform.scheduler {
        println!("scheduler peak RSS: {:.0} MB", peak_rss_mb(scheduler.id()));
    }
    // Every connection reports its table statistics within 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    writes::Writes::take(&pool)
        .await?
        .report(&writes_before, 2 * o.messages);

    for w in &mut platform.workers {
        let _ = w.kill().await;
    }
    if let Some(scheduler) = &mut platform.scheduler {
        let _ = scheduler.kill().await;
    }
    for api in &mut platform.apis {
        let _ = api.kill().await;
    }
    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin)
        .await;
    Ok(())
}
