//! Per-key rate limits, counted in Redis: headers on every authenticated
//! response, 429 with Retry-After, recovery when the window turns over.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_hit_and_recovers() {
    let mut env = TestEnv::with_vars(&[
        ("RATE_LIMIT_PER_MINUTE", "3"),
        ("RATE_LIMIT_WINDOW_SECONDS", "2"),
    ])
    .await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["read"]).await;
    // Align to the start of a window so three requests fit in one.
    eventually("a fresh window", Duration::from_secs(5), || async {
        let res = api.get("/api/v1/messages", &token).await;
        (res.status == StatusCode::OK && res.headers["x-ratelimit-remaining"] == "2").then_some(())
    })
    .await;
    let res = api.get("/api/v1/messages", &token).await;
    assert_eq!(res.headers["x-ratelimit-limit"], "3");
    let mut limited = None;
    for _ in 0..3 {
        let res = api.get("/api/v1/messages", &token).await;
        if res.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(res);
            break;
        }
    }
    let res = limited.expect("the fourth request in a window is refused");
    assert_eq!(res.code(), "rate_limited");
    assert_eq!(res.headers["x-ratelimit-remaining"], "0");
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    eventually(
        "the window to turn over",
        Duration::from_secs(5),
        || async {
            (api.get("/api/v1/messages", &token).await.status == StatusCode::OK).then_some(())
        },
    )
    .await;
    // Unauthenticated routes carry no rate-limit headers.
    let res = api
        .request(reqwest::Method::GET, "/api/v1/version", None, None)
        .await;
    assert!(res.headers.get("x-ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_may_carry_its_own_limit() {
    let mut env = TestEnv::with_vars(&[("RATE_LIMIT_WINDOW_SECONDS", "60")]).await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let res = api
        .post(
            "/api/v1/admin/api-keys",
            &admin,
            &json!({"name": "tight", "scopes": ["read"], "rate_limit_per_minute": 2}),
        )
        .await;
    let (key, secret) = (
        res.body["data"]["api_key"].clone(),
        res.body["data"]["api_secret"].clone(),
    );
    let res = api.sign_in(key, secret).await;
    let token = res.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Five requests: even if a window boundary falls among them, one window holds three.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(api.get("/api/v1/messages", &token).await.status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "a limit of 2 per window: {statuses:?}"
    );
    // The admin key (the default, RATE_LIMIT_PER_MINUTE) is unaffected.
    let res = api.get("/api/v1/messages", &admin).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.headers["x-ratelimit-limit"],
        env.vars["RATE_LIMIT_PER_MINUTE"].as_str()
    );
}
