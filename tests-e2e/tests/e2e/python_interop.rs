//! A Python program using the `celery` library drives our worker.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use crate::support::{TestEnv, RABBITMQ, REDIS_RESULTS};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_send_task_from_python_is_delivered_and_its_result_readable() {
    let python = python().await;
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.api()
        .add_account(&token, env.smtp.port(), "sender@example.com", 100, 0)
        .await;
    env.start_worker();

    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new(&python)
            .arg(repo_root().join("tests/python/send_task.py"))
            .env("BROKER_URL", RABBITMQ.replace("%2f", ""))
            .env("RESULT_BACKEND", REDIS_RESULTS)
            .env("QUEUE", &env.queue)
            .env("TO", "py@example.org")
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

    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json report");
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
