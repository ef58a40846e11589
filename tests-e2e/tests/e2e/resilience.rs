//! The worker under faults: refused accounts, exhausted retries, SIGTERM
//! and kill -9 in the middle of a run.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use smtp_sink::{Fault, Stage};
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_moves_the_message_to_another_account_and_opens_the_breaker() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    env.start_worker();
    let api = env.api();
    let token = api.admin_token(&env.pool).await;
    // The sink knows only the backup account's password (add_account uses "pw-<email>").
    env.smtp
        .require_auth("backup@example.com", "pw-backup@example.com");
    let broken = api
        .add_account(&token, env.smtp.port(), "broken@example.com", 100, 10)
        .await;
    api.add_account(&token, env.smtp.port(), "backup@example.com", 100, 1)
        .await;

    let id = api.send_simple(&token, "first@example.org").await;
    env.wait_status(id, "sent", Duration::from_secs(20)).await;
    let rec = platform::db::messages::get(&env.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.account_email.as_deref(), Some("backup@example.com"));
    assert_eq!(
        rec.attempts, 2,
        "one refused attempt, then the backup account"
    );

    // The operator sees why, after this one message.
    let path = format!(
        "/api/v1/admin/email-accounts/{}",
        broken["id"].as_str().unwrap()
    );
    let view = api.get(&path, &token).await.body["data"].clone();
    assert!(
        view["last_error"].as_str().unwrap().contains("535"),
        "{view}"
    );
    assert_eq!(
        view["daily_sent_count"], 0,
        "the refused attempt gave its quota back"
    );
    let open: bool = sqlx::query_scalar(
        "SELECT circuit_open_until > now() FROM email_accounts WHERE email = 'broken@example.com'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(open, "circuit opened");

    // While the circuit is open the broken account is not tried at all.
    for i in 0..5 {
        let id = api
            .send_simple(&token, &format!("next{i}@example.org"))
            .await;
        env.wait_status(id, "sent", Duration::from_secs(20)).await;
        assert_eq!(
            platform::db::messages::get(&env.pool, id)
                .await
                .unwrap()
                .unwrap()
                .attempts,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_lettered_and_an_operator_can_requeue_them() {
    let mut env = TestEnv::with_vars(&[("SEND_MAX_RETRIES", "1")]).await;
    env.start_api().await;
    env.start_worker();
    let api = env.api();
    let token = api.admin_token(&env.pool).await;
    env.add_sender(&token, 100).await;
    env.smtp
        .set_fault(Stage::RcptTo, Fault::Reply(451, "4.7.1 Greylisted".into()));

    let id = api.send_simple(&token, "grey@example.org").await;
    env.wait_status(id, "failed", Duration::from_secs(30)).await;
    let listed = eventually("the dead letter", Duration::from_secs(10), || async {
        let res = api.get("/api/v1/admin/dead-letters", &token).await;
        let first = res.body["data"].as_array().and_then(|a| a.first()).cloned();
        first.filter(|d| d["message_id"] == id.to_string())
    })
    .await;
    assert!(
        listed["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{listed}"
    );
    assert_eq!(listed["task_name"], "notifications.send_email");

    env.smtp.clear_faults();
    let requeue = format!("/api/v1/admin/dead-letters/{}/requeue", listed["id"]);
    let res = api
        .request(Method::POST, &requeue, Some(&token), None)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    env.wait_status(id, "sent", Duration::from_secs(20)).await;
    let res = api
        .request(Method::POST, &requeue, Some(&token), None)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "already_requeued")
    );
    assert_eq!(env.smtp.received().len(), 1);
    // The requeue is in the audit log (once: the refused second one is not).
    let res = api
        .get("/api/v1/admin/audit-log?action=dead_letter.requeue", &token)
        .await;
    let entries = res.body["data"]["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", res.body);
    assert_eq!(entries[0]["target_id"], listed["id"].to_string());
    assert_eq!(entries[0]["details"]["message_id"], id.to_string());

    let (_, sender_only) = api.token(&env.pool, &["send", "read"]).await;
    assert_eq!(
        api.get("/api/v1/admin/dead-letters", &sender_only)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

async fn send_many(env: &TestEnv, token: &str, count: usize) -> Vec<Uuid> {
    let api = env.api();
    let mut ids = Vec::with_capacity(count);
    let recipients: Vec<String> = (0..count).map(|i| format!("user{i}@example.org")).collect();
    for chunk in recipients.chunks(50) {
        let sends = chunk.iter().map(|to| api.send_simple(token, to));
        ids.extend(futures_util::future::join_all(sends).await);
    }
    ids
}

/// Message-IDs received more than once.
fn duplicates(env: &TestEnv) -> usize {
    env.received_per_message_id()
        .values()
        .filter(|n| **n > 1)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_sends_and_exits_cleanly_without_loss() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100_000).await;
    // A slow server, so sends are in flight when the signal lands.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_millis(200)));
    let ids = send_many(&env, &token, 300).await;
    env.start_worker();
    eventually("some sends", Duration::from_secs(20), || async {
        (env.smtp.received().len() >= 20).then_some(())
    })
    .await;

    env.signal_worker(0, "TERM").await;
    let status = env.wait_worker(0, Duration::from_secs(40)).await;
    assert!(status.success(), "clean exit, got {status:?}");
    let stuck = env.count_status("sending").await;
    assert_eq!(stuck, 0, "in-flight sends finished before exit");
    let sent_before_restart = env.count_status("sent").await;
    assert!(
        sent_before_restart < 300,
        "the worker stopped before the end"
    );

    env.smtp.clear_faults();
    env.start_worker();
    for id in ids {
        env.wait_status(id, "sent", Duration::from_secs(60)).await;
    }
    assert_eq!(env.smtp.received().len(), 300);
    assert_eq!(duplicates(&env), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing() {
    let mut env = TestEnv::with_vars(&[
        ("CELERY_TASK_SOFT_TIME_LIMIT", "2"),
        ("CELERY_TASK_TIME_LIMIT", "3"),
    ])
    .await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100_000).await;
    let ids = send_many(&env, &token, 2000).await;
    env.start_worker();
    eventually("a third of the run", Duration::from_secs(60), || async {
        (env.smtp.received().len() >= 600).then_some(())
    })
    .await;
    env.signal_worker(0, "KILL").await;
    env.wait_worker(0, Duration::from_secs(10)).await;
    env.start_worker();
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(120)).await;
    }
    let received = env.smtp.received().len();
    let dups = duplicates(&env);
    println!(
        "kill -9 run: 2000 messages, {received} emails received, {dups} Message-IDs received twice"
    );
    assert_eq!(received - dups, 2000, "every message delivered");
    // The ambiguous window covers the sends in flight at the kill: at most
    // one batch task's emails (their `sent` is committed together).
    assert!(
        dups <= platform::tasks::BATCH_MEMBERS,
        "duplicates only from the ambiguous window of the in-flight sends: {dups}"
    );
}
