//! Celery's canvas with our worker: chains, `link`/`link_error`, groups
//! and chords of `notifications.send_email` from a real Python producer
//! (tests/python/canvas.py); the Python steps are run by a real Python
//! Celery worker of the test's own (tests/python/canvas_tasks.py).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::python_interop::{python, repo_root, run_script};
use crate::support::{TestEnv, RABBITMQ, REDIS_RESULTS};

/// The test's Python Celery worker, consuming its own queue; killed when
/// dropped.
struct PythonWorker {
    _child: tokio::process::Child,
}

impl PythonWorker {
    fn start(python: &Path, queue: &str, concurrency: usize) -> PythonWorker {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "celery", "-A", "canvas_tasks", "worker", "-Q", queue])
            .args(["-c", &concurrency.to_string(), "-P", "threads"])
            .args(["-n", &format!("canvas@{queue}")])
            .args([
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-l",
                "warning",
            ])
            .current_dir(repo_root().join("tests/python"))
            .env("BROKER_URL", RABBITMQ)
            .env("RESULT_BACKEND", REDIS_RESULTS)
            .env("PY_QUEUE", queue)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if std::env::var("E2E_QUIET").is_ok() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        PythonWorker {
            _child: cmd.spawn().expect("start the Python Celery worker"),
        }
    }
}

struct Canvas {
    env: TestEnv,
    python: std::path::PathBuf,
    py_queue: String,
    _worker: PythonWorker,
}

/// Our worker (signatures without a queue go to the Python worker's queue)
/// with one SMTP account, and the Python worker; `concurrency` for both.
async fn canvas(concurrency: usize) -> Canvas {
    let python = python().await;
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100).await;
    env.smtp.set_recipient_fault(
        "refused@example.org",
        smtp_sink::Fault::Reply(550, "no such user".into()),
    );
    let py_queue = format!("{}.py", env.queue);
    env.extra_queues.push(py_queue.clone());
    env.start_worker_with(&[
        ("CELERY_CANVAS_DEFAULT_QUEUE", &py_queue),
        ("CELERY_WORKER_CONCURRENCY", &concurrency.to_string()),
    ]);
    let worker = PythonWorker::start(&python, &py_queue, concurrency);
    Canvas {
        env,
        python,
        py_queue,
        _worker: worker,
    }
}

impl Canvas {
    async fn run(&self, mode: &str, to: &str) -> Value {
        run_script(
            &self.python,
            &self.env,
            "canvas.py",
            &[("MODE", mode), ("TO", to), ("PY_QUEUE", &self.py_queue)],
            Duration::from_secs(120),
        )
        .await
    }

    /// The task id our worker recorded each recipient's message under.
    async fn task_of(&self, to: &str) -> (String, String) {
        sqlx::query_as("SELECT task_id, id::text FROM message_records WHERE $1 = ANY(to_addrs)")
            .bind(to)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }
}

fn calls<'a>(report: &'a Value, tag: &str) -> Vec<&'a Value> {
    report["calls"]
        .as_array()
        .map(|calls| calls.iter().filter(|c| c["tag"] == tag).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_the_python_step_after_our_send_with_its_result() {
    let c = canvas(1).await;
    let report = c.run("chain", "chain@example.org").await;
    // The chain's result is the Python step's, called with ours first.
    assert_eq!(report["first"]["status"], "sent", "{report}");
    assert_eq!(report["value"]["tag"], "chain", "{report}");
    assert_eq!(report["value"]["follow_up_of"], report["first"], "{report}");
    let step = calls(&report, "chain");
    assert_eq!(step.len(), 1, "{report}");
    // The ids the chain froze, and the workflow's ids as Celery sets them.
    assert_eq!(step[0]["id"], report["last_id"], "{report}");
    assert_eq!(step[0]["parent_id"], report["first_id"], "{report}");
    assert_eq!(step[0]["root_id"], report["first_id"], "{report}");
    // Our send's result names the step it applied as its child.
    assert_eq!(
        report["first_children"],
        serde_json::json!([report["last_id"]]),
        "{report}"
    );
    assert_eq!(
        c.env.smtp.wait_for(1, Duration::from_secs(10)).await.len(),
        1
    );

    // The first task again, as a redelivery or a duplicate would bring it:
    // its outcome is recorded, nothing is sent and nothing follows again.
    // Both workers run one task at a time, in order: once a later chain
    // has finished, the duplicate's step would have run before it.
    let first_id = report["first_id"].as_str().unwrap();
    let mut duplicate = platform::celery::TaskMessage::new(
        "notifications.send_email",
        first_id,
        Vec::new(),
        serde_json::json!({"to": "chain@example.org", "subject": "chain step 1", "content": "<p>canvas</p>"})
            .as_object()
            .cloned()
            .unwrap(),
    );
    duplicate.embed["chain"] = serde_json::json!([{
        "task": "canvas.follow_up", "args": [], "kwargs": {"tag": "chain"},
        "options": {"queue": c.py_queue, "task_id": report["last_id"]},
        "subtask_type": null, "immutable": false,
    }]);
    crate::support::publish_tasks(&c.env.queue, &[duplicate]).await;
    let again = c.run("chain", "chain2@example.org").await;
    assert_eq!(again["value"]["tag"], "chain", "{again}");
    let steps: Vec<&Value> = calls(&again, "chain");
    let ids: Vec<&Value> = steps.iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, [&report["last_id"], &again["last_id"]], "{again}");
    assert_eq!(c.env.smtp.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_runs_after_a_send_and_link_error_after_a_final_rejection() {
    let c = canvas(2).await;
    let report = c.run("link", "linked@example.org").await;
    assert_eq!(report["ok"]["status"], "sent", "{report}");
    assert_eq!(report["bad"]["exc_type"], "EmailDeliveryError", "{report}");
    // The link got the send's result; it had no queue of its own and went
    // to CELERY_CANVAS_DEFAULT_QUEUE.
    let link = calls(&report, "link");
    assert_eq!(link.len(), 1, "{report}");
    assert_eq!(link[0]["arg"], report["ok"], "{report}");
    assert_eq!(link[0]["parent_id"], report["ok_id"], "{report}");
    // The errback got the failed task's id (Celery's call for an errback
    // its worker does not have), as a group of one.
    let error = calls(&report, "error");
    assert_eq!(error.len(), 1, "{report}");
    assert_eq!(error[0]["arg"], report["bad_id"], "{report}");
    assert_eq!(error[0]["parent_id"], report["bad_id"], "{report}");
    assert!(error[0]["group"].is_string(), "{report}");
    // Neither ran for the other outcome.
    assert!(calls(&report, "error-of-ok").is_empty(), "{report}");
    assert!(calls(&report, "link-of-bad").is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_sends_gets_its_results_in_order_and_restores() {
    let c = canvas(2).await;
    let report = c.run("group", "grouped@example.org").await;
    let values = report["values"].as_array().expect("values");
    assert_eq!(values.len(), 3, "{report}");
    assert_eq!(report["restored_ids"], report["ids"], "{report}");
    assert_eq!(report["restored_values"], report["values"], "{report}");
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value["status"], "sent", "{report}");
        // In the group's order: the i-th result is the i-th send's.
        let (task_id, message_id) = c.task_of(&format!("g{i}-grouped@example.org")).await;
        assert_eq!(report["ids"][i], task_id.as_str(), "{report}");
        assert_eq!(value["message_id"], message_id.as_str(), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_of_sends_calls_the_python_body_with_every_result() {
    let c = canvas(2).await;
    let (done, failed) = tokio::join!(
        c.run("chord", "chorded@example.org"),
        c.run("chord_error", "half@example.org"),
    );
    // The body got the header's results, in order.
    let report = &done;
    assert_eq!(report["value"]["tag"], "chord", "{report}");
    assert_eq!(
        report["value"]["collected"], report["header_values"],
        "{report}"
    );
    for i in 0..2 {
        let (task_id, message_id) = c.task_of(&format!("c{i}-chorded@example.org")).await;
        assert_eq!(report["header_ids"][i], task_id.as_str(), "{report}");
        assert_eq!(
            report["value"]["collected"][i]["message_id"],
            message_id.as_str(),
            "{report}"
        );
    }
    let body = calls(report, "chord");
    assert_eq!(body.len(), 1, "{report}");
    assert_eq!(body[0]["id"], report["body_id"], "{report}");
    // A refused part fails the chord: its result raises the part's error
    // (Celery's `get()` checks the parents first), the body does not run,
    // its own result is ChordError, and its link_error is called with its
    // id.
    let report = &failed;
    assert_eq!(
        report["error"]["exc_type"], "EmailDeliveryError",
        "{report}"
    );
    assert_eq!(report["body_error"]["exc_type"], "ChordError", "{report}");
    assert!(
        report["body_error"]["exc_message"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{report}"
    );
    assert!(calls(report, "chord-body").is_empty(), "{report}");
    let error = calls(report, "chord-error");
    assert_eq!(error.len(), 1, "{report}");
    assert_eq!(error[0]["arg"], report["body_id"], "{report}");
}
