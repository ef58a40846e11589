//! Daily limits across several worker processes.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{eventually, TestEnv};

async fn sent_per_account(env: &TestEnv) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT account_email, count(*) FROM message_records WHERE status = 'sent' GROUP BY account_email",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_and_daily_limits_hold_across_two_workers_and_excess_waits() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    env.start_worker();
    env.start_worker();
    let api = env.api();
    let token = api.admin_token(&env.pool).await;
    let port = env.smtp.port();
    api.add_account(&token, port, "high@example.com", 3, 30)
        .await;
    api.add_account(&token, port, "mid@example.com", 4, 20)
        .await;
    let low = api
        .add_account(&token, port, "low@example.com", 5, 10)
        .await;

    // The first messages go through the highest-priority account.
    for i in 0..2 {
        let id = api
            .send_simple(&token, &format!("first{i}@example.org"))
            .await;
        env.wait_status(id, "sent", Duration::from_secs(20)).await;
    }
    assert_eq!(
        sent_per_account(&env).await,
        HashMap::from([("high@example.com".to_string(), 2)])
    );

    // 16 more: 10 fit in what remains of the quotas (1 + 4 + 5), 6 must wait.
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(api.send_simple(&token, &format!("r{i}@example.org")).await);
    }
    eventually("12 messages sent", Duration::from_secs(30), || async {
        (env.count_status("sent").await == 12).then_some(())
    })
    .await;
    // Give the waiting messages a few quota checks to prove they stay waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_account = sent_per_account(&env).await;
    assert_eq!(
        per_account,
        HashMap::from([
            ("high@example.com".to_string(), 3),
            ("mid@example.com".to_string(), 4),
            ("low@example.com".to_string(), 5),
        ])
    );
    assert_eq!(
        env.count_status("queued").await,
        6,
        "the excess waits, neither failed nor lost"
    );
    let waiting: String =
        sqlx::query_scalar("SELECT error FROM message_records WHERE status = 'queued' LIMIT 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(waiting.contains("quota"), "{waiting}");
    // What the SMTP server saw agrees: no account beyond its limit.
    let mut by_user: HashMap<String, usize> = HashMap::new();
    for mail in env.smtp.received() {
        *by_user
            .entry(mail.auth_user.unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(by_user["high@example.com"], 3);
    assert_eq!(by_user["mid@example.com"], 4);
    assert_eq!(by_user["low@example.com"], 5);

    // Raising a limit releases the waiting messages.
    let res = api
        .request(
            Method::PATCH,
            &format!(
                "/api/v1/admin/email-accounts/{}",
                low["id"].as_str().unwrap()
            ),
            Some(&token),
            Some(&json!({"daily_limit": 20})),
        )
        .await;
    assert_eq!(res.body["data"]["remaining_today"], 15);
    for id in ids {
        env.wait_status(id, "sent", Duration::from_secs(30)).await;
    }
    assert_eq!(sent_per_account(&env).await["low@example.com"], 11);
    assert_eq!(env.smtp.received().len(), 18, "every message exactly once");
}
