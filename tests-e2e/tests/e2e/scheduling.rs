//! Delayed sends are recorded `scheduled`; cancelling is race-free against
//! the workers' claim.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

const SEND: &str = "/api/v1/messages/email/send";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_at_schedules_without_enqueueing_and_can_be_cancelled() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["send", "read"]).await;
    let (_, other) = api.token(&env.pool, &["send", "read"]).await;
    let at = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let res = api
        .post(SEND, &token, &json!({"to": "a@example.org", "subject": "Later", "content": "<p>x</p>", "send_at": at}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["data"]["status"], "scheduled");
    let id: Uuid = res.body["data"]["message_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let outbox = env.outbox_len().await;
    assert_eq!(outbox, 0, "a scheduled message has no task yet");
    let res = api.get(&format!("/api/v1/messages/{id}"), &token).await;
    assert_eq!(res.body["data"]["status"], "scheduled");
    assert!(res.body["data"]["send_at"].is_string());

    for bad in ["2020-01-01T00:00:00Z", "tomorrow", "2999-01-01T00:00:00Z"] {
        let res = api
            .post(
                SEND,
                &token,
                &json!({"to": "a@example.org", "subject": "s", "content": "c", "send_at": bad}),
            )
            .await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_send_at"),
            "{bad}"
        );
        assert_eq!(res.body["error"]["field"], "send_at");
    }

    let cancel = format!("/api/v1/messages/{id}/cancel");
    let res = api.post(&cancel, &other, &json!({})).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found"),
        "another key's message"
    );
    let res = api.post(&cancel, &token, &json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["status"], "cancelled");
    let res = api.post(&cancel, &token, &json!({})).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "not_cancellable")
    );
    let res = api
        .post(
            &format!("/api/v1/messages/{}/cancel", Uuid::new_v4()),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

/// Cancels race the workers: every message ends either sent or cancelled,
/// never both, and the SMTP server received exactly the sent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_the_workers_never_sends_a_cancelled_message() {
    let (mut env, token) = TestEnv::sending(&[], 1000).await;
    env.start_worker();
    const N: usize = 40;
    let mut ids = Vec::new();
    for i in 0..N {
        let res = env
            .api()
            .post(SEND, &token, &json!({"to": format!("r{i}@example.org"), "subject": format!("race {i}"), "content": "<p>x</p>"}))
            .await;
        assert_eq!(res.status, StatusCode::ACCEPTED);
        ids.push(
            res.body["data"]["message_id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        );
    }
    let api = env.api();
    let cancels = futures_util::future::join_all(ids.iter().map(|id| {
        let path = format!("/api/v1/messages/{id}/cancel");
        let token = token.clone();
        async move {
            let res = api.post(&path, &token, &json!({})).await;
            match res.status {
                StatusCode::OK => true,
                StatusCode::CONFLICT => {
                    assert_eq!(res.code(), "not_cancellable");
                    false
                }
                other => panic!("unexpected {other}: {}", res.body),
            }
        }
    }))
    .await;
    let cancelled: HashSet<Uuid> = ids
        .iter()
        .zip(&cancels)
        .filter_map(|(id, c)| c.then_some(*id))
        .collect();
    // Every message reaches a final state: cancelled exactly when the cancel won.
    for id in &ids {
        let want = if cancelled.contains(id) {
            "cancelled"
        } else {
            "sent"
        };
        env.wait_status(*id, want, Duration::from_secs(30)).await;
    }
    let sent = N - cancelled.len();
    eventually(
        "the SMTP sink to hold every sent message",
        Duration::from_secs(10),
        || async { (env.smtp.received().len() >= sent).then_some(()) },
    )
    .await;
    let received = env.smtp.received();
    assert_eq!(
        received.len(),
        sent,
        "nothing cancelled was sent, nothing sent twice"
    );
    let cancelled_rcpts: HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT to_addrs[1] FROM message_records WHERE status = 'cancelled'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for mail in &received {
        assert!(
            !mail.rcpt_to.iter().any(|r| cancelled_rcpts.contains(r)),
            "{:?}",
            mail.rcpt_to
        );
    }
}
