//! The send path updates message records in place (HOT), and the live set
//! that replaced the status indexes (`live_messages`, V21) follows every
//! change of a message.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

const SEND: &str = "/api/v1/messages/email/send";

/// Columns the send path changes (claim, then outcome). An index that
/// covers one of them, as a key, an expression or a predicate, makes both
/// updates of every email write an entry into every index of the table.
const CHANGED_BY_SENDING: &[&str] = &[
    "status",
    "attempts",
    "sending_at",
    "account_id",
    "account_email",
    "claimed_by",
    "due_at",
    "smtp_message_id",
    "smtp_response",
    "error",
    "sent_at",
    "failed_at",
    "updated_at",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_index_of_message_records_covers_a_column_the_send_path_changes() {
    let env = TestEnv::new().await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index
          WHERE indrelid = 'message_records'::regclass",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(indexes.len() >= 5, "{indexes:?}");
    for definition in &indexes {
        let words: HashSet<&str> = definition
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        for column in CHANGED_BY_SENDING {
            assert!(
                !words.contains(column),
                "{definition} covers {column}, which the send path changes"
            );
        }
    }
}

async fn live(env: &TestEnv) -> Vec<(Uuid, Option<chrono::DateTime<chrono::Utc>>)> {
    sqlx::query_as("SELECT id, release_at FROM live_messages ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_follow_every_change_and_sends_update_records_in_place() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.add_sender(&token, 1000).await;

    // Queued, no worker yet: all live, none with a release time.
    let recipients: Vec<String> = (0..40).map(|i| format!("h{i}@example.org")).collect();
    env.api().send_simple_batch(&token, &recipients).await;
    let rows = live(&env).await;
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|(_, at)| at.is_none()));

    // Scheduled: live with its send_at; cancelled: gone.
    let at = chrono::Utc::now() + chrono::Duration::hours(2);
    let mut scheduled = Vec::new();
    for _ in 0..2 {
        let res = env
            .api()
            .post(
                SEND,
                &token,
                &json!({"to": "later@example.org", "subject": "Later", "content": "<p>x</p>",
                        "send_at": at.to_rfc3339()}),
            )
            .await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
        let id: Uuid = res.body["data"]["message_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        scheduled.push(id);
    }
    let release_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT release_at FROM live_messages WHERE id = $1")
            .bind(scheduled[0])
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let release_at = release_at.expect("a scheduled message's release time");
    assert!(
        (release_at - at).num_milliseconds().abs() < 1,
        "{release_at} {at}"
    );
    let res = env
        .api()
        .post(
            &format!("/api/v1/messages/{}/cancel", scheduled[1]),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(live(&env).await.len(), 41);

    // Sent: out, and the two updates of each were mostly heap-only.
    env.start_worker();
    eventually("40 sends", Duration::from_secs(30), || async {
        (env.count_status("sent").await == 40).then_some(())
    })
    .await;
    let rows = live(&env).await;
    assert_eq!(rows, vec![(scheduled[0], Some(release_at))]);
    let (updated, hot): (i64, i64) = eventually(
        "the table's update statistics",
        Duration::from_secs(30),
        || async {
            let (updated, hot): (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                  WHERE relname = 'message_records'",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap();
            (updated >= 80).then_some((updated, hot))
        },
    )
    .await;
    println!("message_records: {updated} updates, {hot} of them HOT");
    assert!(hot * 2 >= updated, "{hot} of {updated} updates were HOT");

    // A deleted record (retention deletes only final ones; a live one is
    // deleted here by hand) leaves the live set with it.
    sqlx::query("DELETE FROM message_records WHERE id = $1")
        .bind(scheduled[0])
        .execute(&env.pool)
        .await
        .unwrap();
    assert!(live(&env).await.is_empty());
}
