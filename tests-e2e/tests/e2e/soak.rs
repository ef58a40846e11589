//! The soak run: a steady stream of sends through the real API (its own
//! process) for minutes, while faults hit every part of the platform, and
//! at the end every accepted message is reconciled against what the SMTP
//! server received.
//!
//! Every process reaches PostgreSQL, RabbitMQ and Redis through proxies
//! this test owns, so "restarting" a service (all its connections dropped,
//! new ones refused for a few seconds) never disturbs the tests running
//! beside it. The suite runs a short version; `scripts/soak.sh` runs the
//! same test for as long as asked (SOAK_MINUTES, SOAK_RATE).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use smtp_sink::{Fault, Stage};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::support::proxy::TcpProxy;
use crate::support::{binary, eventually, rabbitmq_channel, TestEnv};

const WORKER_CONCURRENCY: usize = 16;
/// kill -9 faults in the schedule: each may leave the sends it had in
/// flight between the server's acceptance of DATA and the commit of
/// `sent`, the documented ambiguous window: per lane, up to the
/// concurrency or one batch task's emails, whichever is more.
const KILLS: usize = 2;
const IN_FLIGHT: usize = 2 * if WORKER_CONCURRENCY > platform::tasks::BATCH_MEMBERS {
    WORKER_CONCURRENCY
} else {
    platform::tasks::BATCH_MEMBERS
};

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Api {
    base: String,
    client: reqwest::Client,
    child: Child,
}

impl Api {
    async fn start(vars: &HashMap<String, String>) -> Api {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cmd = Command::new(binary("notify-api"));
        cmd.env_clear()
            .envs(vars)
            .env("API_PORT", port.to_string())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if std::env::var("E2E_QUIET").is_ok() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let api = Api {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            child: cmd.spawn().expect("spawn notify-api"),
        };
        eventually("the API to answer", Duration::from_secs(30), || async {
            let res = api.client.get(format!("{}/health", api.base)).send().await;
            res.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        api
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status();
                (status, res.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
        }
    }
}

/// Prints a line of the run's log, with the time since it started.
fn say(started: Instant, what: &str) {
    println!("soak [{:>7.1}s] {what}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_faults_loses_nothing_and_duplicates_only_in_the_documented_window() {
    let minutes: f64 = setting("SOAK_MINUTES", 2.0);
    let rate: u32 = setting("SOAK_RATE", 40);
    let run = Duration::from_secs_f64(minutes * 60.0);

    let pg = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let rmq = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let redis = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let concurrency = WORKER_CONCURRENCY.to_string();
    let mut env = TestEnv::with_vars(&[
        ("CELERY_WORKER_CONCURRENCY", concurrency.as_str()),
        ("CELERY_TASK_SOFT_TIME_LIMIT", "5"),
        ("CELERY_TASK_TIME_LIMIT", "6"),
        ("SEND_MAX_RETRIES", "20"),
        ("WORKER_LEASE_SECONDS", "4"),
        ("WORKER_LEASE_RENEW_SECONDS", "1"),
        ("RECONCILE_AFTER_SECONDS", "20"),
        ("RECONCILE_INTERVAL_SECONDS", "2"),
        ("SCHEDULER_LEADER_RETRY_MS", "500"),
        ("DB_POOL_SIZE", "10"),
    ])
    .await;
    let direct_db = env.vars["DATABASE_URL"].clone();
    env.vars.insert(
        "DATABASE_URL".into(),
        direct_db.replace("127.0.0.1:5432", &pg.addr.to_string()),
    );
    env.vars.insert(
        "CELERY_BROKER_URL".into(),
        format!("amqp://guest:guest@{}/%2f", rmq.addr),
    );
    env.vars.insert(
        "CELERY_RESULT_BACKEND".into(),
        format!("redis://{}/1", redis.addr),
    );
    env.vars
        .insert("REDIS_URL".into(), format!("redis://{}/0", redis.addr));

    let mut api = Api::start(&env.vars).await;
    let credentials = platform::crypto::generate_api_credentials();
    let scopes = ["send", "read", "admin"].map(String::from).to_vec();
    platform::db::api_keys::insert(&env.pool, "soak", "", &scopes, &credentials)
        .await
        .expect("insert api key");
    let (status, body) = api
        .post(
            "/api/v1/auth/token",
            None,
            &json!({"api_key": credentials.key, "api_secret": credentials.secret}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["data"]["access_token"].as_str().unwrap().to_string();
    let (status, body) = api
        .post(
            "/api/v1/admin/email-accounts",
            Some(&token),
            &json!({
                "email": "soak@example.com", "smtp_host": "127.0.0.1", "smtp_port": env.smtp.port(),
                "smtp_username": "soak@example.com", "smtp_password": "pw",
                "display_name": "Soak", "daily_limit": 10_000_000, "priority": 0, "tls_mode": "none",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Workers 0 and 1 take the faults; worker 2 runs throughout, so its
    // memory can be compared from start to end.
    for _ in 0..3 {
        env.start_worker();
    }
    env.start_scheduler();
    env.start_scheduler();

    let started = Instant::now();
    say(started, &format!("{minutes} min at {rate} sends/s"));
    let accepted: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let refused: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let load = {
        let (accepted, refused) = (accepted.clone(), refused.clone());
        let (client, base, token) = (api.client.clone(), api.base.clone(), token.clone());
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(64));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut i = 0u64;
            while started.elapsed() < run {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let (client, base, token) = (client.clone(), base.clone(), token.clone());
                let (accepted, refused) = (accepted.clone(), refused.clone());
                i += 1;
                tokio::spawn(async move {
                    let body = json!({"to": format!("s{i}@example.org"), "subject": "Soak", "content": "<p>soak</p>"});
                    let res = client
                        .post(format!("{base}/api/v1/messages/email/send"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    match res {
                        Ok(res) if res.status() == StatusCode::ACCEPTED => {
                            let body: Value = res.json().await.unwrap_or(Value::Null);
                            if let Some(id) = body["data"]["message_id"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                            {
                                accepted.lock().unwrap().push(id);
                            }
                        }
                        Ok(res) => {
                            *refused
                                .lock()
                                .unwrap()
                                .entry(res.status().as_u16())
                                .or_default() += 1
                        }
                        Err(_) => *refused.lock().unwrap().entry(0).or_default() += 1,
                    }
                    drop(permit);
                });
            }
        })
    };

    // Memory after warming up.
    tokio::time::sleep(Duration::from_secs(5).min(run / 4)).await;
    let api_pid = api.child.id().expect("api running");
    let steady_pid = env.worker_pid(2);
    let rss_start = (rss_mib(api_pid), rss_mib(steady_pid));

    // The fault schedule, spread over the first 80% of the run.
    let faults = [
        "kill -9 a worker",
        "SMTP 4xx burst",
        "restart RabbitMQ",
        "SIGTERM a worker",
        "kill -9 the scheduler leader",
        "restart PostgreSQL",
        "SMTP dropped connections",
        "restart Redis",
        "operator purges the task queue (workers paused 5 s)",
        "kill -9 a worker",
    ];
    let outage = Duration::from_secs(5);
    let mut victims = [0usize, 1usize];
    for (n, fault) in faults.iter().enumerate() {
        let at = run.mul_f64(0.8 * (n as f64 + 0.5) / faults.len() as f64);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        say(started, fault);
        match n {
            0 | 9 => {
                let victim = &mut victims[n / 9];
                env.signal_worker(*victim, "KILL").await;
                env.wait_worker(*victim, Duration::from_secs(10)).await;
                env.start_worker();
                *victim = env.worker_count() - 1;
            }
            1 => {
                env.smtp.set_fault(
                    Stage::RcptTo,
                    Fault::Reply(451, "4.3.0 try again later".into()),
                );
                tokio::time::sleep(outage).await;
                env.smtp.clear_faults();
            }
            2 => {
                rmq.cut();
                tokio::time::sleep(outage).await;
                rmq.restore();
            }
            3 => {
                let victim = &mut victims[1];
                env.signal_worker(*victim, "TERM").await;
                env.wait_worker(*victim, Duration::from_secs(60)).await;
                env.start_worker();
                *victim = env.worker_count() - 1;
            }
            4 => {
                let leader = eventually("a scheduler leader", Duration::from_secs(30), || {
                    env.scheduler_leader_pid()
                })
                .await;
                let index = env.scheduler_index(leader).expect("leader is ours");
                env.signal_scheduler(index, "KILL").await;
                env.start_scheduler();
            }
            5 => {
                pg.cut();
                tokio::time::sleep(outage).await;
                pg.restore();
            }
            6 => {
                env.smtp.set_fault(Stage::RcptTo, Fault::Drop);
                tokio::time::sleep(outage).await;
                env.smtp.clear_faults();
            }
            7 => {
                redis.cut();
                tokio::time::sleep(outage).await;
                redis.restore();
            }
            8 => {
                // Consumers paused, so the queue holds messages when purged.
                let paused = [victims[0], victims[1], 2];
                for w in paused {
                    env.signal_worker(w, "STOP").await;
                }
                tokio::time::sleep(outage).await;
                let (conn, channel) = rabbitmq_channel().await;
                let purged = channel
                    .queue_purge(&env.queue, Default::default())
                    .await
                    .expect("purge");
                say(started, &format!("purged {purged} messages"));
                let _ = conn.close(200, "done").await;
                for w in paused {
                    env.signal_worker(w, "CONT").await;
                }
            }
            _ => unreachable!(),
        }
    }
    load.await.expect("load generator");
    let accepted: Vec<Uuid> = accepted.lock().unwrap().clone();
    say(
        started,
        &format!(
            "load done: {} accepted, refused {:?}",
            accepted.len(),
            refused.lock().unwrap()
        ),
    );

    // Everything accepted reaches a final state.
    let settle = Duration::from_secs(240).max(run / 2);
    let finals: BTreeMap<String, i64> =
        eventually("every accepted message final", settle, || async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, count(*) FROM message_records GROUP BY status")
                    .fetch_all(&env.pool)
                    .await
                    .ok()?;
            let open = rows
                .iter()
                .filter(|(s, _)| ["queued", "sending", "scheduled"].contains(&s.as_str()))
                .map(|(_, n)| n)
                .sum::<i64>();
            (open == 0).then(|| rows.into_iter().collect())
        })
        .await;
    // Late copies (a redelivery, a re-publication) would arrive now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_end = (rss_mib(api_pid), rss_mib(steady_pid));

    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    for mail in env.smtp.received() {
        let parsed = mail_parser::MessageParser::default()
            .parse(&mail.data)
            .expect("email");
        let id = parsed
            .message_id()
            .and_then(|m| m.split('@').next())
            .and_then(|m| Uuid::parse_str(m).ok());
        if let Some(id) = id {
            *copies.entry(id).or_default() += 1;
        }
    }
    let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
    let delivered = accepted_set
        .iter()
        .filter(|id| copies.contains_key(id))
        .count();
    let lost = accepted_set.len() - delivered;
    let duplicated: usize = copies.values().map(|n| n - 1).sum();
    // Sends whose answer the client never saw (a timeout during an outage)
    // may still have been recorded and sent: counted, not lost.
    let strangers = copies
        .keys()
        .filter(|id| !accepted_set.contains(id))
        .count();
    say(
        started,
        &format!(
            "accepted {}, delivered {delivered}, lost {lost}, duplicated {duplicated}, \
             final states {finals:?}, delivered without a 202 seen {strangers}; API RSS {:.0} -> {:.0} MiB, worker RSS {:.0} -> {:.0} MiB",
            accepted_set.len(),
            rss_start.0,
            rss_end.0,
            rss_start.1,
            rss_end.1
        ),
    );

    assert!(!accepted.is_empty());
    assert_eq!(lost, 0, "accepted messages never delivered");
    let sent_of_accepted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_records WHERE id = ANY($1) AND status = 'sent'",
    )
    .bind(&accepted)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(sent_of_accepted, accepted_set.len() as i64, "{finals:?}");
    assert!(
        duplicated <= KILLS * IN_FLIGHT,
        "duplicates beyond the sends in flight at a kill -9: {duplicated}"
    );
    // Memory: no growth beyond warm-up plus a fixed allowance.
    for (what, (start, end)) in [
        ("API", (rss_start.0, rss_end.0)),
        ("worker", (rss_start.1, rss_end.1)),
    ] {
        assert!(
            end <= start.max(32.0) * 2.0 + 64.0,
            "{what} RSS grew from {start:.0} to {end:.0} MiB"
        );
    }
    let _ = api.child.start_kill();
}
