//! One odd message harms nobody else: NUL characters are refused at the
//! API, a group commit the database refuses is retried message by message,
//! and a task whose data the database refuses is dead-lettered instead of
//! requeued forever.

use std::time::Duration;

use futures_util::future::join_all;
use platform::celery::TaskMessage;
use platform::db::messages::{MessageStatus, NewMessage};
use platform::outbox::OutboxWaker;
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::support::{eventually, publish_tasks, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_without_failing_other_clients_sends() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    let api = env.api();
    // 300 valid sends from 60 concurrent clients, 15 with NUL among them.
    let sends = (0..315).map(|i| {
        let token = token.clone();
        async move {
            let body = if i % 21 == 0 {
                json!({"to": format!("n{i}@example.org"), "subject": "s", "content": "a\u{0}b"})
            } else {
                json!({"to": format!("v{i}@example.org"), "subject": "s", "content": "<p>ok</p>"})
            };
            (
                i,
                api.post("/api/v1/messages/email/send", &token, &body).await,
            )
        }
    });
    let mut results = Vec::new();
    let mut pending: Vec<_> = sends.collect();
    while !pending.is_empty() {
        let rest = pending.split_off(pending.len().min(60));
        results.extend(join_all(pending).await);
        pending = rest;
    }
    let (mut refused, mut accepted) = (0, 0);
    for (i, res) in results {
        if i % 21 == 0 {
            assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
            assert_eq!(res.body["error"]["code"], "invalid_text");
            refused += 1;
        } else {
            assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
            accepted += 1;
        }
    }
    assert_eq!((refused, accepted), (15, 300));
    assert_eq!(env.count_status("queued").await, 300);

    // Everywhere else too: a key, a template, a filter.
    let res = api
        .post(
            "/api/v1/templates",
            &token,
            &json!({"name": "t\u{0}", "subject": "s", "html_body": "b", "variables": []}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert_eq!(res.body["error"]["code"], "invalid_text");
    let res = api.get("/api/v1/messages?recipient=a%00b", &token).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    // An escaped backslash followed by "u0000" is ordinary text.
    let res = api
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "x@example.org", "subject": "s", "content": "\\u0000"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
}

fn new_message(html: &str) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        task_id: Uuid::new_v4().to_string(),
        api_key_id: None,
        to: vec![format!("{}@example.org", Uuid::new_v4().simple())],
        cc: vec![],
        bcc: vec![],
        reply_to: None,
        from_name: None,
        subject: "s".into(),
        html_body: html.into(),
        text_body: None,
        metadata: None,
        unsubscribe_scope: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_the_database_refuses_fails_only_the_bad_message() {
    let env = TestEnv::new().await;
    let ingest = notify_api::ingest::Ingest::start(
        env.pool.clone(),
        env.queue.clone(),
        OutboxWaker::default(),
    );
    // Submitted together, so they share batches; one holds what PostgreSQL
    // cannot store (only a bug in validation would let it this far).
    let messages: Vec<NewMessage> = (0..40)
        .map(|i| new_message(if i == 17 { "bad \u{0}" } else { "<p>ok</p>" }))
        .collect();
    let results = join_all(messages.into_iter().map(|m| ingest.submit(m))).await;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(status) => {
                assert_ne!(i, 17);
                assert_eq!(status, MessageStatus::Queued);
            }
            Err(e) => {
                assert_eq!(i, 17, "{e}");
                let detail = e.detail();
                assert_eq!(detail.code, "unstorable_message");
                assert!(!detail.message.contains("0x00"), "{}", detail.message);
            }
        }
    }
    assert_eq!(env.count_status("queued").await, 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_database_refuses_is_dead_lettered_and_the_rest_go_on() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    env.send_until(&token, "first@example.org", "sent", Duration::from_secs(20))
        .await;

    // What a Python producer can send: NUL in the email, and in the task name.
    let kwargs = |to: &str, content: &str| -> Map<String, Value> {
        json!({"to": to, "subject": "Py", "content": content})
            .as_object()
            .unwrap()
            .clone()
    };
    let tasks = [
        TaskMessage::new(
            "notifications.send_email",
            "nul-content",
            vec![],
            kwargs("nul@example.org", "a\u{0}b"),
        ),
        TaskMessage::new("bad\u{0}name", "nul-name", vec![], Map::new()),
        TaskMessage::new(
            "notifications.send_email",
            "after-nul",
            vec![],
            kwargs("after@example.org", "<p>fine</p>"),
        ),
    ];
    publish_tasks(&env.queue, &tasks).await;

    let dead: Vec<(String, String)> = eventually(
        "both poison tasks dead-lettered",
        Duration::from_secs(30),
        || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT task_id, reason FROM dead_letters WHERE task_id IN ('nul-content', 'nul-name')
                 ORDER BY task_id",
            )
            .fetch_all(&env.pool)
            .await
            .unwrap();
            (rows.len() == 2).then_some(rows)
        },
    )
    .await;
    assert_eq!(dead[0].0, "nul-content");
    assert!(dead[0].1.contains("SQLSTATE 22"), "{}", dead[0].1);
    assert!(
        !dead[0].1.contains("0x00"),
        "reason leaks the database's text: {}",
        dead[0].1
    );
    let name: String =
        sqlx::query_scalar("SELECT task_name FROM dead_letters WHERE task_id = 'nul-name'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(name, "bad\u{FFFD}name");

    let after: String = eventually("the next task sent", Duration::from_secs(30), || async {
        sqlx::query_scalar("SELECT status FROM message_records WHERE task_id = 'after-nul'")
            .fetch_optional(&env.pool)
            .await
            .unwrap()
            .filter(|s: &String| s == "sent")
    })
    .await;
    assert_eq!(after, "sent");
    // Dead-lettered once, not again and again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(copies, 2);
}

// A current-thread runtime: every submit is queued before a writer runs, so
// all ten would share one statement without the byte cap.
#[tokio::test]
async fn group_commit_caps_its_statements_by_bytes() {
    let env = TestEnv::new().await;
    let ingest = notify_api::ingest::Ingest::start(
        env.pool.clone(),
        env.queue.clone(),
        OutboxWaker::default(),
    );
    // 280 MiB together: over PostgreSQL's 256 MiB limit for one jsonb value.
    let body = format!("<p>{}</p>", "x".repeat(28 * 1024 * 1024));
    let messages: Vec<NewMessage> = (0..10).map(|_| new_message(&body)).collect();
    let results = join_all(messages.into_iter().map(|m| ingest.submit(m))).await;
    for result in results {
        assert_eq!(result.expect("recorded"), MessageStatus::Queued);
    }
    assert_eq!(env.count_status("queued").await, 10);
}
