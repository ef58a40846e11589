//! A three-node RabbitMQ cluster with quorum queues
//! (`scripts/rabbitmq-cluster.sh`, started here when it is not running):
//! during a steady send, the node the worker consumes from stops, and then
//! the node the API's outbox relay publishes to. Both reconnect to a
//! surviving node, and every accepted message is delivered exactly once.
//! Prints what each node loss cost: the longest gap in deliveries and the
//! longest time from acceptance to delivery around it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Command;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

/// The cluster's nodes: notify-rmqN@localhost, AMQP on 5680 + N.
const NODES: [u16; 3] = [1, 2, 3];
/// Interval of the steady send (40 a second).
const SEND_EVERY: Duration = Duration::from_millis(25);
/// How long the send runs on after a node loss, once both the worker and
/// the relay are connected again.
const AFTER_LOSS: Duration = Duration::from_secs(5);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("scripts/rabbitmq-cluster.sh")
}

/// Runs the cluster script. It takes a lock of its own, so test processes
/// that call it at once (`start` is idempotent) run one after the other.
async fn cluster(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(400),
        Command::new("bash")
            .arg(script())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("rabbitmq-cluster.sh finished in time")
    .expect("run rabbitmq-cluster.sh");
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Brings stopped nodes back however the test ends, so the cluster is
/// whole for the next run.
struct RestoreCluster;

impl Drop for RestoreCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("bash")
                .arg(script())
                .arg("start")
                .status();
        }
    }
}

/// The node (1-3) holding the connection whose client-provided name is
/// `name`, asked of the first node that answers (each lists the whole
/// cluster's connections, with the AMQP port they came in on).
async fn node_holding(name: &str) -> Option<u16> {
    let quoted = format!("\"{name}\"");
    for n in NODES {
        // A frozen node answers nothing: bounded, then the next node.
        let asked = Command::new("bash")
            .arg(script())
            .args(["ctl", &n.to_string(), "-s", "-t", "10", "list_connections"])
            .args(["port", "client_properties"])
            .kill_on_drop(true)
            .output();
        let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(15), asked).await else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|line| line.contains(&quoted))
            .and_then(|line| line.split_whitespace().next()?.parse::<u16>().ok())
            .and_then(|port| port.checked_sub(5680))
            .filter(|node| NODES.contains(node));
    }
    None
}

/// How a node is lost, from E2E_CLUSTER_LOSS: `stop` (graceful: clients
/// are told; the default), `kill` (kill -9 of its VM: the kernel closes its
/// sockets) or `freeze` (SIGSTOP: a hung host whose connections stay open
/// and silent, noticed only by heartbeats).
fn loss_command() -> &'static str {
    match std::env::var("E2E_CLUSTER_LOSS").as_deref() {
        Ok("kill") => "kill-node",
        Ok("freeze") => "freeze-node",
        _ => "stop-node",
    }
}

/// One node loss, as the test saw it.
struct Loss {
    what: &'static str,
    node: u16,
    /// When the stop was asked for, on the test's clock and the database's.
    at: Instant,
    at_db: DateTime<Utc>,
    /// How long the graceful stop took.
    stop_took: Duration,
    /// When the connection was seen on another node (`rabbitmqctl` takes a
    /// second or two per look, so this is an upper bound).
    moved_to: u16,
    moved_after: Duration,
}

async fn db_now(env: &TestEnv) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(&env.pool)
        .await
        .expect("database clock")
}

/// Stops the node holding the connection `name`, and waits for that
/// connection to come back on another node.
async fn lose_node_of(env: &TestEnv, what: &'static str, name: &str) -> Loss {
    let node = eventually(
        &format!("the {what}'s connection on a cluster node"),
        Duration::from_secs(60),
        || node_holding(name),
    )
    .await;
    let at_db = db_now(env).await;
    let at = Instant::now();
    cluster(&[loss_command(), &node.to_string()]).await;
    let stop_took = at.elapsed();
    let moved_to = eventually(
        &format!("the {what} to reconnect to a surviving node"),
        Duration::from_secs(90),
        || async { node_holding(name).await.filter(|n| *n != node) },
    )
    .await;
    // As it happens, so that a run that fails later still tells this much.
    println!(
        "{} notify-rmq{node} ({what}'s node); {what} on notify-rmq{moved_to} after {:.1?}",
        loss_command(),
        at.elapsed()
    );
    Loss {
        what,
        node,
        at,
        at_db,
        stop_took,
        moved_to,
        moved_after: at.elapsed(),
    }
}

/// The longest time without a delivery from `from` over the following
/// `window`, given the times deliveries were seen.
fn longest_gap(deliveries: &[Instant], from: Instant, window: Duration) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &t in deliveries
        .iter()
        .filter(|t| **t > from && **t <= from + window)
    {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// The longest acceptance-to-delivery time of the messages accepted
/// between `from` and `to` (database clock).
async fn longest_latency(env: &TestEnv, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    let ms: Option<f64> = sqlx::query_scalar(
        "SELECT max(extract(epoch FROM sent_at - created_at) * 1000)::float8
           FROM message_records WHERE created_at BETWEEN $1 AND $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&env.pool)
    .await
    .expect("latency");
    Duration::from_millis(ms.unwrap_or(0.0) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_workers_node_then_the_publishers_node_loses_and_duplicates_nothing() {
    cluster(&["start"]).await;
    let _restore = RestoreCluster;
    let urls = cluster(&["urls"]).await;
    let mut env = TestEnv::with_vars(&[
        ("CELERY_QUEUE_TYPE", "quorum"),
        ("CELERY_BROKER_URL", urls.trim()),
    ])
    .await;
    env.start_api().await;
    env.start_worker();
    let token = env.api().admin_token(&env.pool).await;
    env.add_sender(&token, 1_000_000).await;
    let first = env
        .send_until(&token, "first@example.org", "sent", Duration::from_secs(60))
        .await;

    let worker_connection = format!("worker0@{}", env.queue);
    let relay_connection = format!("notify-outbox-relay/{}", std::process::id());
    let accepted: Mutex<Vec<Uuid>> = Mutex::new(vec![first]);
    let refused: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let stop_sending = CancellationToken::new();
    let sending_done = CancellationToken::new();
    let all_delivered = CancellationToken::new();
    let started = Instant::now();

    // A steady stream of sends through the API, from start to finish.
    let sender = async {
        let mut ticks = tokio::time::interval(SEND_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut n = 0;
        while !stop_sending.is_cancelled() {
            ticks.tick().await;
            let res = env
                .api()
                .post(
                    "/api/v1/messages/email/send",
                    &token,
                    &json!({"to": format!("steady{n}@example.org"), "subject": "Steady",
                            "content": "<p>steady</p>"}),
                )
                .await;
            n += 1;
            match res.body["data"]["message_id"].as_str() {
                Some(id) if res.status == StatusCode::ACCEPTED => accepted
                    .lock()
                    .unwrap()
                    .push(id.parse().expect("message id")),
                _ => refused
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", res.status, res.body)),
            }
        }
        sending_done.cancel();
    };

    // When deliveries arrive at the SMTP server.
    let deliveries = async {
        let mut seen = env.smtp.count();
        let mut times = Vec::new();
        while !all_delivered.is_cancelled() {
            let now = env.smtp.count();
            if now > seen {
                times.push(Instant::now());
                seen = now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times
    };

    // The faults: the worker's node, then (with the first back) the relay's.
    let driver = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let worker_loss = lose_node_of(&env, "worker", &worker_connection).await;
        tokio::time::sleep(AFTER_LOSS).await;
        // Back to three nodes before the next loss: a quorum queue needs a
        // majority of its replicas, and two of three down is not one.
        cluster(&["start"]).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let relay_loss = lose_node_of(&env, "outbox relay", &relay_connection).await;
        tokio::time::sleep(AFTER_LOSS).await;
        stop_sending.cancel();
        sending_done.cancelled().await;
        eventually(
            "every accepted message to be sent",
            Duration::from_secs(180),
            || async {
                let pending: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM message_records WHERE status <> 'sent'",
                )
                .fetch_one(&env.pool)
                .await
                .expect("count pending");
                (pending == 0).then_some(())
            },
        )
        .await;
        // Late duplicates would arrive within moments of the last send.
        tokio::time::sleep(Duration::from_secs(2)).await;
        all_delivered.cancel();
        cluster(&["start"]).await;
        [worker_loss, relay_loss]
    };

    let ((), times, losses) = tokio::join!(sender, deliveries, driver);
    let accepted = accepted.into_inner().unwrap();
    let refused = refused.into_inner().unwrap();

    // What each loss cost.
    let baseline = longest_gap(&times, started, losses[0].at - started);
    println!(
        "cluster run: {} messages accepted over {:.0?}, longest gap between deliveries before any loss {:.0?}",
        accepted.len(),
        started.elapsed(),
        baseline
    );
    for (i, loss) in losses.iter().enumerate() {
        // Up to the next loss, so that one loss's pause is not counted twice.
        let window = losses
            .get(i + 1)
            .map_or(Duration::from_secs(30), |next| next.at - loss.at);
        let gap = longest_gap(&times, loss.at, window);
        let latency = longest_latency(
            &env,
            loss.at_db - chrono::Duration::seconds(1),
            loss.at_db + chrono::Duration::seconds(10),
        )
        .await;
        println!(
            "{} notify-rmq{} ({}'s node), took {:.1?}; {} seen on notify-rmq{} within {:.1?}; \
             longest gap between deliveries {:.2?}; longest accept-to-delivery of messages accepted around it {:.2?}",
            loss_command(), loss.node, loss.what, loss.stop_took, loss.what, loss.moved_to, loss.moved_after, gap, latency
        );
    }

    assert!(
        refused.is_empty(),
        "the API accepts sends whatever the broker does: {refused:?}"
    );
    let received = env.received_per_message_id();
    let missing: Vec<&Uuid> = accepted
        .iter()
        .filter(|id| !received.contains_key(&format!("{}@example.com", id.simple())))
        .collect();
    let twice: Vec<(&String, &usize)> = received.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "cluster run: {} accepted, {} emails received, {} missing, {} Message-IDs received more than once",
        accepted.len(),
        received.values().sum::<usize>(),
        missing.len(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?}"
    );
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(received.len(), accepted.len(), "nothing but the accepted");
}
