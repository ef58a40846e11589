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
    let api = env.api();
    let token = api.admin_token(&env.pool).await;
    let account = api
        .add_account(&token, env.smtp.port(), "limited@example.com", 1000, 0)
        .await;
    let path = format!(
        "/api/v1/admin/email-accounts/{}",
        account["id"].as_str().unwrap()
    );
    let res = api
        .request(Method::PATCH, &path, Some(&token), Some(&limit))
        .await;
    for (field, value) in limit.as_object().unwrap() {
        assert_eq!(&res.body["data"][field], value, "{}", res.body);
    }
    (env, token)
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
