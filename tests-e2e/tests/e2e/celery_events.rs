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

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // --enable_events=False: Flower must not switch on the events of the
    // other tests' workers sharing this broker; ours sends them on its own.
    let mut flower = Command::new(&python)
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
    let base = format!("http://127.0.0.1:{port}");
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
