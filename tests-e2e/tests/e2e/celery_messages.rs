//! What a Python producer sets on one message, honoured by our worker:
//! `priority=` (with queues declared with `x-max-priority`),
//! `soft_time_limit`/`time_limit`, and `compression=`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use smtp_sink::{Fault, Stage};
use tokio::process::Command;
use uuid::Uuid;

use crate::python_interop::producer;
use crate::support::{binary, eventually, queue_depth, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_9_task_from_python_overtakes_a_backlog_in_a_max_priority_queue() {
    let mut env = TestEnv::with_vars(&[("CELERY_TASK_QUEUE_MAX_PRIORITY", "10")]).await;
    // The API's relay declares the queues (with x-max-priority) at start.
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 1000).await;
    const BACKLOG: usize = 30;
    let backlog = BACKLOG.to_string();
    let report = producer(
        &env,
        "priority_backlog",
        "urgent@example.org",
        &[("BACKLOG", &backlog), ("MAX_PRIORITY", "10")],
    )
    .await;
    assert_eq!(
        report["backlog"].as_array().map(Vec::len),
        Some(BACKLOG),
        "{report}"
    );
    eventually(
        "the backlog and the urgent task queued",
        Duration::from_secs(10),
        || async { (queue_depth(&env.queue).await? as usize == BACKLOG + 1).then_some(()) },
    )
    .await;

    // One send at a time, one message prefetched: the order of delivery
    // is the order RabbitMQ hands them over.
    env.start_worker_with(&[
        ("CELERY_WORKER_CONCURRENCY", "1"),
        ("RABBITMQ_PREFETCH_COUNT", "1"),
    ]);
    let received = env
        .smtp
        .wait_for(BACKLOG + 1, Duration::from_secs(120))
        .await;
    let position = received
        .iter()
        .position(|m| m.rcpt_to == ["urgent@example.org"])
        .expect("the urgent email was sent");
    assert!(
        position < 3,
        "the priority 9 task was sent at position {position} of {}",
        received.len()
    );
    // The backlog itself went out in the order it was published (all of
    // one priority): nothing is lost or reordered besides.
    let lows: Vec<&str> = received
        .iter()
        .filter(|m| m.rcpt_to[0].starts_with("low"))
        .map(|m| m.rcpt_to[0].as_str())
        .collect();
    let expected: Vec<String> = (0..BACKLOG)
        .map(|i| format!("low{i}@example.org"))
        .collect();
    assert_eq!(lows, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_names_the_queue_declared_without_its_max_priority_and_stops() {
    // The queues exist without x-max-priority (the API declared them so).
    let mut env = TestEnv::new().await;
    env.start_api().await;
    eventually(
        "the task queue declared",
        Duration::from_secs(10),
        || async { queue_depth(&env.queue).await },
    )
    .await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(binary("notify-worker"))
            .env_clear()
            .envs(&env.vars)
            .env("CELERY_TASK_QUEUE_MAX_PRIORITY", "10")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the worker stopped by itself")
    .expect("run the worker");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("queue {:?}", env.queue))
            && stderr.contains("x-max-priority=10")
            && stderr.contains("delete")
            && stderr.contains("CELERY_TASK_QUEUE_MAX_PRIORITY"),
        "{stderr}"
    );
}

/// `status`, `attempts` and `error` of the record a Python task made.
async fn record(env: &TestEnv, task_id: &str) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT status, attempts, error FROM message_records WHERE task_id = $1")
        .bind(task_id)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_soft_time_limit_of_1s_cuts_a_hung_send_at_1s_then_it_is_retried() {
    // The worker's own limits are 10 s and 12 s (the test default).
    let (env, _token) = TestEnv::sending(&[], 1000).await;
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(30)));
    let task_id = Uuid::new_v4().to_string();
    let started = Instant::now();
    let python = {
        let env_vars: Vec<(String, String)> = vec![("TASK_ID".into(), task_id.clone())];
        let env = &env;
        async move {
            let vars: Vec<(&str, &str)> = env_vars
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            producer(env, "timelimit", "slow@example.org", &vars).await
        }
    };
    let watch = async {
        let (_, attempts, error) = eventually(
            "the hung attempt to be cut",
            Duration::from_secs(30),
            || async {
                record(&env, &task_id)
                    .await
                    .filter(|(status, attempts, error)| {
                        status == "queued" && *attempts >= 1 && error.is_some()
                    })
            },
        )
        .await;
        let cut_after = started.elapsed();
        env.smtp.clear_faults();
        (attempts, error, cut_after)
    };
    let (report, (attempts, error, cut_after)) = tokio::join!(python, watch);
    let error = error.unwrap();
    assert!(
        error.contains("no answer") && error.contains("within 1s"),
        "{error}"
    );
    // Python's start-up included, well under the worker's own 10 s.
    assert!(cut_after < Duration::from_secs(8), "{cut_after:?}");
    assert!(attempts >= 1);
    assert_eq!(report["state"], "SUCCESS", "{report}");
    assert_eq!(report["result"]["status"], "sent", "{report}");
    assert_eq!(env.smtp.count(), 1, "the cut attempt never completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tasks_compressed_with_zlib_bzip2_and_lzma_are_delivered() {
    let (env, _token) = TestEnv::sending(&[], 1000).await;
    let (zlib, bzip2, lzma) = tokio::join!(
        producer(
            &env,
            "compressed",
            "zlib@example.org",
            &[("COMPRESSION", "zlib")]
        ),
        producer(
            &env,
            "compressed",
            "bzip2@example.org",
            &[("COMPRESSION", "bzip2")]
        ),
        producer(
            &env,
            "compressed",
            "lzma@example.org",
            &[("COMPRESSION", "lzma")]
        ),
    );
    for report in [&zlib, &bzip2, &lzma] {
        assert_eq!(report["state"], "SUCCESS", "{report}");
        assert_eq!(report["result"]["status"], "sent", "{report}");
    }
    let received = env.smtp.wait_for(3, Duration::from_secs(10)).await;
    let mut to: Vec<&str> = received.iter().map(|m| m.rcpt_to[0].as_str()).collect();
    to.sort();
    assert_eq!(
        to,
        ["bzip2@example.org", "lzma@example.org", "zlib@example.org"]
    );
    assert!(received
        .iter()
        .all(|m| m.data_str().contains("From Python (compressed)")));
}
