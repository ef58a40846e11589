//! A Python program using the `celery` library drives our worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::support::{queue_depth, TestEnv, RABBITMQ, REDIS_RESULTS};

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The test virtualenv's python (created on first use by scripts/python-venv.sh).
pub(crate) async fn python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/python-venv.sh"))
        .output()
        .await
        .expect("run python-venv.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs `script` (in tests/python) with the test virtualenv's `python`,
/// pointed at this test's broker, result backend and queue, with `vars`
/// on top; asserts that it succeeded and returns its JSON report.
pub(crate) async fn run_script(
    python: &Path,
    env: &TestEnv,
    script: &str,
    vars: &[(&str, &str)],
    timeout: Duration,
) -> serde_json::Value {
    let out = tokio::time::timeout(
        timeout,
        Command::new(python)
            .arg(repo_root().join("tests/python").join(script))
            .env("BROKER_URL", RABBITMQ.replace("%2f", ""))
            .env("RESULT_BACKEND", REDIS_RESULTS)
            .env("QUEUE", &env.queue)
            .envs(vars.iter().copied())
            .output(),
    )
    .await
    .expect("python finished in time")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("json report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_send_task_from_python_is_delivered_and_its_result_readable() {
    let python = python().await;
    let (env, _token) = TestEnv::sending(&[], 100).await;

    let report = run_script(
        &python,
        &env,
        "send_task.py",
        &[("TO", "py@example.org")],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(report["state"], "SUCCESS");
    assert_eq!(report["result"]["status"], "sent");
    assert_eq!(report["result"]["account"], "sender@example.com");

    let received = env.smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["py@example.org"]);
    assert!(received[0].data_str().contains("From Python"));
    // The worker recorded the message under the task id Python chose.
    let status: String =
        sqlx::query_scalar("SELECT status FROM message_records WHERE task_id = $1")
            .bind(report["task_id"].as_str().unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "sent");
}

/// Runs tests/python/producer.py in `mode` and returns its JSON report.
pub(crate) async fn producer(
    env: &TestEnv,
    mode: &str,
    to: &str,
    extra: &[(&str, &str)],
) -> serde_json::Value {
    let python = python().await;
    let mut vars = vec![("TO", to), ("MODE", mode)];
    vars.extend_from_slice(extra);
    run_script(&python, env, "producer.py", &vars, Duration::from_secs(90)).await
}

async fn env_with_worker(worker_vars: &[(&str, &str)]) -> TestEnv {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100).await;
    env.start_worker_with(worker_vars);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_countdown_expires_and_priority_are_honoured() {
    let env = env_with_worker(&[]).await;
    let report = producer(&env, "countdown", "later@example.org", &[]).await;
    assert_eq!(report["state"], "SUCCESS", "{report}");
    assert_eq!(report["result"]["status"], "sent", "{report}");
    // The countdown held it back (in RabbitMQ) for its 2 s.
    assert!(report["elapsed"].as_f64().unwrap() >= 2.0, "{report}");
    let received = env.smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].rcpt_to, ["later@example.org"]);
    // The task's `metadata` kwarg is kept with the message, as on API sends.
    let metadata: serde_json::Value =
        sqlx::query_scalar("SELECT metadata FROM message_records WHERE task_id = $1")
            .bind(report["task_id"].as_str().unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        metadata,
        serde_json::json!({"origin": "python", "order_id": "P-7"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sees_a_delivery_failure_as_email_delivery_error() {
    let env = env_with_worker(&[]).await;
    env.smtp.set_recipient_fault(
        "refused@example.org",
        smtp_sink::Fault::Reply(550, "no such user".into()),
    );
    let report = producer(&env, "failure", "refused@example.org", &[]).await;
    assert_eq!(report["state"], "FAILURE", "{report}");
    assert_eq!(report["exc_type"], "EmailDeliveryError", "{report}");
    assert!(
        report["exc_message"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_task_expiring_before_it_runs_ends_revoked() {
    let env = env_with_worker(&[]).await;
    let report = producer(&env, "expired", "never@example.org", &[]).await;
    assert_eq!(report["state"], "REVOKED", "{report}");
    assert_eq!(report["exc_type"], "TaskRevokedError", "{report}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.smtp.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_task_name_alias_and_positional_args_reach_send_email() {
    let env = env_with_worker(&[(
        "CELERY_TASK_ALIASES",
        "app.tasks.send_email=notifications.send_email",
    )])
    .await;
    // An existing `app.tasks.send_email.delay(to, subject, content)` call.
    let report = producer(
        &env,
        "delay",
        "positional@example.org",
        &[("TASK_NAME", "app.tasks.send_email")],
    )
    .await;
    assert_eq!(report["state"], "SUCCESS", "{report}");
    assert_eq!(report["result"]["status"], "sent", "{report}");
    let received = env.smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].rcpt_to, ["positional@example.org"]);
    assert!(received[0].data_str().contains("From Python (delay)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_send_breaking_an_api_rule_fails_for_good_with_the_rule_named() {
    let env = env_with_worker(&[]).await;
    let (long_subject, many) = tokio::join!(
        producer(&env, "long_subject", "long@example.org", &[]),
        producer(&env, "many_recipients", "many@example.org", &[]),
    );
    for (report, rule) in [
        (&long_subject, "subject must be at most 998 characters"),
        (&many, "at most 50 recipients"),
    ] {
        assert_eq!(report["state"], "FAILURE", "{report}");
        assert_eq!(report["exc_type"], "EmailDeliveryError", "{report}");
        let seen = report["exc_message"].as_str().unwrap();
        assert!(seen.contains(rule), "{report}");
        let (status, error, attempts): (String, String, i32) = sqlx::query_as(
            "SELECT status, error, attempts FROM message_records WHERE task_id = $1",
        )
        .bind(report["task_id"].as_str().unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(status, "failed");
        assert!(error.contains(rule), "{error}");
        assert_eq!(attempts, 0, "never attempted");
    }
    // Failed for good: not sent, not dead-lettered, and still failed (no
    // retry brought it back to `queued`) a moment later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.smtp.count(), 0);
    let dead_letter_queue = format!("{}.dead_letter", env.queue);
    assert_eq!(queue_depth(&dead_letter_queue).await.unwrap_or(0), 0);
    let (failed, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM message_records WHERE status = 'failed'),
                (SELECT count(*) FROM dead_letters)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((failed, dead), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_revokes_stop_a_task_waiting_for_its_countdown_and_one_published_later() {
    let env = env_with_worker(&[]).await;
    // A revoke is a broadcast: it reaches the workers listening when it is
    // sent (and, kept in Redis, those started afterwards).
    let node = format!("worker0@{}", env.queue);
    crate::celery_control::ask_all("inspect", "ping", &[&node]).await;
    let (waiting, later) = tokio::join!(
        producer(&env, "revoke", "waiting@example.org", &[]),
        producer(&env, "revoke_first", "later@example.org", &[]),
    );
    for report in [&waiting, &later] {
        assert_eq!(report["state"], "REVOKED", "{report}");
        assert_eq!(report["exc_type"], "TaskRevokedError", "{report}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.smtp.count(), 0);
}
