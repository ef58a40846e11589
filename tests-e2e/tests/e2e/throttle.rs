//! Per-account throttles hold across worker processes.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use smtp_sink::{Fault, Stage};

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
