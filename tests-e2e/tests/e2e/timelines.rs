//! Message timelines (`GET /messages/{id}/events`): every change of a
//! message, written by the database whatever made it, with which worker
//! and account took it, the SMTP replies and when a retry is due; and the
//! sender's `metadata`, stored, bounded and echoed.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use smtp_sink::Fault;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

/// The message's timeline, as the API gives it.
async fn timeline(env: &TestEnv, token: &str, id: Uuid) -> Vec<Value> {
    let res = env
        .api()
        .get(&format!("/api/v1/messages/{id}/events"), token)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["data"]["items"].as_array().unwrap().clone()
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_shows_the_claims_the_replies_and_the_retry_of_a_message() {
    let (env, admin) = TestEnv::sending(&[("SEND_RETRY_BACKOFF", "3")], 1000).await;
    let (_, token) = env.api().token(&env.pool, &["send", "read"]).await;
    env.smtp.set_recipient_fault(
        "later@example.com",
        Fault::Reply(451, "4.7.1 Try again later".into()),
    );
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "later@example.com", "subject": "Hi", "content": "<p>Hi</p>",
                    "metadata": {"order_id": "A-1042"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let id: Uuid = res.body["data"]["message_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The first attempt meets a 451 and a retry is scheduled; once the
    // server takes it, the retry is sent.
    eventually("a retry scheduled", Duration::from_secs(30), || async {
        names(&timeline(&env, &token, id).await)
            .contains(&"retry_scheduled")
            .then_some(())
    })
    .await;
    env.smtp.clear_faults();
    env.wait_status(id, "sent", Duration::from_secs(30)).await;
    let events = timeline(&env, &token, id).await;
    assert_eq!(
        names(&events),
        ["accepted", "claimed", "retry_scheduled", "claimed", "sent"],
        "{events:#?}"
    );
    let (accepted, first, retry, second, sent) =
        (&events[0], &events[1], &events[2], &events[3], &events[4]);
    assert_eq!(accepted["status"], "queued");
    assert_eq!(first["status"], "sending");
    assert_eq!(first["detail"]["account"], "sender@example.com");
    assert_eq!(first["detail"]["attempt"], 1);
    assert_eq!(first["detail"]["reclaimed"], false);
    assert!(first["detail"]["worker"].is_string(), "{first}");
    assert!(
        retry["detail"]["smtp_response"]
            .as_str()
            .is_some_and(|r| r.contains("451")),
        "{retry}"
    );
    assert!(retry["detail"]["due_at"].is_string(), "{retry}");
    assert_eq!(second["detail"]["attempt"], 2);
    assert_eq!(sent["status"], "sent");
    assert!(
        sent["detail"]["smtp_response"]
            .as_str()
            .is_some_and(|r| r.starts_with("250")),
        "{sent}"
    );
    assert!(sent["detail"]["smtp_message_id"].is_string());
    let times: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "in time order");

    // Pages follow the cursor.
    let res = env
        .api()
        .get(&format!("/api/v1/messages/{id}/events?limit=2"), &token)
        .await;
    let cursor = res.body["data"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let res = env
        .api()
        .get(
            &format!("/api/v1/messages/{id}/events?limit=10&cursor={cursor}"),
            &token,
        )
        .await;
    assert_eq!(
        names(res.body["data"]["items"].as_array().unwrap()),
        ["retry_scheduled", "claimed", "sent"]
    );

    // The message shows its metadata; another key sees neither it nor its
    // timeline, an admin sees both.
    let message = env
        .api()
        .get(&format!("/api/v1/messages/{id}"), &token)
        .await;
    assert_eq!(
        message.body["data"]["metadata"],
        json!({"order_id": "A-1042"})
    );
    let (_, other) = env.api().token(&env.pool, &["send", "read"]).await;
    let path = format!("/api/v1/messages/{id}/events");
    assert_eq!(
        env.api().get(&path, &other).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(env.api().get(&path, &admin).await.status, StatusCode::OK);
    let missing = env
        .api()
        .get(
            &format!("/api/v1/messages/{}/events", Uuid::now_v7()),
            &token,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_and_a_suppressed_send_say_so_in_their_timelines() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;
    let res = env
        .api()
        .post(
            "/api/v1/suppressions",
            &admin,
            &json!({"address": "gone@example.com", "reason": "manual"}),
        )
        .await;
    assert!(res.status.is_success(), "{}", res.body);
    let suppressed = env.api().send_simple(&admin, "gone@example.com").await;
    let events = timeline(&env, &admin, suppressed).await;
    assert_eq!(names(&events), ["accepted"]);
    assert_eq!(events[0]["status"], "suppressed");
    assert!(events[0]["detail"]["error"].is_string(), "{events:?}");

    // No worker runs, so the send waits queued until it is cancelled.
    let queued = env
        .api()
        .send_simple(&admin, "changed-my-mind@example.com")
        .await;
    let res = env
        .api()
        .post(
            &format!("/api/v1/messages/{queued}/cancel"),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let events = timeline(&env, &admin, queued).await;
    assert_eq!(names(&events), ["accepted", "cancelled"]);
    assert_eq!(events[1]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_bounded_with_clear_errors() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    // A map of strings that breaks a bound is a `validation_error` on
    // `metadata`; anything else is not the shape the route takes.
    for (metadata, why, code) in [
        (Value::Object(many), "21 entries", "validation_error"),
        (json!({"": "v"}), "an empty key", "validation_error"),
        (
            json!({"has space": "v"}),
            "a key with a space",
            "validation_error",
        ),
        (
            json!({"k".repeat(41): "v"}),
            "a 41-character key",
            "validation_error",
        ),
        (
            json!({"k": "v".repeat(501)}),
            "a 501-character value",
            "validation_error",
        ),
        (
            json!({"k": "line\nbreak"}),
            "a control character",
            "validation_error",
        ),
        (json!({"k": 1}), "a number", "invalid_body"),
        (json!(["k"]), "a list", "invalid_body"),
    ] {
        let res = env
            .api()
            .post(
                "/api/v1/messages/email/send",
                &token,
                &json!({"to": "a@example.com", "subject": "s", "content": "c", "metadata": metadata}),
            )
            .await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{why}: {}",
            res.body
        );
        assert_eq!(res.code(), code, "{why}: {}", res.body);
        if code == "validation_error" {
            assert_eq!(res.body["error"]["field"], "metadata", "{why}");
        }
    }
    // Within the limits it is kept as given; in a batch too.
    let full: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("key.{i}:x-y_z"), json!("é".repeat(500))))
        .collect();
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/batch",
            &token,
            &json!({"messages": [
                {"to": "a@example.com", "subject": "s", "content": "c", "metadata": full},
                {"to": "b@example.com", "subject": "s", "content": "c", "metadata": {"k": 1}}]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["data"]["accepted"], 1);
    assert_eq!(
        res.body["data"]["results"][1]["error"]["code"],
        "invalid_body"
    );
    let id = res.body["data"]["results"][0]["message_id"]
        .as_str()
        .unwrap();
    let shown = env
        .api()
        .get(&format!("/api/v1/messages/{id}"), &token)
        .await;
    assert_eq!(shown.body["data"]["metadata"], Value::Object(full));
}
