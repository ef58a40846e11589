//! PostgreSQL lost in the middle of group commits: requests are answered
//! 503 (never 500, never a hang), and every message the API acknowledged,
//! and every record that was committed at all, is delivered exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::support::proxy::TcpProxy;
use crate::support::{eventually, TestEnv};

const DURING: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_a_database_outage_get_503_and_acknowledged_ones_are_delivered() {
    let mut env = TestEnv::new().await;
    // The API reaches PostgreSQL only through a proxy the test controls;
    // the worker and the test itself connect directly.
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.database_url = settings
        .database_url
        .replace("127.0.0.1:5432", &proxy.addr.to_string());
    env.start_api_with(settings).await;
    env.start_worker();
    let token = env.api().admin_token(&env.pool).await;
    env.add_sender(&token, 10_000).await;

    // Sends in flight while the connections are cut under them: the cut
    // comes once some have been answered, with the rest still in flight.
    let api = env.api();
    let answered = AtomicUsize::new(0);
    let answered = &answered;
    let sends = join_all((0..DURING).map(|i| {
        let token = token.clone();
        async move {
            let started = Instant::now();
            let res = api
                .post(
                    "/api/v1/messages/email/send",
                    &token,
                    &json!({"to": format!("during{i}@example.org"), "subject": "Hi", "content": "<p>Hi</p>"}),
                )
                .await;
            answered.fetch_add(1, Ordering::SeqCst);
            (res, started.elapsed())
        }
    }));
    let cut = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while answered.load(Ordering::SeqCst) < DURING / 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy.cut();
    };
    let (results, ()) = tokio::join!(sends, cut);

    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for (res, took) in &results {
        assert!(
            took < &Duration::from_secs(15),
            "a request hung for {took:?}"
        );
        match res.status.as_u16() {
            202 => acknowledged.push(res.body["data"]["message_id"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(res.code(), "service_unavailable", "{}", res.body);
                refused += 1;
            }
            other => panic!("status {other}: {}", res.body),
        }
    }
    assert!(refused > 0, "the outage refused nothing: cut too late");
    assert!(acknowledged.len() >= DURING / 5, "{}", acknowledged.len());

    // Back: new sends are accepted again.
    proxy.restore();
    let after = eventually(
        "the API to reach PostgreSQL again",
        Duration::from_secs(30),
        || async {
            let res = api
                .post(
                    "/api/v1/messages/email/send",
                    &token,
                    &json!({"to": "after@example.org", "subject": "Hi", "content": "<p>Hi</p>"}),
                )
                .await;
            (res.status.as_u16() == 202)
                .then(|| res.body["data"]["message_id"].as_str().unwrap().to_string())
        },
    )
    .await;
    acknowledged.push(after);

    // Every acknowledged message is sent; so is every record committed at
    // all (a commit whose answer the cut lost was refused to the client,
    // yet is complete: record and task together), and nothing twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM message_records WHERE status <> 'sent'")
                .fetch_one(&env.pool)
                .await
                .unwrap();
        if unsent == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unsent} records never sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: Vec<String> = sqlx::query_scalar("SELECT id::text FROM message_records")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let sent: HashSet<String> = sent.into_iter().collect();
    for id in &acknowledged {
        assert!(sent.contains(id), "acknowledged message {id} was lost");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.smtp.received().len(),
        sent.len(),
        "each record exactly once"
    );
    println!(
        "database outage: {} acknowledged, {refused} refused with 503, {} records sent",
        acknowledged.len(),
        sent.len()
    );
}
