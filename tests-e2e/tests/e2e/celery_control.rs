//! `celery inspect` / `celery control` (the real Python CLI) against our
//! workers, over Celery's pidbox. Other tests' workers share the pidbox
//! exchange, so every request names its destination nodes.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use smtp_sink::{Fault, Stage};
use tokio::process::Command;

use crate::python_interop::{python, repo_root};
use crate::support::{eventually, TestEnv, RABBITMQ};

/// Runs `python -m celery -A celery_app <args>` against the test broker.
pub(crate) async fn celery(args: &[&str]) -> Output {
    let python = python().await;
    tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(&python)
            .args(["-m", "celery", "-A", "celery_app"])
            .args(args)
            .current_dir(repo_root().join("tests/python"))
            .env("BROKER_URL", RABBITMQ.replace("%2f", ""))
            .output(),
    )
    .await
    .expect("celery finished in time")
    .expect("run celery")
}

/// `celery inspect|control <command> -d <nodes> --json`: the replies by
/// node, or `None` when no node replied in time.
pub(crate) async fn ask(
    kind: &str,
    command: &str,
    nodes: &[&str],
) -> Option<serde_json::Map<String, Value>> {
    ask_with(kind, command, &[], nodes).await
}

/// [`ask`] with the command's own arguments (`rate_limit <task> <rate>`).
pub(crate) async fn ask_with(
    kind: &str,
    command: &str,
    args: &[&str],
    nodes: &[&str],
) -> Option<serde_json::Map<String, Value>> {
    let destination = nodes.join(",");
    let mut argv = vec![kind, command];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-d", &destination, "-t", "2", "--json"]);
    let out = celery(&argv).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return None;
    }
    // inspect prints `{node: reply}`, control a list of such objects.
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(['{', '[']))?;
    match serde_json::from_str(line) {
        Ok(Value::Object(map)) => Some(map),
        Ok(Value::Array(replies)) => Some(
            replies
                .into_iter()
                .filter_map(|r| match r {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .flatten()
                .collect(),
        ),
        _ => None,
    }
}

/// Every listed node's reply, retried until all answered (workers need a
/// moment to connect and declare their pidbox queue).
pub(crate) async fn ask_all(
    kind: &str,
    command: &str,
    nodes: &[&str],
) -> serde_json::Map<String, Value> {
    ask_all_with(kind, command, &[], nodes).await
}

/// [`ask_all`] with the command's own arguments.
pub(crate) async fn ask_all_with(
    kind: &str,
    command: &str,
    args: &[&str],
    nodes: &[&str],
) -> serde_json::Map<String, Value> {
    eventually(
        &format!("{kind} {command} {args:?} answered by {nodes:?}"),
        Duration::from_secs(60),
        || async {
            let replies = ask_with(kind, command, args, nodes).await?;
            nodes
                .iter()
                .all(|n| replies.contains_key(*n))
                .then_some(replies)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_inspect_and_control_reach_our_workers() {
    // The SMTP timeout outlasts the 8 s stall below, which keeps a send
    // active while it is inspected.
    let (mut env, token) = TestEnv::sending(&[("EMAIL_TIMEOUT", "15")], 100).await;
    env.start_worker();
    let w0 = format!("worker0@{}", env.queue);
    let w1 = format!("worker1@{}", env.queue);
    let both = [w0.as_str(), w1.as_str()];

    // ping: both reply, each with its node name.
    let pongs = ask_all("inspect", "ping", &both).await;
    assert_eq!(pongs.len(), 2, "{pongs:?}");
    for node in both {
        assert_eq!(pongs[node], serde_json::json!({"ok": "pong"}));
    }

    // Each node replies exactly once (a raw broadcast lists every reply).
    let script = format!(
        "import json; from celery_app import app; \
         print(json.dumps(app.control.broadcast('ping', reply=True, timeout=2, destination={both:?})))"
    );
    let python = python().await;
    let out = Command::new(&python)
        .args(["-c", &script])
        .current_dir(repo_root().join("tests/python"))
        .env("BROKER_URL", RABBITMQ.replace("%2f", ""))
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&out.stdout).expect("broadcast replies");
    let mut nodes: Vec<&String> = replies.iter().flat_map(|r| r.keys()).collect();
    nodes.sort();
    assert_eq!(nodes, [&w0, &w1], "{replies:?}");

    // A request for one node is answered by that node only.
    let only = ask_all("inspect", "ping", &[&w0]).await;
    assert_eq!(only.keys().collect::<Vec<_>>(), [&w0]);

    let registered = ask_all("inspect", "registered", &[&w0]).await;
    assert_eq!(
        registered[&w0],
        serde_json::json!([
            platform::tasks::SEND_EMAIL,
            platform::tasks::SEND_EMAIL_BATCH
        ])
    );

    // active: a send held up by a slow SMTP server is listed while it runs.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(8)));
    let id = env.api().send_simple(&token, "slow@example.org").await;
    let running = eventually(
        "the send listed as active",
        Duration::from_secs(30),
        || async {
            let replies = ask("inspect", "active", &both).await?;
            replies.iter().find_map(|(node, tasks)| {
                tasks.as_array()?.iter().find_map(|t| {
                    (t["kwargs"]["message_id"] == id.to_string()).then(|| (node.clone(), t.clone()))
                })
            })
        },
    )
    .await;
    let (node, task) = running;
    assert!(both.contains(&node.as_str()));
    assert_eq!(task["name"], platform::tasks::SEND_EMAIL);
    assert_eq!(task["hostname"], node.as_str());
    assert!(task["time_start"].as_f64().is_some());
    assert!(task["worker_pid"].as_u64().is_some());
    // Meanwhile its Celery result says STARTED.
    let task_id = task["id"].as_str().expect("task id");
    let stored = env
        .api()
        .state
        .results
        .fetch(task_id)
        .await
        .unwrap()
        .expect("a stored result");
    assert_eq!(stored["status"], "STARTED", "{stored}");
    // query_task: the worker running it says so; the other holds nothing.
    let queried = ask_all_with("inspect", "query_task", &[task_id], &both).await;
    assert_eq!(queried[&node][task_id][0], "active", "{queried:?}");
    assert_eq!(queried[&node][task_id][1]["id"], task_id);
    let other = both.iter().find(|n| **n != node).expect("the other node");
    assert_eq!(queried[*other], serde_json::json!({}));
    env.wait_status(id, "sent", Duration::from_secs(30)).await;

    // stats: counts the task processed, with pool and broker facts.
    let stats = ask_all("inspect", "stats", &[&node]).await;
    let stats = &stats[&node];
    assert!(stats["pid"].as_u64().is_some(), "{stats}");
    assert_eq!(stats["total"][platform::tasks::SEND_EMAIL], 1, "{stats}");
    assert_eq!(stats["pool"]["max-concurrency"], 4);
    assert_eq!(stats["broker"]["hostname"], "127.0.0.1");
    assert!(stats["uptime"].as_u64().is_some());

    // control shutdown: that worker stops gracefully; the other still answers.
    let ack = ask_all("control", "shutdown", &[&w1]).await;
    assert!(ack.contains_key(&w1));
    let status = env.wait_worker(1, Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}");
    let pongs = ask_all("inspect", "ping", &[&w0]).await;
    assert_eq!(pongs[&w0], serde_json::json!({"ok": "pong"}));
}

/// `celery control revoke` reaches a send that has not run yet: it never
/// runs, its result is REVOKED and its record cancelled with the reason;
/// the revoke outlives the worker that received it and binds a worker
/// started afterwards; `inspect revoked` lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_from_the_celery_cli_outlives_its_worker_and_cancels_the_send() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.start_worker();
    let w0 = format!("worker0@{}", env.queue);
    ask_all("inspect", "ping", &[&w0]).await;
    // No account yet: the send waits (re-published every QUOTA_WAIT_SECONDS).
    let id = env.api().send_simple(&token, "revoked@example.org").await;
    let task_id: String = sqlx::query_scalar("SELECT task_id FROM message_records WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();

    let out = celery(&[
        "control", "revoke", &task_id, "-d", &w0, "-t", "5", "--json",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("tasks {{'{task_id}'}} flagged as revoked")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = ask_all("inspect", "revoked", &[&w0]).await;
    assert_eq!(revoked[&w0], serde_json::json!([task_id]), "{revoked:?}");

    // The worker that received the revoke stops; one started afterwards
    // enforces it once an account could send the email.
    let ack = ask_all("control", "shutdown", &[&w0]).await;
    assert!(ack.contains_key(&w0));
    assert!(env.wait_worker(0, Duration::from_secs(40)).await.success());
    env.start_worker();
    env.api()
        .add_account(&token, env.smtp.port(), "sender@example.com", 100, 0)
        .await;
    env.wait_status(id, "cancelled", Duration::from_secs(30))
        .await;
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM message_records WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(error.as_deref(), Some("task revoked before it ran"));
    let stored = env
        .api()
        .state
        .results
        .fetch(&task_id)
        .await
        .unwrap()
        .expect("a stored result");
    assert_eq!(stored["status"], "REVOKED", "{stored}");
    assert_eq!(stored["result"]["exc_type"], "TaskRevokedError", "{stored}");
    // And nothing went out, even with an account ready.
    let later = env.api().send_simple(&token, "after@example.org").await;
    env.wait_status(later, "sent", Duration::from_secs(30))
        .await;
    assert_eq!(env.smtp.count(), 1);
}
