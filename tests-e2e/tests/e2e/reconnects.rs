//! The worker after its broker connection goes: it resumes consuming within
//! seconds, whether the broker went away and came back, the connection went
//! silent (Celery's most reported failure: a worker connected but idle), or
//! the broker closed it. Faults go through a proxy owned by the test, or
//! close the test worker's own connection; the shared RabbitMQ stays up.

use std::time::{Duration, Instant};

use tokio::process::Command;
use uuid::Uuid;

use crate::celery_control::ask_all;
use crate::support::proxy::TcpProxy;
use crate::support::{eventually, TestEnv};

/// An API and one worker (heartbeat `heartbeat` seconds) that reaches
/// RabbitMQ only through the returned proxy; the API publishes directly.
async fn worker_behind_proxy(heartbeat: &str) -> (TestEnv, String, TcpProxy) {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 1000).await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.start_worker_with(&[
        ("CELERY_BROKER_URL", url.as_str()),
        ("RABBITMQ_HEARTBEAT", heartbeat),
    ]);
    env.send_until(
        &token,
        "before@example.org",
        "sent",
        Duration::from_secs(30),
    )
    .await;
    (env, token, proxy)
}

async fn send(env: &TestEnv, token: &str, prefix: &str, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(
            env.api()
                .send_simple(token, &format!("{prefix}{i}@example.org"))
                .await,
        );
    }
    ids
}

/// Waits until every message is sent; returns how long that took.
async fn all_sent(env: &TestEnv, ids: &[Uuid], within: Duration) -> Duration {
    let start = Instant::now();
    for id in ids {
        env.wait_status(*id, "sent", within.saturating_sub(start.elapsed()))
            .await;
    }
    start.elapsed()
}

/// Every message reached the SMTP server exactly once.
async fn each_once(env: &TestEnv, expected: usize) {
    // A duplicate would arrive within moments of the original.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copies = env.received_per_message_id();
    assert_eq!(copies.len(), expected, "{copies:?}");
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_resumes_within_seconds_when_the_broker_comes_back() {
    let (env, token, proxy) = worker_behind_proxy("10").await;
    let node = format!("worker0@{}", env.queue);

    proxy.cut();
    let ids = send(&env, &token, "during", 5).await;
    // While the worker cannot reach the broker, nothing is sent; the
    // messages wait in their queue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.smtp.received().len(), 1);

    proxy.restore();
    let resumed = all_sent(&env, &ids, Duration::from_secs(10)).await;
    println!("the worker resumed sending {resumed:?} after the broker came back");
    // Its remote control is back too: `celery inspect ping` answers.
    let replies = ask_all("inspect", "ping", &[&node]).await;
    assert_eq!(replies[&node], serde_json::json!({"ok": "pong"}));
    each_once(&env, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_noticed_by_heartbeats_and_replaced() {
    // Heartbeats every 2 s: a silent connection is given up after two
    // missed intervals, and RabbitMQ gives up its side as quickly.
    let (env, token, proxy) = worker_behind_proxy("2").await;
    let connections = proxy.accepted();

    proxy.freeze();
    let ids = send(&env, &token, "silent", 5).await;
    let resumed = all_sent(&env, &ids, Duration::from_secs(20)).await;
    println!("sending resumed {resumed:?} after the worker's connection went silent");
    assert!(
        proxy.accepted() > connections,
        "the worker opened a new connection"
    );
    each_once(&env, 6).await;
}

/// The Erlang process id RabbitMQ gives the connection whose client calls
/// itself `name`: what `rabbitmqctl close_connection` takes.
async fn connection_named(name: &str) -> Option<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .await
        .ok()?;
    // Lines of `<pid>\t[{"product","…"},{"connection_name","<name>"},…]`.
    let wanted = format!("{{\"connection_name\",\"{name}\"}}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.contains(&wanted))
        .and_then(|line| line.split('\t').next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_broker_closes_is_reopened() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 1000).await;
    env.start_worker();
    env.send_until(
        &token,
        "before@example.org",
        "sent",
        Duration::from_secs(30),
    )
    .await;
    let node = format!("worker0@{}", env.queue);
    let closed = eventually(
        "the worker's connection listed by rabbitmqctl",
        Duration::from_secs(30),
        || connection_named(&node),
    )
    .await;

    let out = Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &closed, "closed by a test"])
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(out.status.success(), "{out:?}");

    let reopened = eventually(
        "the worker to open a new connection",
        Duration::from_secs(10),
        || async { connection_named(&node).await.filter(|c| *c != closed) },
    )
    .await;
    assert_ne!(reopened, closed);
    let ids = send(&env, &token, "after", 5).await;
    let took = all_sent(&env, &ids, Duration::from_secs(10)).await;
    println!("sends after the broker closed the connection took {took:?}");
    each_once(&env, 6).await;
}
