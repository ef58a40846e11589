//! The scheduler (beat) as separate processes: delayed sends released once
//! and on time with several instances, and leader election.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_sends_are_released_once_on_time_with_two_schedulers() {
    let (mut env, token) = TestEnv::sending(&[], 100_000).await;
    env.start_scheduler();
    env.start_scheduler();
    // Schedulers up (one has taken the lead), so start-up time under load
    // does not count against the one-second bound.
    env.wait_scheduler_leader("a scheduler leader", Duration::from_secs(30))
        .await;

    // 200 messages due across ten seconds, starting four seconds from now
    // (time to record them), in one batch.
    const N: usize = 200;
    let base = Utc::now() + chrono::Duration::seconds(4);
    let messages: Vec<_> = (0..N)
        .map(|i| {
            let at = base + chrono::Duration::milliseconds(50 * i as i64);
            json!({"to": format!("r{i}@example.org"), "subject": format!("Delayed {i}"),
                   "content": "<p>later</p>", "send_at": at.to_rfc3339()})
        })
        .collect();
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/batch",
            &token,
            &json!({"messages": messages}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["data"]["accepted"], N, "{}", res.body);
    assert!(
        Utc::now() < base,
        "recording took too long for the test's timing"
    );
    // One more, cancelled before its time: never released.
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "cancelled@example.org", "subject": "No", "content": "<p>no</p>",
                    "send_at": (base + chrono::Duration::seconds(2)).to_rfc3339()}),
        )
        .await;
    let cancelled: Uuid = res.body["data"]["message_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let res = env
        .api()
        .post(
            &format!("/api/v1/messages/{cancelled}/cancel"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);

    env.smtp.wait_for(N, Duration::from_secs(40)).await;
    eventually("all 200 sent", Duration::from_secs(20), || async {
        (env.count_status("sent").await == N as i64).then_some(())
    })
    .await;
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT send_at, queued_at FROM message_records WHERE send_at IS NOT NULL AND status = 'sent'",
    )
    .fetch_all(&env.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), N);
    for (send_at, queued_at) in &rows {
        assert!(
            queued_at >= send_at,
            "released early: due {send_at}, queued {queued_at}"
        );
        assert!(
            *queued_at - *send_at < chrono::Duration::seconds(1),
            "released late: due {send_at}, queued {queued_at}"
        );
    }
    // Each exactly once: no more mail arrives, and every Message-ID is distinct.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = env.smtp.received();
    assert_eq!(received.len(), N, "each delayed send mailed exactly once");
    let ids: HashSet<String> = received
        .iter()
        .map(|m| {
            mail_parser::MessageParser::default()
                .parse(&m.data)
                .expect("email")
                .message_id()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), N, "distinct Message-IDs");
    assert!(received
        .iter()
        .all(|m| !m.rcpt_to.iter().any(|r| r.contains("cancelled@"))));
    assert_eq!(env.status(cancelled).await, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scheduler_leads_and_a_follower_takes_over_when_it_is_killed() {
    let mut env = TestEnv::with_vars(&[("SCHEDULER_LEADER_RETRY_MS", "500")]).await;
    let a = env.start_scheduler();
    let b = env.start_scheduler();
    let pids = [env.scheduler_pid(a), env.scheduler_pid(b)];
    let leader = env
        .wait_scheduler_leader("a leader", Duration::from_secs(20))
        .await;
    assert!(pids.contains(&leader), "leader {leader} is one of {pids:?}");
    // Still exactly one leader a moment later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.scheduler_leader_pid().await, Some(leader));

    let (dead, survivor) = if leader == pids[0] {
        (a, pids[1])
    } else {
        (b, pids[0])
    };
    env.signal_scheduler(dead, "KILL").await;
    let taken = tokio::time::Instant::now();
    eventually("the follower to lead", Duration::from_secs(10), || async {
        (env.scheduler_leader_pid().await == Some(survivor)).then_some(())
    })
    .await;
    assert!(
        taken.elapsed() < Duration::from_secs(5),
        "took over in {:?}",
        taken.elapsed()
    );
}
