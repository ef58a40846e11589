//! Account warm-up: an effective daily limit that ramps up by the day,
//! played with the test clock (`TEST_CLOCK_OFFSET_DAYS`).

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{eventually, TestEnv};

const ACCOUNTS: &str = "/api/v1/admin/email-accounts";

/// The account as the API shows it with the clock `days` ahead.
async fn account_on_day(env: &mut TestEnv, id: &str, days: i64) -> Value {
    let mut settings = env.settings();
    settings.clock_offset_days = days;
    env.start_api_with(settings).await;
    let admin = env.api().admin_token(&env.pool).await;
    let res = env.api().get(&format!("{ACCOUNTS}/{id}"), &admin).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["data"].clone()
}

/// Waits until `sent` messages are sent, then checks that no more are
/// for a few quota rounds (QUOTA_WAIT_SECONDS is 1 in tests).
async fn sent_settles_at(env: &TestEnv, sent: i64) {
    eventually(&format!("{sent} sent"), Duration::from_secs(30), || async {
        (env.count_status("sent").await == sent).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.count_status("sent").await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_ramps_the_effective_daily_limit_day_by_day() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;
    let today = Utc::now().date_naive();
    let res = env
        .api()
        .post(
            ACCOUNTS,
            &admin,
            &json!({
                "email": "warm@example.com", "smtp_host": "127.0.0.1", "smtp_port": env.smtp.port(),
                "smtp_password": "pw", "tls_mode": "none", "daily_limit": 10,
                "warmup": {"start_limit": 2, "growth_factor": 2.0},
            }),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let account = &res.body["data"];
    let id = account["id"].as_str().unwrap().to_string();
    assert_eq!(account["effective_daily_limit"], 2);
    assert_eq!(account["remaining_today"], 2);
    assert_eq!(
        account["warmup"],
        json!({"start_date": today, "start_limit": 2, "growth_factor": 2.0, "day": 0,
               "limit_today": 2, "completes_on": today + chrono::Days::new(3), "complete": false})
    );

    // Day 0: two of five go, the others wait for quota.
    env.start_worker();
    for i in 0..5 {
        env.api()
            .send_simple(&admin, &format!("d0-{i}@example.org"))
            .await;
    }
    sent_settles_at(&env, 2).await;
    assert_eq!(env.count_status("queued").await, 3);
    let waiting: String =
        sqlx::query_scalar("SELECT error FROM message_records WHERE status = 'queued' LIMIT 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(waiting.starts_with("quota:"), "{waiting}");

    // Day 1 (a worker whose clock is a day ahead): a new day's count and a
    // limit of four: the three waiting and one more of three new ones.
    env.signal_worker(0, "KILL").await;
    env.wait_worker(0, Duration::from_secs(10)).await;
    env.start_worker_with(&[("TEST_CLOCK_OFFSET_DAYS", "1")]);
    sent_settles_at(&env, 5).await;
    let day1 = account_on_day(&mut env, &id, 1).await;
    assert_eq!(
        (
            &day1["effective_daily_limit"],
            &day1["daily_sent_count"],
            &day1["remaining_today"]
        ),
        (&json!(4), &json!(3), &json!(1))
    );
    assert_eq!(
        (&day1["warmup"]["day"], &day1["warmup"]["limit_today"]),
        (&json!(1), &json!(4))
    );
    let admin = env.api().admin_token(&env.pool).await;
    for i in 0..3 {
        env.api()
            .send_simple(&admin, &format!("d1-{i}@example.org"))
            .await;
    }
    sent_settles_at(&env, 6).await;

    // Day 3: the schedule reaches the daily limit; the two waiting go.
    env.signal_worker(1, "KILL").await;
    env.wait_worker(1, Duration::from_secs(10)).await;
    env.start_worker_with(&[("TEST_CLOCK_OFFSET_DAYS", "3")]);
    sent_settles_at(&env, 8).await;
    let day3 = account_on_day(&mut env, &id, 3).await;
    assert_eq!(day3["effective_daily_limit"], 10);
    assert_eq!(day3["warmup"]["complete"], true);
    assert_eq!(env.smtp.count(), 8);

    // Removing the schedule gives the whole daily limit at once.
    let admin = env.api().admin_token(&env.pool).await;
    let res = env
        .api()
        .request(
            Method::PATCH,
            &format!("{ACCOUNTS}/{id}"),
            Some(&admin),
            Some(&json!({"warmup": null})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["warmup"], Value::Null);
    assert_eq!(res.body["data"]["effective_daily_limit"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_settings_are_validated_and_shown_in_the_list() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;
    let api = env.api();
    let account = api
        .add_account(&admin, env.smtp.port(), "a@example.com", 1000, 0)
        .await;
    assert_eq!(account["warmup"], Value::Null);
    assert_eq!(account["effective_daily_limit"], 1000);
    let path = format!("{ACCOUNTS}/{}", account["id"].as_str().unwrap());
    for (warmup, field) in [
        (
            json!({"start_limit": 10, "growth_factor": 1.0}),
            "warmup.growth_factor",
        ),
        (
            json!({"start_limit": 10, "growth_factor": 11}),
            "warmup.growth_factor",
        ),
        (json!({"start_limit": 0}), "warmup.start_limit"),
    ] {
        let res = api
            .request(
                Method::PATCH,
                &path,
                Some(&admin),
                Some(&json!({"warmup": warmup})),
            )
            .await;
        assert_eq!(
            (res.status, res.code(), res.body["error"]["field"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                Some(field)
            ),
            "{warmup}: {}",
            res.body
        );
    }
    let res = api
        .request(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(&json!({"warmup": {"start_limit": 50}, "extra": 1})),
        )
        .await;
    assert_eq!(res.code(), "invalid_body");

    // Started four days ago, doubling from 50: 50, 100, 200, 400, 800 today.
    let start = Utc::now().date_naive() - chrono::Days::new(4);
    let res = api
        .request(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(&json!({"warmup": {"start_date": start, "start_limit": 50}})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let res = api.get(ACCOUNTS, &admin).await;
    let listed = &res.body["data"][0];
    assert_eq!(listed["effective_daily_limit"], 800);
    assert_eq!(listed["warmup"]["day"], 4);
    assert_eq!(listed["warmup"]["growth_factor"], 2.0);
    assert_eq!(
        listed["warmup"]["completes_on"],
        json!(start + chrono::Days::new(5))
    );
    // The audit log says what changed, and the schedule.
    let res = api
        .get(
            "/api/v1/admin/audit-log?action=email_account.update",
            &admin,
        )
        .await;
    let entry = &res.body["data"]["items"][0]["details"];
    assert_eq!(entry["changed"], json!(["warmup"]));
    assert_eq!(entry["warmup"]["start_limit"], 50);
}
