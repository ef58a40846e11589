//! ETAs from Python: far ahead and many distinct ones travel through one
//! bounded ladder of delay queues, and none runs early.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::process::Command;

use crate::python_interop::{python, repo_root};
use crate::support::{
    eventually, queue_depth, rabbitmq_management, TestEnv, RABBITMQ, REDIS_RESULTS,
};

const COUNT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_day_eta_and_a_thousand_distinct_countdowns_share_one_bounded_ladder() {
    let python = python().await;
    let mut env = TestEnv::with_vars(&[("CELERY_WORKER_CONCURRENCY", "32")]).await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.api()
        .add_account(&token, env.smtp.port(), "sender@example.com", 100_000, 0)
        .await;
    env.start_worker();

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(&python)
            .arg(repo_root().join("tests/python/etas.py"))
            .env("BROKER_URL", RABBITMQ.replace("%2f", ""))
            .env("RESULT_BACKEND", REDIS_RESULTS)
            .env("QUEUE", &env.queue)
            .env("COUNT", COUNT.to_string())
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
    let etas: HashMap<String, DateTime<Utc>> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let eta = DateTime::parse_from_rfc3339(t[2].as_str().unwrap()).unwrap();
            (t[0].as_str().unwrap().to_string(), eta.with_timezone(&Utc))
        })
        .collect();
    assert_eq!(etas.len(), COUNT);

    eventually("every countdown sent", Duration::from_secs(180), || async {
        (env.count_status("sent").await == COUNT as i64).then_some(())
    })
    .await;
    // Nothing early: each was claimed no sooner than its ETA.
    let claimed: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT task_id, sending_at FROM message_records WHERE status = 'sent'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut late = Duration::ZERO;
    for (task_id, sending_at) in &claimed {
        let eta = etas[task_id];
        assert!(
            *sending_at >= eta,
            "{task_id} ran {} early",
            eta - sending_at
        );
        late = late.max((*sending_at - eta).to_std().unwrap());
    }
    println!("{COUNT} distinct countdowns: none early, the latest {late:?} after its ETA");
    let received: Vec<String> = env
        .smtp
        .received()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    assert_eq!(received.len(), COUNT);
    assert_eq!(received.iter().collect::<HashSet<_>>().len(), COUNT);

    // The 60-day task waits in the top rung, not recorded, not sent.
    let far = report["far"].as_str().unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_records WHERE task_id = $1")
            .bind(far)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 0);
    let top = env
        .settings()
        .queues
        .ladder(&env.queue)
        .last()
        .unwrap()
        .1
        .clone();
    assert_eq!(queue_depth(&top).await, Some(1), "{top}");

    // One bounded set of queues: the task, bulk and dead-letter queues and
    // the two ladders, whatever the delays were.
    let settings = env.settings();
    let mut allowed: HashSet<String> = [
        env.queue.clone(),
        settings.queues.bulk(),
        settings.queues.dead_letter(),
    ]
    .into();
    for target in settings.queues.consumed() {
        allowed.extend(settings.queues.ladder(&target).into_iter().map(|(_, q)| q));
    }
    let queues = rabbitmq_management("queues/%2F?columns=name").await;
    let ours: Vec<String> = queues
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .filter(|n| n.starts_with(&format!("{}.", env.queue)) || *n == env.queue)
        .map(str::to_string)
        .collect();
    let extra: Vec<&String> = ours.iter().filter(|q| !allowed.contains(*q)).collect();
    assert!(extra.is_empty(), "queues outside the ladder: {extra:?}");
    assert!(ours.len() <= allowed.len());
}
