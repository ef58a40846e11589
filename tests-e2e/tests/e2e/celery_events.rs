//! Celery events for Flower: a real Flower (the pinned `flower` package)
//! follows our worker's events on `celeryev` and shows it online, its
//! tasks with their states, and offline once it stops.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use smtp_sink::Fault;
use tokio::process::Command;

use crate::celery_control::celery;
use crate::python_interop::{python, repo_root};
use crate::support::{eventually, TestEnv, RABBITMQ};

async fn send(env: &TestEnv, token: &str, to: &str) -> String {
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            token,
            &json!({"to": to, "subject": "Events", "content": "<p>Hi</p>"}),
        )
        .await;
    res.body["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    let res = client.get(url).send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.json().await.ok()
}

/// A real Flower on a free loopback port, following `celeryev`; returns
/// it with its base URL.
async fn start_flower(python: &std::path::Path) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // --enable_events=False: Flower must not switch on the events of the
    // other tests' workers sharing this broker; ours sends them on its own.
    let flower = Command::new(python)
        .args(["-m", "celery", "-A", "celery_app", "flower"])
        .arg(format!("--port={port}"))
        .args(["--address=127.0.0.1", "--enable_events=False"])
        .current_dir(repo_root().join("tests/python"))
        .env("BROKER_URL", RABBITMQ.replace("%2f", ""))
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start flower");
    (flower, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_shows_our_worker_and_task_states_from_events() {
    let python = python().await;
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100).await;
    env.smtp.set_recipient_fault(
        "refused@example.org",
        Fault::Reply(550, "no such user".into()),
    );
    env.smtp.set_recipient_fault(
        "later@example.org",
        Fault::Reply(451, "try again later".into()),
    );
    env.start_worker_with(&[("CELERY_SEND_EVENTS", "true")]);
    let node = format!("worker0@{}", env.queue);
    // The second worker sends events only once told to over remote control.
    env.start_worker();
    let other = format!("worker1@{}", env.queue);

    let (mut flower, base) = start_flower(&python).await;
    let client = reqwest::Client::new();

    // Online: Flower saw worker-online / worker-heartbeat events.
    let workers_url = format!("{base}/api/workers?status=true");
    eventually(
        "Flower lists our worker online",
        Duration::from_secs(60),
        || async {
            let workers = get_json(&client, &workers_url).await?;
            (workers[&node] == true).then_some(())
        },
    )
    .await;
    eventually(
        "enable_events answered by worker1",
        Duration::from_secs(60),
        || async {
            let out = celery(&[
                "control",
                "enable_events",
                "-d",
                &other,
                "-t",
                "2",
                "--json",
            ])
            .await;
            (out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&other))
                .then_some(())
        },
    )
    .await;
    eventually(
        "Flower lists worker1 online",
        Duration::from_secs(30),
        || async {
            let workers = get_json(&client, &workers_url).await?;
            (workers[&other] == true).then_some(())
        },
    )
    .await;

    let ok = send(&env, &token, "ok@example.org").await;
    let refused = send(&env, &token, "refused@example.org").await;
    let later = send(&env, &token, "later@example.org").await;
    let task = |id: String| {
        let url = format!("{base}/api/task/info/{id}");
        let client = client.clone();
        async move { get_json(&client, &url).await }
    };
    let succeeded = eventually(
        "the sent task SUCCESS in Flower",
        Duration::from_secs(60),
        || {
            let t = task(ok.clone());
            async move { t.await.filter(|t| t["state"] == "SUCCESS") }
        },
    )
    .await;
    assert_eq!(succeeded["name"], platform::tasks::SEND_EMAIL);
    assert!(
        [node.as_str(), other.as_str()].contains(&succeeded["worker"].as_str().unwrap_or("")),
        "{succeeded}"
    );
    assert!(succeeded["runtime"].as_f64().is_some(), "{succeeded}");
    assert!(succeeded["received"].as_f64().is_some(), "{succeeded}");
    assert!(succeeded["started"].as_f64().is_some(), "{succeeded}");
    assert!(
        succeeded["result"].as_str().unwrap_or("").contains("sent"),
        "{succeeded}"
    );

    let failed = eventually(
        "the refused task FAILURE in Flower",
        Duration::from_secs(60),
        || {
            let t = task(refused.clone());
            async move { t.await.filter(|t| t["state"] == "FAILURE") }
        },
    )
    .await;
    assert!(
        failed["exception"]
            .as_str()
            .unwrap_or("")
            .contains("EmailDeliveryError"),
        "{failed}"
    );

    // A 4xx reply: task-retried, then the retry succeeds.
    eventually(
        "the 4xx task RETRY in Flower",
        Duration::from_secs(60),
        || {
            let t = task(later.clone());
            async move { t.await.filter(|t| t["state"] == "RETRY") }
        },
    )
    .await;
    env.smtp.clear_faults();
    eventually(
        "the retried task SUCCESS in Flower",
        Duration::from_secs(60),
        || {
            let t = task(later.clone());
            async move { t.await.filter(|t| t["state"] == "SUCCESS") }
        },
    )
    .await;

    // Offline: a graceful stop sends worker-offline.
    env.signal_worker(0, "TERM").await;
    env.wait_worker(0, Duration::from_secs(40)).await;
    eventually(
        "Flower shows our worker offline",
        Duration::from_secs(30),
        || async {
            let workers = get_json(&client, &workers_url).await?;
            (workers[&node] == false).then_some(())
        },
    )
    .await;

    let _ = flower.start_kill();
    let _ = flower.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_shows_api_sends_as_sent_then_succeeded_and_revoked_and_rejected_tasks() {
    let python = python().await;
    // The API's outbox relay announces what it publishes (task-sent).
    let mut env = TestEnv::with_vars(&[("CELERY_TASK_SEND_SENT_EVENT", "true")]).await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100).await;
    let (mut flower, base) = start_flower(&python).await;
    let client = reqwest::Client::new();
    let task = |id: &str| {
        let url = format!("{base}/api/task/info/{id}");
        let client = client.clone();
        async move { get_json(&client, &url).await }
    };
    // No worker runs yet, so a send waits, announced but not received.
    // Flower sees only the events published once it listens: sends go on
    // until it shows one.
    let (sent, pending) = eventually(
        "a send PENDING in Flower (task-sent)",
        Duration::from_secs(90),
        || async {
            let id = send(&env, &token, "sent@example.org").await;
            for _ in 0..10 {
                if let Some(t) = task(&id).await.filter(|t| t["state"] == "PENDING") {
                    return Some((id, t));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            None
        },
    )
    .await;
    assert_eq!(pending["name"], platform::tasks::SEND_EMAIL, "{pending}");
    assert!(pending["sent"].as_f64().is_some(), "{pending}");
    assert!(pending["received"].is_null(), "{pending}");
    let client_name = pending["client"].as_str().unwrap_or("").to_string();
    assert!(client_name.starts_with("gen"), "{pending}");

    env.start_worker_with(&[("CELERY_SEND_EVENTS", "true")]);
    let succeeded = eventually(
        "the send SUCCESS in Flower",
        Duration::from_secs(60),
        || {
            let t = task(&sent);
            async move { t.await.filter(|t| t["state"] == "SUCCESS") }
        },
    )
    .await;
    let at = |field: &str| {
        succeeded[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}: {succeeded}"))
    };
    assert!(
        at("sent") <= at("received") && at("received") <= at("succeeded"),
        "{succeeded}"
    );
    assert_eq!(succeeded["client"], client_name.as_str(), "{succeeded}");

    // Revoked while it waits for its countdown: task-revoked.
    let revoked = crate::python_interop::producer(&env, "revoke", "revoked@example.org", &[]).await;
    assert_eq!(revoked["state"], "REVOKED", "{revoked}");
    let revoked_id = revoked["task_id"].as_str().unwrap().to_string();
    let shown = eventually(
        "the revoked task REVOKED in Flower",
        Duration::from_secs(30),
        || {
            let t = task(&revoked_id);
            async move { t.await.filter(|t| t["state"] == "REVOKED") }
        },
    )
    .await;
    assert!(shown["revoked"].as_f64().is_some(), "{shown}");

    // A task this worker does not run: dead-lettered, task-rejected.
    let rejected = uuid::Uuid::new_v4().to_string();
    let unknown = platform::celery::TaskMessage::new(
        "app.tasks.not_ours",
        &rejected,
        vec![],
        serde_json::Map::new(),
    );
    crate::support::publish_tasks(&env.queue, &[unknown]).await;
    let shown = eventually(
        "the unknown task REJECTED in Flower",
        Duration::from_secs(30),
        || {
            let t = task(&rejected);
            async move { t.await.filter(|t| t["state"] == "REJECTED") }
        },
    )
    .await;
    assert!(shown["rejected"].as_f64().is_some(), "{shown}");

    let _ = flower.start_kill();
    let _ = flower.wait().await;
}
