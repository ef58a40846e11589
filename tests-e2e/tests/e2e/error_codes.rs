//! Error codes that need a particular situation to appear.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestEnv;

const SEND: &str = "/api/v1/messages/email/send";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_errors_have_their_codes() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (key_id, token) = api.token(&env.pool, &["send"]).await;
    let body = json!({"to": "a@example.org", "subject": "s", "content": "c"});

    let res = api
        .client
        .post(api.url(SEND))
        .bearer_auth(&token)
        .header("idempotency-key", "x".repeat(300))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_idempotency_key");

    // Another request holding the same key's lock is "in flight".
    let mut holder = env.pool.begin().await.unwrap();
    assert!(
        platform::db::idempotency::try_lock(&mut holder, key_id, "busy")
            .await
            .unwrap()
    );
    let res = api
        .client
        .post(api.url(SEND))
        .bearer_auth(&token)
        .header("idempotency-key", "busy")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_in_flight");
    holder.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_listing_without_rabbitmq_is_503() {
    let mut env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.broker_urls = vec!["amqp://guest:guest@127.0.0.1:1/%2f".into()];
    env.start_api_with(settings).await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let res = api.get("/api/v1/admin/queues", &admin).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
    );
}
