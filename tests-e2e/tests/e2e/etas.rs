//! ETAs from Python: far ahead and many distinct ones travel through one
//! bounded ladder of delay queues, and none runs early.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::python_interop::{python, run_script};
use crate::support::{eventually, queue_depth, rabbitmq_management, TestEnv};

const COUNT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_day_eta_and_a_thousand_distinct_countdowns_share_one_bounded_ladder() {
    let python = python().await;
    let (env, _token) = TestEnv::sending(&[("CELERY_WORKER_CONCURRENCY", "32")], 100_000).await;

    let report = run_script(
        &python,
        &env,
        "etas.py",
        &[("COUNT", &COUNT.to_string())],
        Duration::from_secs(120),
    )
    .await;
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
