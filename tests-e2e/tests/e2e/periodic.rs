//! Periodic Celery tasks published exactly once per due time with two
//! schedulers, and the leader's retention cleanup.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

const PATH: &str = "/api/v1/admin/periodic-tasks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_task_is_published_once_per_due_time_with_two_schedulers() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100_000).await;
    let api = env.api();
    let task = json!({"name": "tick", "task": "notifications.send_email",
        "kwargs": {"to": "p@example.org", "subject": "Tick", "content": "<p>tick</p>"},
        "cron": "*/2 * * * * *"});
    for (bad, code, field) in [
        (json!({"cron": "nope"}), "invalid_cron", "cron"),
        (
            json!({"time_zone": "Nowhere/Land"}),
            "invalid_time_zone",
            "time_zone",
        ),
        (json!({"interval_seconds": 5}), "validation_error", "cron"),
        (json!({"queue": "elsewhere"}), "unknown_queue", "queue"),
    ] {
        let mut body = task.clone();
        for (k, v) in bad.as_object().expect("object") {
            body[k] = v.clone();
        }
        let res = api.post(PATH, &token, &body).await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{bad}: {}",
            res.body
        );
        assert_eq!(res.body["error"]["field"], field);
    }
    env.start_worker();
    env.start_scheduler();
    env.start_scheduler();
    env.wait_scheduler_leader("a scheduler leader", Duration::from_secs(30))
        .await;
    let res = env.api().post(PATH, &token, &task).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id: Uuid = res.body["data"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let first: DateTime<Utc> = res.body["data"]["next_run_at"]
        .as_str()
        .expect("next")
        .parse()
        .expect("time");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut off = task.clone();
    off["is_active"] = json!(false);
    let res = env.api().put(&format!("{PATH}/{id}"), &token, &off).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let stopped = Utc::now();
    let times: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT scheduled_for FROM periodic_task_runs WHERE periodic_task_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .expect("runs");
    let expected: Vec<DateTime<Utc>> = (0..)
        .map(|i| first + chrono::Duration::seconds(2 * i))
        .take_while(|t| *t <= stopped)
        .collect();
    assert!(times.len() >= 3, "{times:?}");
    assert!(
        times == expected || times[..] == expected[..expected.len() - 1],
        "runs {times:?}, expected {expected:?}"
    );
    env.smtp
        .wait_for(times.len(), Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.smtp.count(), times.len(), "one email per due time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_deletes_old_records_timelines_keys_dead_letters_and_settled_webhook_events() {
    let mut env = TestEnv::with_vars(&[
        ("MAINTENANCE_INTERVAL_SECONDS", "1"),
        ("MAINTENANCE_BATCH", "2"),
        ("MESSAGE_RETENTION_DAYS", "30"),
    ])
    .await;
    let pool = env.pool.clone();
    let key = platform::db::api_keys::insert(
        &pool,
        "k",
        "",
        &["send".to_string()],
        &platform::crypto::generate_api_credentials(),
    )
    .await
    .expect("key");
    // (status, age in days, kept?)
    let cases = [
        ("sent", 31, false),
        ("failed", 40, false),
        ("cancelled", 45, false),
        ("sent", 29, true),
        ("queued", 60, true),
        ("scheduled", 60, true),
    ];
    let mut ids = Vec::new();
    for (status, days, _) in cases {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO message_records (id, task_id, status, to_addrs, cc_addrs, bcc_addrs,
                subject, html_body, created_at)
             VALUES ($1, $2, $3, ARRAY['a@example.org'], '{}', '{}', 's', 'b',
                now() - make_interval(days => $4))",
        )
        .bind(id)
        .bind(id.to_string())
        .bind(status)
        .bind(days)
        .execute(&pool)
        .await
        .expect("insert message");
        ids.push(id);
    }
    for (name, hours) in [("old", 25), ("new", 1)] {
        sqlx::query(
            "INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash,
                response_status, response_body, created_at)
             VALUES ($1, $2, 'h', 202, '{}', now() - make_interval(hours => $3))",
        )
        .bind(key.id)
        .bind(name)
        .bind(hours)
        .execute(&pool)
        .await
        .expect("insert key");
    }
    for (reason, requeued_days) in [("requeued long ago", Some(31)), ("waiting", None)] {
        sqlx::query(
            "INSERT INTO dead_letters (reason, headers, body, created_at, requeued_at)
             VALUES ($1, '{}', '', now() - interval '40 days',
                now() - make_interval(days => $2))",
        )
        .bind(reason)
        .bind(requeued_days)
        .execute(&pool)
        .await
        .expect("insert dead letter");
    }
    // Webhook events: (age in days, its delivery's status, kept?). One
    // still being retried is kept however old.
    let endpoint = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, owner_key_id, url, event_types, secret_ciphertext,
            secret_nonce, secret_key_id)
         VALUES ($1, $2, 'https://hooks.example.com/', '{email.sent}', '\\x00', '\\x00', 'k')",
    )
    .bind(endpoint)
    .bind(key.id)
    .execute(&pool)
    .await
    .expect("insert endpoint");
    let events = [
        (31, "delivered", false),
        (40, "failed", false),
        (40, "pending", true),
        (29, "delivered", true),
    ];
    let mut event_ids = Vec::new();
    for (days, status, _) in events {
        let id = Uuid::now_v7();
        sqlx::query(
            "WITH e AS (INSERT INTO webhook_events (id, event_type, payload, created_at)
                        VALUES ($1, 'email.sent', '{}', now() - make_interval(days => $2)))
             INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status)
             VALUES (gen_random_uuid(), $1, $3, $4)",
        )
        .bind(id)
        .bind(days)
        .bind(endpoint)
        .bind(status)
        .execute(&pool)
        .await
        .expect("insert event");
        event_ids.push(id);
    }
    let timeline_rows = |pool: sqlx::PgPool, ids: Vec<Uuid>| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM message_events WHERE message_id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(&pool)
        .await
        .expect("count timeline")
    };
    let deleted: Vec<Uuid> = ids
        .iter()
        .zip(cases)
        .filter(|(_, (_, _, kept))| !kept)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        timeline_rows(pool.clone(), deleted.clone()).await,
        3,
        "each record has its `accepted` event"
    );
    env.start_scheduler();
    eventually("old rows deleted", Duration::from_secs(20), || async {
        let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM message_records")
            .fetch_one(&pool)
            .await
            .expect("count");
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
            .fetch_one(&pool)
            .await
            .expect("count");
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&pool)
            .await
            .expect("count");
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
            .fetch_one(&pool)
            .await
            .expect("count");
        (messages == 3 && keys == 1 && dead == 1 && events == 2).then_some(())
    })
    .await;
    assert_eq!(
        timeline_rows(pool.clone(), deleted).await,
        0,
        "timelines go with their records"
    );
    for (id, (days, status, kept)) in event_ids.iter().zip(events) {
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(found == 1, kept, "{days} days, {status}");
    }
    for (id, (status, _, kept)) in ids.iter().zip(cases) {
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM message_records WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(found == 1, kept, "{status}");
    }
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_one(&pool)
        .await
        .expect("left");
    assert_eq!(reason, "waiting");
}
