//! `celery inspect` with content and the `celery control` commands that
//! change a worker at run time, driven by the real Python CLI against our
//! workers: every reply is checked against Celery 5.4's wording and shape,
//! and every command against its effect on what the worker does.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use smtp_sink::{Fault, Stage};
use uuid::Uuid;

use crate::celery_control::{ask, ask_all, ask_all_with};
use crate::support::{eventually, publish_tasks, queue_depth, rabbitmq_channel, TestEnv};

/// A send task as a Python producer publishes it (the worker records it).
fn python_send(to: &str) -> platform::celery::TaskMessage {
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("to".into(), json!(to));
    kwargs.insert("subject".into(), json!("Runtime queues"));
    kwargs.insert("content".into(), json!("<p>Hi</p>"));
    platform::celery::TaskMessage::new(
        platform::tasks::SEND_EMAIL,
        &Uuid::new_v4().to_string(),
        Vec::new(),
        kwargs,
    )
}

/// Consumers of a queue, by a passive declaration.
async fn consumers(queue: &str) -> u32 {
    let (conn, channel) = rabbitmq_channel().await;
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue, options, lapin::types::FieldTable::default())
        .await
        .map(|q| q.consumer_count())
        .expect("the queue exists");
    let _ = conn.close(200, "done").await;
    count
}

fn reply<'a>(replies: &'a serde_json::Map<String, Value>, node: &str) -> &'a Value {
    replies.get(node).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_conf_stats_queues_reserved_and_scheduled_answer_with_content() {
    // The SMTP timeout outlasts the 5 s stall below.
    let (mut env, token) = TestEnv::sending(&[("EMAIL_TIMEOUT", "15")], 100).await;
    // A worker of one slot: while one send runs, the next are reserved.
    env.start_worker_with(&[("CELERY_WORKER_CONCURRENCY", "1")]);
    // The first worker stops taking work, so that the sends go to worker1.
    let w0 = format!("worker0@{}", env.queue);
    let w1 = format!("worker1@{}", env.queue);
    ask_all("inspect", "ping", &[&w0, &w1]).await;
    let cancelled = ask_all_with("control", "cancel_consumer", &[&env.queue], &[&w0]).await;
    assert_eq!(
        reply(&cancelled, &w0),
        &json!({"ok": format!("no longer consuming from {}", env.queue)})
    );

    // conf: Celery's setting names, passwords masked, nothing secret.
    let conf = ask_all("inspect", "conf", &[&w1]).await;
    let conf = reply(&conf, &w1);
    assert_eq!(conf["task_default_queue"], env.queue.as_str(), "{conf}");
    assert_eq!(conf["worker_concurrency"], 1, "{conf}");
    assert_eq!(conf["task_acks_late"], true);
    assert_eq!(conf["task_soft_time_limit"], 10.0);
    assert_eq!(conf["task_time_limit"], 12.0);
    // As Celery's `filter_hidden_settings`, a name with KEY in it is masked.
    assert_eq!(conf["task_default_routing_key"], "********");
    let broker = conf["broker_url"].as_str().expect("broker_url");
    assert!(
        broker.starts_with("amqp://guest:********@127.0.0.1"),
        "{broker}"
    );
    assert!(conf["result_backend"]
        .as_str()
        .unwrap()
        .starts_with("redis://"));
    assert!(!conf.to_string().contains("guest:guest"), "{conf}");

    // active_queues: kombu's queue dicts for both lanes of worker1.
    let queues = ask_all("inspect", "active_queues", &[&w1]).await;
    let queues = reply(&queues, &w1).as_array().expect("a list").clone();
    let bulk = format!("{}.bulk", env.queue);
    let names: Vec<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, [env.queue.as_str(), bulk.as_str()]);
    let q = &queues[0];
    assert_eq!(
        q["exchange"],
        json!({"name": env.queue, "type": "direct", "arguments": null, "durable": true,
               "passive": false, "auto_delete": false, "delivery_mode": null,
               "no_declare": false})
    );
    assert_eq!(q["routing_key"], env.queue.as_str());
    assert_eq!(q["durable"], true);
    assert_eq!(q["queue_arguments"], Value::Null);
    assert_eq!(q["no_ack"], false);

    // reserved: with the one slot held by a stalled send, the next sends
    // are received and listed, not started.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(5)));
    // The first alone (sends accepted together travel as one batch task).
    let mut ids = vec![env.api().send_simple(&token, "r0@example.org").await];
    eventually("the first send active", Duration::from_secs(30), || async {
        let replies = ask("inspect", "active", &[&w1]).await?;
        (!replies.get(&w1)?.as_array()?.is_empty()).then_some(())
    })
    .await;
    for n in 1..3 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("r{n}@example.org"))
                .await,
        );
    }
    let reserved = eventually(
        "sends listed as reserved by worker1",
        Duration::from_secs(30),
        || async {
            let replies = ask("inspect", "reserved", &[&w1]).await?;
            let listed = replies.get(&w1)?.as_array()?.clone();
            (!listed.is_empty()).then_some(listed)
        },
    )
    .await;
    let first = &reserved[0];
    assert_eq!(first["hostname"], w1.as_str());
    assert_eq!(first["acknowledged"], false);
    assert_eq!(first["time_start"], Value::Null);
    assert!(first["delivery_info"]["routing_key"].is_string(), "{first}");
    // The API's sends travel as batch tasks (a lone send is a batch of one).
    let listed: Vec<Uuid> = reserved
        .iter()
        .flat_map(|r| match r["kwargs"]["messages"].as_array() {
            Some(members) => members.iter().map(|m| m["message_id"].clone()).collect(),
            None => vec![r["kwargs"]["message_id"].clone()],
        })
        .filter_map(|id| id.as_str()?.parse().ok())
        .collect();
    assert!(!listed.is_empty(), "{reserved:?}");
    assert!(listed.iter().all(|id| ids.contains(id)), "{reserved:?}");
    // Reserved is not active: the running one is not listed.
    let active = ask_all("inspect", "active", &[&w1]).await;
    let active_ids: Vec<&Value> = reply(&active, &w1)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert!(reserved.iter().all(|r| !active_ids.contains(&&r["id"])));
    env.smtp.clear_faults();
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(40)).await;
    }

    // stats: real figures.
    let stats = ask_all("inspect", "stats", &[&w1]).await;
    let stats = reply(&stats, &w1);
    assert_eq!(stats["total"][platform::tasks::SEND_EMAIL], 3, "{stats}");
    assert_eq!(stats["pool"]["max-concurrency"], 1);
    assert_eq!(stats["pool"]["timeouts"], json!([10.0, 12.0]));
    let cpu =
        stats["rusage"]["utime"].as_f64().unwrap() + stats["rusage"]["stime"].as_f64().unwrap();
    assert!(cpu > 0.0, "{stats}");
    assert!(stats["rusage"]["maxrss"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["prefetch_count"].as_u64().is_some());
    assert_eq!(stats["broker"]["hostname"], "127.0.0.1");
    assert!(!stats.to_string().contains("guest:guest"));

    // scheduled: a send due in an hour, with its eta and request.
    let send_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "later@example.org", "subject": "Later", "content": "<p>Later</p>",
                    "send_at": send_at.to_rfc3339()}),
        )
        .await;
    let later: Uuid = res.body["data"]["message_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{}", res.body));
    // And a Python producer's task with a countdown, which has no record:
    // listed by the worker that holds it in the delay ladder.
    let mut countdown = python_send("countdown@example.org");
    countdown.headers.eta = Some(chrono::Utc::now() + chrono::Duration::minutes(30));
    publish_tasks(&env.queue, std::slice::from_ref(&countdown)).await;
    let scheduled = eventually(
        "both waiting tasks listed as scheduled",
        Duration::from_secs(30),
        || async {
            let replies = ask("inspect", "scheduled", &[&w1]).await?;
            let listed = replies.get(&w1)?.as_array()?.clone();
            (listed.len() == 2).then_some(listed)
        },
    )
    .await;
    // Soonest first.
    let python = &scheduled[0];
    assert_eq!(python["request"]["id"], countdown.id(), "{python}");
    assert_eq!(python["request"]["kwargs"]["to"], "countdown@example.org");
    assert_eq!(python["request"]["hostname"], w1.as_str());
    let entry = &scheduled[1];
    let eta = chrono::DateTime::parse_from_rfc3339(entry["eta"].as_str().unwrap()).unwrap();
    assert!(
        (eta.timestamp() - send_at.timestamp()).abs() <= 1,
        "{entry}"
    );
    assert_eq!(entry["priority"], 6);
    assert_eq!(entry["request"]["name"], platform::tasks::SEND_EMAIL);
    assert_eq!(entry["request"]["kwargs"]["message_id"], later.to_string());
    assert!(entry["request"]["id"].is_string());

    let report = ask_all("inspect", "report", &[&w1]).await;
    assert!(reply(&report, &w1)["ok"]
        .as_str()
        .unwrap()
        .contains("software -> notify-worker"));
    let clock = ask_all("inspect", "clock", &[&w1]).await;
    assert!(reply(&clock, &w1)["clock"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_consumer_and_cancel_consumer_change_the_queues_a_worker_consumes() {
    let (mut env, _token) = TestEnv::sending(&[], 100).await;
    let w0 = format!("worker0@{}", env.queue);
    let extra = format!("{}.extra", env.queue);
    env.extra_queues.push(extra.clone());

    let added = ask_all_with("control", "add_consumer", &[&extra], &[&w0]).await;
    assert_eq!(
        reply(&added, &w0),
        &json!({"ok": format!("add consumer {extra}")})
    );
    let queues = eventually(
        "the added queue listed",
        Duration::from_secs(30),
        || async {
            let replies = ask("inspect", "active_queues", &[&w0]).await?;
            let queues = replies.get(&w0)?.as_array()?.clone();
            queues
                .iter()
                .any(|q| q["name"] == extra.as_str())
                .then_some(queues)
        },
    )
    .await;
    let added = queues.iter().find(|q| q["name"] == extra.as_str()).unwrap();
    assert_eq!(added["exchange"]["name"], extra.as_str());
    assert_eq!(added["exchange"]["type"], "direct");
    assert_eq!(added["routing_key"], extra.as_str());
    assert_eq!(added["durable"], true);

    // A task published to it (through its exchange, as Celery routes
    // `queue=`) is delivered.
    publish_tasks(&extra, &[python_send("extra@example.org")]).await;
    eventually(
        "the task on the added queue sent",
        Duration::from_secs(30),
        || async { (env.smtp.count() == 1).then_some(()) },
    )
    .await;

    let cancelled = ask_all_with("control", "cancel_consumer", &[&extra], &[&w0]).await;
    assert_eq!(
        reply(&cancelled, &w0),
        &json!({"ok": format!("no longer consuming from {extra}")})
    );
    // Once RabbitMQ shows no consumer on it, a task published there stays.
    eventually(
        "no consumer on the cancelled queue",
        Duration::from_secs(30),
        || async { (consumers(&extra).await == 0).then_some(()) },
    )
    .await;
    let queues = ask_all("inspect", "active_queues", &[&w0]).await;
    assert!(reply(&queues, &w0)
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["name"] != extra.as_str()));
    publish_tasks(&extra, &[python_send("stays@example.org")]).await;
    assert_eq!(queue_depth(&extra).await, Some(1));
    assert_eq!(env.smtp.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_set_over_remote_control_spaces_sends_across_two_workers() {
    let (mut env, token) = TestEnv::sending(&[], 100).await;
    env.start_worker();
    let w0 = format!("worker0@{}", env.queue);
    let w1 = format!("worker1@{}", env.queue);
    ask_all("inspect", "ping", &[&w0, &w1]).await;

    let invalid = ask_all_with(
        "control",
        "rate_limit",
        &[platform::tasks::SEND_EMAIL, "fast"],
        &[&w0],
    )
    .await;
    assert!(reply(&invalid, &w0)["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid rate limit string"));
    let unknown = ask_all_with("control", "rate_limit", &["no.such.task", "1/s"], &[&w0]).await;
    assert_eq!(reply(&unknown, &w0), &json!({"error": "unknown task"}));
    // Told to one worker, it binds both (Celery's binds only the workers told).
    let set = ask_all_with(
        "control",
        "rate_limit",
        &[platform::tasks::SEND_EMAIL, "20/m"],
        &[&w0],
    )
    .await;
    assert_eq!(
        reply(&set, &w0),
        &json!({"ok": "new rate limit set successfully"})
    );
    let registered = ask_all("inspect", "registered", &[&w1]).await;
    assert!(reply(&registered, &w1)
        .as_array()
        .unwrap()
        .contains(&json!(format!(
            "{} [rate_limit=20/m]",
            platform::tasks::SEND_EMAIL
        ))));

    // Each worker gets sends of its own: worker0 consumes only a queue of
    // its own, worker1 the task queue.
    let own = format!("{}.rl", env.queue);
    env.extra_queues.push(own.clone());
    ask_all_with("control", "add_consumer", &[&own], &[&w0]).await;
    ask_all_with("control", "cancel_consumer", &[&env.queue], &[&w0]).await;
    eventually(
        "worker0 on its own queue only",
        Duration::from_secs(30),
        || async {
            let moved = queue_depth(&own).await.is_some()
                && consumers(&own).await == 1
                && consumers(&env.queue).await == 1;
            moved.then_some(())
        },
    )
    .await;
    publish_tasks(
        &own,
        &[
            python_send("rate-a@example.org"),
            python_send("rate-b@example.org"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("rate{n}@example.org"))
                .await,
        );
    }
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(60)).await;
    }
    eventually("all four sent", Duration::from_secs(60), || async {
        (env.smtp.count() == 4).then_some(())
    })
    .await;
    let mut starts: Vec<SystemTime> = env.smtp.received().iter().map(|m| m.started_at).collect();
    starts.sort();
    assert_eq!(starts.len(), 4);
    // 20/m: one every 3 s, whichever worker sends (never early; a little
    // slack for the time between admission and the SMTP transaction).
    for (k, start) in starts.iter().enumerate().skip(1) {
        let since_first = start.duration_since(starts[0]).unwrap_or_default();
        assert!(
            since_first >= Duration::from_millis(3000 * k as u64 - 300),
            "send {k} came {since_first:?} after the first"
        );
    }
    // Both workers sent, yet the spacing held; then the limit goes.
    for node in [&w0, &w1] {
        let stats = ask_all("inspect", "stats", &[node]).await;
        let sent = reply(&stats, node)["total"][platform::tasks::SEND_EMAIL]
            .as_u64()
            .unwrap_or(0);
        assert!(sent >= 1, "{node} sent none: {stats:?}");
    }
    let disabled = ask_all_with(
        "control",
        "rate_limit",
        &[platform::tasks::SEND_EMAIL, "0"],
        &[&w1],
    )
    .await;
    assert_eq!(
        reply(&disabled, &w1),
        &json!({"ok": "rate limit disabled successfully"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_limit_set_over_remote_control_cuts_a_hung_send_at_the_new_soft_limit() {
    // Configured: 10 s soft, 12 s hard.
    let (env, token) = TestEnv::sending(&[], 100).await;
    let w0 = format!("worker0@{}", env.queue);
    let set = ask_all_with(
        "control",
        "time_limit",
        &[platform::tasks::SEND_EMAIL, "2", "3"],
        &[&w0],
    )
    .await;
    assert_eq!(
        reply(&set, &w0),
        &json!({"ok": "time limits set successfully"})
    );
    let unknown = ask_all_with("control", "time_limit", &["no.such.task", "2"], &[&w0]).await;
    assert_eq!(reply(&unknown, &w0), &json!({"error": "unknown task"}));

    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(30)));
    let id = env.api().send_simple(&token, "hung@example.org").await;
    let started = std::time::Instant::now();
    let error = eventually(
        "the hung attempt abandoned",
        Duration::from_secs(20),
        || async {
            let rec = platform::db::messages::get(&env.pool, id).await.ok()??;
            (rec.status == "queued" && rec.attempts >= 1)
                .then_some(rec.error)
                .flatten()
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.contains("no answer") && error.contains("2s"),
        "{error}"
    );
    env.smtp.clear_faults();
    env.wait_status(id, "sent", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shrink_grow_and_autoscale_change_how_many_sends_run_at_once() {
    // Configured: 4 sends at once.
    let (env, token) = TestEnv::sending(&[], 100).await;
    let w0 = format!("worker0@{}", env.queue);
    let shrunk = ask_all_with("control", "pool_shrink", &["3"], &[&w0]).await;
    assert_eq!(reply(&shrunk, &w0), &json!({"ok": "pool will shrink"}));
    let stats = ask_all("inspect", "stats", &[&w0]).await;
    assert_eq!(reply(&stats, &w0)["pool"]["max-concurrency"], 1);

    // Three slow sends, one at a time.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(1)));
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("p{n}@example.org"))
                .await,
        );
    }
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(60)).await;
    }
    assert_eq!(env.smtp.peak_transactions(), 1);

    let grown = ask_all_with("control", "pool_grow", &["2"], &[&w0]).await;
    assert_eq!(reply(&grown, &w0), &json!({"ok": "pool will grow"}));
    let stats = ask_all("inspect", "stats", &[&w0]).await;
    assert_eq!(reply(&stats, &w0)["pool"]["max-concurrency"], 3);
    for n in 3..6 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("p{n}@example.org"))
                .await,
        );
    }
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(60)).await;
    }
    assert!(env.smtp.peak_transactions() <= 3);

    let scaled = ask_all_with("control", "autoscale", &["6", "2"], &[&w0]).await;
    assert_eq!(
        reply(&scaled, &w0),
        &json!({"ok": "autoscale now max=6 min=2"})
    );
    let stats = ask_all("inspect", "stats", &[&w0]).await;
    let stats = reply(&stats, &w0);
    assert_eq!(stats["pool"]["max-concurrency"], 6);
    assert_eq!(stats["autoscaler"]["max"], 6);
    assert_eq!(stats["autoscaler"]["min"], 2);
    let refused = ask_all_with("control", "pool_grow", &["1"], &[&w0]).await;
    assert_eq!(
        reply(&refused, &w0),
        &json!({"error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."})
    );
}
