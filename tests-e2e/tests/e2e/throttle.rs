//! Per-account throttles hold across worker processes.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use smtp_sink::{Fault, Latency, Stage};

use crate::support::{eventually, TestEnv};

/// Two workers and one account with `limit` (e.g. `{"max_connections": 2}`)
/// set through the admin API.
async fn two_workers_and_a_limited_account(limit: serde_json::Value) -> (TestEnv, String) {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    env.start_worker();
    env.start_worker();
    let token = env.api().admin_token(&env.pool).await;
    limited_account(&env, &token, "limited@example.com", 0, limit).await;
    (env, token)
}

/// An account (daily limit 1000) with `limit` set through the admin API.
async fn limited_account(
    env: &TestEnv,
    token: &str,
    email: &str,
    priority: i64,
    limit: serde_json::Value,
) {
    let api = env.api();
    let account = api
        .add_account(token, env.smtp.port(), email, 1000, priority)
        .await;
    let path = format!(
        "/api/v1/admin/email-accounts/{}",
        account["id"].as_str().unwrap()
    );
    let res = api
        .request(Method::PATCH, &path, Some(token), Some(&limit))
        .await;
    for (field, value) in limit.as_object().unwrap() {
        assert_eq!(&res.body["data"][field], value, "{}", res.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_minute_rate_holds_across_two_workers() {
    let (env, token) =
        two_workers_and_a_limited_account(json!({"rate_limit_per_minute": 20})).await;
    for i in 0..30 {
        env.api()
            .send_simple(&token, &format!("r{i}@example.org"))
            .await;
    }
    eventually("20 sends", Duration::from_secs(20), || async {
        (env.smtp.count() >= 20).then_some(())
    })
    .await;
    // The other ten wait for the window, however many workers ask.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.smtp.count(), 20);
    assert_eq!(env.count_status("queued").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cap_holds_across_two_workers() {
    let (env, token) = two_workers_and_a_limited_account(json!({"max_connections": 2})).await;
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_millis(150)));
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("c{i}@example.org"))
                .await,
        );
    }
    for id in ids {
        env.wait_status(id, "sent", Duration::from_secs(60)).await;
    }
    assert_eq!(env.smtp.count(), 20);
    assert!(
        env.smtp.peak_transactions() <= 2,
        "peak {}",
        env.smtp.peak_transactions()
    );
}

/// A connection cap is a queue, not a wait: the sends beyond an account's
/// connections wait in the worker for one of them (handed from message to
/// message), with no trip through the delay queues, and the account never
/// holds more connections than it allows, idle ones included. Once idle,
/// its places are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_a_connection_cap_queue_for_its_connections_and_give_them_back() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    limited_account(
        &env,
        &token,
        "capped@example.com",
        0,
        json!({"max_connections": 3}),
    )
    .await;
    // 100 ms per message; a fourth connection of the login gets 421.
    env.smtp.set_latency(Latency::parse("data=100").unwrap());
    env.smtp.limit_connections_per_login(3);
    let recipients: Vec<String> = (0..60).map(|i| format!("q{i}@example.org")).collect();
    env.api().send_simple_batch(&token, &recipients).await;
    let started = Instant::now();
    env.start_worker();
    eventually("60 sends", Duration::from_secs(60), || async {
        (env.count_status("sent").await == 60).then_some(())
    })
    .await;
    let took = started.elapsed();
    // 60 × 100 ms over 3 connections is 2 s of sending; a send that waited
    // for a place through the delay queues would add a second per round.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(
        env.smtp.peak_connections_per_login() <= 3,
        "peak {}",
        env.smtp.peak_connections_per_login()
    );
    assert_eq!(env.smtp.refused_for_limit(), 0);
    let waited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_events WHERE event = 'waiting'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(waited, 0, "no send went through the delay queues");
    // Idle connections close and their places go back to Redis.
    let account: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM email_accounts WHERE email = 'capped@example.com'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let key = format!("notify:{}:throttle:connections:{account}", env.queue);
    let redis = redis::Client::open("redis://127.0.0.1:6379/0").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    eventually("places given back", Duration::from_secs(20), || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let held: i64 = redis::cmd("ZCARD")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            (held == 0).then_some(())
        }
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A batch's sends arrive together and go through the pipeline together;
/// an account with its own throttles keeps its place in the priority order
/// (it takes each send it admits) instead of being skipped for the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_account_keeps_its_priority_for_sends_that_arrive_together() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    let limit = json!({"rate_limit_per_minute": 12});
    limited_account(&env, &token, "limited@example.com", 10, limit).await;
    env.api()
        .add_account(&token, env.smtp.port(), "plain@example.com", 1000, 0)
        .await;
    let messages: Vec<_> = (0..20)
        .map(
            |i| json!({"to": format!("p{i}@example.org"), "subject": "Hi", "content": "<p>Hi</p>"}),
        )
        .collect();
    let batch = json!({"messages": messages});
    let res = env
        .api()
        .post("/api/v1/messages/email/batch", &token, &batch)
        .await;
    assert_eq!(res.body["data"]["accepted"], 20, "{}", res.body);
    env.start_worker();
    eventually("20 sends", Duration::from_secs(30), || async {
        (env.count_status("sent").await == 20).then_some(())
    })
    .await;
    let per_account: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account_email, count(*) FROM message_records WHERE status = 'sent'
         GROUP BY account_email ORDER BY account_email",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    // The higher-priority account takes what its rate admits, the other
    // account the rest.
    assert_eq!(
        per_account,
        [
            ("limited@example.com".to_string(), 12),
            ("plain@example.com".to_string(), 8)
        ]
    );
}

/// Sends are settled as they finish, not when their group does: of eight
/// emails that arrive together (one batch task, one group), seven are
/// recorded `sent`, with their Celery results, while the eighth is still
/// stuck on a slow server; it is recorded once it gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_send_does_not_hold_up_the_outcomes_of_those_that_arrived_with_it() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.api()
        .add_account(&token, env.smtp.port(), "sender@example.com", 1000, 0)
        .await;
    env.smtp
        .set_recipient_fault("slow@example.org", Fault::Stall(Duration::from_secs(6)));
    let mut recipients = vec!["slow@example.org".to_string()];
    recipients.extend((0..7).map(|i| format!("fast{i}@example.org")));
    env.api().send_simple_batch(&token, &recipients).await;
    let started = Instant::now();
    // The SMTP timeout outlasts the slow send's 6 s stall: slow, not dead.
    env.start_worker_with(&[("CELERY_WORKER_CONCURRENCY", "8"), ("EMAIL_TIMEOUT", "15")]);
    eventually(
        "the seven fast sends recorded",
        Duration::from_secs(20),
        || async { (env.count_status("sent").await == 7).then_some(()) },
    )
    .await;
    let slow: String = sqlx::query_scalar(
        "SELECT status FROM message_records WHERE to_addrs = '{slow@example.org}'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(slow, "sending", "the slow send is still on the wire");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the fast sends waited for the slow one: {:?}",
        started.elapsed()
    );
    // Python callers see the fast ones' results already.
    let fast_task: String = sqlx::query_scalar(
        "SELECT task_id FROM message_records WHERE to_addrs = '{fast0@example.org}'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let redis = redis::Client::open(crate::support::REDIS_RESULTS).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let stored: Option<String> = redis::cmd("GET")
        .arg(format!("celery-task-meta-{fast_task}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        stored.is_some_and(|s| s.contains("SUCCESS")),
        "the fast send's result is stored"
    );
    eventually(
        "the slow send recorded",
        Duration::from_secs(20),
        || async { (env.count_status("sent").await == 8).then_some(()) },
    )
    .await;
    assert_eq!(env.smtp.count(), 8);
}

/// An account whose connections all have a backlog is passed over for a
/// moment, not for the quota wait: with plenty of quota left, what it
/// cannot take now waits a second (`account_throttle`), never the quota
/// wait (a minute here) that would leave its connections idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_a_full_connection_backlog_wait_a_moment_not_for_quota() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    limited_account(
        &env,
        &token,
        "capped@example.com",
        0,
        json!({"max_connections": 1}),
    )
    .await;
    env.smtp.set_latency(Latency::parse("data=50").unwrap());
    // One connection: a backlog of four at most, so most of the 30 wait.
    let recipients: Vec<String> = (0..30).map(|i| format!("b{i}@example.org")).collect();
    env.api().send_simple_batch(&token, &recipients).await;
    env.start_worker_with(&[
        ("CELERY_WORKER_CONCURRENCY", "64"),
        ("QUOTA_WAIT_SECONDS", "60"),
    ]);
    eventually("30 sends", Duration::from_secs(45), || async {
        (env.count_status("sent").await == 30).then_some(())
    })
    .await;
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT detail->>'reason' FROM message_events WHERE event = 'waiting'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(!reasons.is_empty(), "some sends waited for the connection");
    assert!(
        reasons.iter().all(|r| r.starts_with("account_throttle")),
        "{reasons:?}"
    );
}

/// A burst of sends to a cold pool opens its connections a few at a time
/// (16 handshakes per server at once), not one per send at once: a
/// server's accept queue (Postfix's holds 100) would overflow, and the
/// connections it dropped look established to the client and never greet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_opens_a_few_connections_at_a_time() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.add_sender(&token, 1000).await;
    // Each greeting takes 200 ms, so handshakes overlap and can be counted.
    env.smtp
        .set_latency(Latency::parse("greeting=200").unwrap());
    let recipients: Vec<String> = (0..120).map(|i| format!("c{i}@example.org")).collect();
    env.api().send_simple_batch(&token, &recipients).await;
    env.start_worker_with(&[("CELERY_WORKER_CONCURRENCY", "256")]);
    eventually("120 sends", Duration::from_secs(60), || async {
        (env.count_status("sent").await == 120).then_some(())
    })
    .await;
    let peak = env.smtp.peak_greeting();
    println!("at most {peak} connections were opening at once");
    assert!(peak <= 16, "{peak} connections were opened at once");
    assert!(peak >= 2, "connections were opened one at a time: {peak}");
}
