//! The suppression list holds at request time and again at send time.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_addresses_are_recorded_but_not_sent() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["send", "read"]).await;
    let (_, reader) = api.token(&env.pool, &["read"]).await;

    let res = api
        .post(
            "/api/v1/suppressions",
            &token,
            &json!({"address": "Opted.Out@Example.org", "reason": "unsubscribed"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert_eq!(res.body["data"]["address"], "opted.out@example.org");
    let res = api
        .post(
            "/api/v1/suppressions",
            &token,
            &json!({"address": "opted.out@example.org"}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "already_suppressed")
    );
    let res = api
        .post("/api/v1/suppressions", &token, &json!({"address": "nope"}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
    let res = api
        .post(
            "/api/v1/suppressions",
            &reader,
            &json!({"address": "x@example.org"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = api.get("/api/v1/suppressions", &token).await;
    assert_eq!(res.body["data"]["items"][0]["reason"], "unsubscribed");
    // Another key lists only the addresses it added (see ownership.rs).
    let res = api.get("/api/v1/suppressions", &reader).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["items"], json!([]));

    let res = api
        .post("/api/v1/messages/email/send", &token,
            &json!({"to": "ok@example.org", "bcc": "OPTED.OUT@example.org", "subject": "s", "content": "c"}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["data"]["status"], "suppressed");
    let id: Uuid = res.body["data"]["message_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(env.status(id).await, "suppressed");
    let outbox = env.outbox_len().await;
    assert_eq!(outbox, 0, "a suppressed message is not enqueued");

    // Removing a suppression mails the address again: admin keys only.
    let res = api
        .delete("/api/v1/suppressions/OPTED.OUT@example.org", &token)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let admin = api.admin_token(&env.pool).await;
    let res = api
        .delete("/api/v1/suppressions/OPTED.OUT@example.org", &admin)
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let res = api
        .delete("/api/v1/suppressions/opted.out@example.org", &admin)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_added_after_enqueueing_still_holds() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100).await;
    let late = env.api().send_simple(&token, "late@example.org").await;
    let fine = env.api().send_simple(&token, "fine@example.org").await;
    // The task is published to RabbitMQ before the suppression exists.
    eventually(
        "the outbox to be relayed",
        Duration::from_secs(10),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&env.pool)
                .await
                .ok()?;
            (n == 0).then_some(())
        },
    )
    .await;
    let res = env
        .api()
        .post(
            "/api/v1/suppressions",
            &token,
            &json!({"address": "LATE@example.org", "reason": "complaint"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    env.start_worker();
    env.wait_status(fine, "sent", Duration::from_secs(20)).await;
    env.wait_status(late, "suppressed", Duration::from_secs(20))
        .await;
    let received = env.smtp.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["fine@example.org"]);
    let account = &env
        .api()
        .get("/api/v1/admin/email-accounts", &token)
        .await
        .body["data"][0];
    assert_eq!(
        account["daily_sent_count"], 1,
        "the suppressed message's quota is given back"
    );
}
