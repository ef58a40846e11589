//! Guarantees that must hold over time: delayed messages survive their
//! delay queues, records whose broker message is gone are published again
//! (once), and a worker that dies mid-send is replaced within seconds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use serde_json::json;
use smtp_sink::{Fault, Stage};
use uuid::Uuid;

use crate::support::{
    eventually, publish_tasks, queue_depth, rabbitmq_channel, rabbitmq_management, TestEnv,
};

async fn sent_recipients(env: &TestEnv) -> Vec<String> {
    env.smtp
        .received()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect()
}

fn assert_once_each(received: &[String], expected: usize) {
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(
        unique.len(),
        expected,
        "distinct recipients received ({} emails)",
        received.len()
    );
    assert_eq!(received.len(), expected, "an email was received twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_in_a_deleted_delay_queue_are_delivered_once() {
    let mut env = TestEnv::with_vars(&[
        ("QUOTA_WAIT_SECONDS", "6"),
        ("RECONCILE_AFTER_SECONDS", "2"),
        ("RECONCILE_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let token = env.start_api_as_admin().await;
    let account = env.add_sender(&token, 1).await;
    env.start_worker();

    // The ladder is declared whole at start, and no rung expires.
    let ladder = env.settings().queues.ladder(&env.queue);
    eventually("the delay ladder", Duration::from_secs(20), || async {
        queue_depth(&ladder[ladder.len() - 1].1).await
    })
    .await;
    for (_, rung) in &ladder {
        let args = rabbitmq_management(&format!("queues/%2F/{rung}")).await["arguments"].clone();
        assert!(args.get("x-expires").is_none(), "{rung}: {args}");
        assert!(args["x-message-ttl"].as_i64().unwrap() < i64::from(u32::MAX));
    }

    // One email has quota; seven wait for it in the ladder.
    for i in 0..8 {
        env.api()
            .send_simple(&token, &format!("wait{i}@example.org"))
            .await;
    }
    eventually(
        "seven messages waiting for quota",
        Duration::from_secs(30),
        || async {
            let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM message_records WHERE status = 'queued' AND due_at IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
            (waiting == 7).then_some(())
        },
    )
    .await;

    // Operators see them waiting.
    eventually(
        "the ladder in the queue listing",
        Duration::from_secs(20),
        || async {
            let res = env.api().get("/api/v1/admin/queues", &token).await;
            let rungs = res.body["data"]
                .as_array()?
                .iter()
                .filter(|q| q["role"] == "delay")
                .count();
            (rungs > 0).then_some(())
        },
    )
    .await;

    // What an expiring delay queue did: the rungs vanish with their messages.
    let (conn, channel) = rabbitmq_channel().await;
    for (_, rung) in &ladder {
        channel
            .queue_delete(rung, QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done").await;
    let res = env
        .api()
        .request(
            reqwest::Method::PATCH,
            &format!(
                "/api/v1/admin/email-accounts/{}",
                account["id"].as_str().unwrap()
            ),
            Some(&token),
            Some(&json!({"daily_limit": 100})),
        )
        .await;
    assert!(res.status.is_success(), "{}", res.body);
    env.start_scheduler();

    eventually("all eight sent", Duration::from_secs(60), || async {
        (env.count_status("sent").await == 8).then_some(())
    })
    .await;
    // Anything published twice would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_once_each(&sent_recipients(&env).await, 8);
    let republished: i64 = sqlx::query_scalar("SELECT sum(republished) FROM message_records")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(republished > 0, "the reconciler published nothing again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_task_queue_is_delivered_once_and_queued_messages_are_not_doubled() {
    let mut env = TestEnv::with_vars(&[
        ("RECONCILE_AFTER_SECONDS", "3"),
        ("RECONCILE_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 10_000).await;
    // The worker declares the queues, then stops: the messages wait.
    env.start_worker();
    eventually("the task queue", Duration::from_secs(20), || async {
        queue_depth(&env.queue).await
    })
    .await;
    env.signal_worker(0, "TERM").await;
    env.wait_worker(0, Duration::from_secs(40)).await;

    let batch = |from: usize, n: usize| {
        let messages: Vec<_> = (from..from + n)
            .map(|i| json!({"to": format!("r{i}@example.org"), "subject": "s", "content": "<p>c</p>"}))
            .collect();
        json!({ "messages": messages })
    };
    let accept = |from: usize, n: usize| {
        let body = batch(from, n);
        let api = env.api();
        let token = token.clone();
        async move {
            let res = api
                .post("/api/v1/messages/email/batch", &token, &body)
                .await;
            assert_eq!(res.status, reqwest::StatusCode::ACCEPTED, "{}", res.body);
            assert_eq!(res.body["data"]["accepted"], n);
        }
    };
    for chunk in 0..4 {
        accept(chunk * 500, 500).await;
    }
    env.wait_outbox_drained("the outbox relayed", Duration::from_secs(30))
        .await;
    // An operator purges the task queue with 2,000 accepted emails in it.
    let (conn, channel) = rabbitmq_channel().await;
    channel
        .queue_purge(&env.queue, Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done").await;
    let purged_before: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    // 500 more stay in the queue, past the reconciler's threshold too: while
    // they wait there, the queue is draining a backlog, and nothing is
    // published again.
    accept(2000, 500).await;
    env.wait_outbox_drained("the outbox relayed", Duration::from_secs(30))
        .await;
    env.start_scheduler();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pool = env.pool.clone();
    let republished = || async {
        let rows: Vec<(bool, i64)> = sqlx::query_as(
            "SELECT created_at > $1, count(*) FROM message_records WHERE republished > 0 GROUP BY 1",
        )
        .bind(purged_before)
        .fetch_all(&pool)
        .await
        .unwrap();
        let count = |late: bool| rows.iter().find(|r| r.0 == late).map_or(0, |r| r.1);
        (count(false), count(true))
    };
    assert_eq!(
        republished().await,
        (0, 0),
        "published again behind a backlog"
    );

    // The worker drains the 500; the queue is idle, and the 2,000 purged
    // ones are published again. The claim keeps each to one email.
    env.start_worker();
    eventually("2,500 sent", Duration::from_secs(120), || async {
        (env.count_status("sent").await == 2500).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_once_each(&sent_recipients(&env).await, 2500);
    let (purged, queued) = republished().await;
    println!("published again: {purged} of the 2,000 purged, {queued} of the 500 queued");
    assert_eq!(purged, 2000);
    // At most those still in the worker's prefetch when the queue went idle.
    assert!(queued < 100, "{queued} of the queued 500 published again");
}

/// The record of `id` as the worker left it.
async fn claimant(env: &TestEnv, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT claimed_by FROM message_records WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_worker_died_is_resent_within_seconds_and_a_live_claim_is_left_alone() {
    let (mut env, token) = TestEnv::sending(
        &[
            // The old rule waited for the hard time limit: five minutes.
            ("CELERY_TASK_SOFT_TIME_LIMIT", "270"),
            ("CELERY_TASK_TIME_LIMIT", "300"),
            ("EMAIL_TIMEOUT", "120"),
            ("WORKER_LEASE_SECONDS", "3"),
            ("WORKER_LEASE_RENEW_SECONDS", "1"),
        ],
        100,
    )
    .await;

    // The server hangs before DATA: the worker is mid-send when it dies.
    env.smtp
        .set_fault(Stage::RcptTo, Fault::Stall(Duration::from_secs(120)));
    let id = env
        .send_until(
            &token,
            "dead@example.org",
            "sending",
            Duration::from_secs(20),
        )
        .await;
    let first = claimant(&env, id).await.expect("claimant recorded");
    env.signal_worker(0, "KILL").await;
    env.wait_worker(0, Duration::from_secs(10)).await;
    env.smtp.clear_faults();
    let killed = Instant::now();
    env.start_worker();
    env.wait_status(id, "sent", Duration::from_secs(40)).await;
    let took = killed.elapsed();
    println!("a send whose worker died was sent again after {took:?}");
    assert!(took < Duration::from_secs(40));
    assert_ne!(claimant(&env, id).await.as_deref(), Some(first.as_str()));
    assert_once_each(&sent_recipients(&env).await, 1);

    // A live worker's claim: the server takes 8 s to answer DATA while a
    // copy of the same task reaches the workers. It waits; one email.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(8)));
    let id = env
        .send_until(
            &token,
            "live@example.org",
            "sending",
            Duration::from_secs(20),
        )
        .await;
    let task_id: String = sqlx::query_scalar("SELECT task_id FROM message_records WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let copy = platform::tasks::send_email_task(id, &task_id);
    publish_tasks(&env.queue, &[copy]).await;
    env.wait_status(id, "sent", Duration::from_secs(30)).await;
    env.smtp.clear_faults();
    // The copy has waited on the live claim and then found it sent.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_once_each(&sent_recipients(&env).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_sent_while_the_database_is_away_is_recorded_once_it_is_back() {
    let pg = crate::support::proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut env = TestEnv::with_vars(&[("DB_POOL_SIZE", "2")]).await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100).await;
    // Only the worker reaches PostgreSQL through the proxy.
    let direct = env.vars["DATABASE_URL"].clone();
    env.vars.insert(
        "DATABASE_URL".into(),
        direct.replace("127.0.0.1:5432", &pg.addr.to_string()),
    );
    env.start_worker();

    // The server takes 3 s to accept the data; the database goes away
    // meanwhile, for longer than the worker used to retry the outcome.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(3)));
    let id = env
        .send_until(
            &token,
            "away@example.org",
            "sending",
            Duration::from_secs(20),
        )
        .await;
    pg.cut();
    env.smtp.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    env.smtp.clear_faults();
    pg.restore();
    let back = Instant::now();
    env.wait_status(id, "sent", Duration::from_secs(20)).await;
    println!(
        "recorded sent {:?} after the database came back",
        back.elapsed()
    );
    // Well past the hard time limit (12 s here) a resend would have happened.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_once_each(&sent_recipients(&env).await, 1);
}

/// A server that takes the connection and never greets (its accept queue
/// overflowed, or it hangs) holds a send for `EMAIL_TIMEOUT`, not for the
/// send's time limit: the attempt gives up, the email is retried, and it
/// goes out once the server answers. (Before, the greeting had no bound:
/// a benchmark whose sink's accept queue overflowed left 45 emails
/// `sending` for five minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_greets_holds_a_send_for_the_email_timeout_not_its_time_limit() {
    a_silent_server_costs_the_email_timeout(Stage::Connect).await;
}

/// Mid-transaction too: every read and write on the connection must make
/// progress within `EMAIL_TIMEOUT`, as Python's smtplib bounds each socket
/// operation. The stalled connection is not replaced by a new one for the
/// same attempt (a server silent after the data may have the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_mid_transaction_holds_a_send_for_the_email_timeout() {
    a_silent_server_costs_the_email_timeout(Stage::RcptTo).await;
}

async fn a_silent_server_costs_the_email_timeout(stage: Stage) {
    let (env, token) = TestEnv::sending(
        &[
            ("EMAIL_TIMEOUT", "2"),
            ("SEND_RETRY_BACKOFF", "1"),
            ("CELERY_TASK_SOFT_TIME_LIMIT", "270"),
            ("CELERY_TASK_TIME_LIMIT", "300"),
        ],
        100,
    )
    .await;
    env.smtp
        .set_fault(stage, Fault::Stall(Duration::from_secs(600)));
    let started = Instant::now();
    let id = env.api().send_simple(&token, "silent@example.org").await;
    let error: String = eventually(
        "the attempt on the silent server to give up",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar(
                "SELECT detail->>'error' FROM message_events
                  WHERE message_id = $1 AND event = 'retry_scheduled'",
            )
            .bind(id)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
        },
    )
    .await;
    println!("gave up after {:?}: {error}", started.elapsed());
    assert!(error.contains("no answer from the SMTP server"), "{error}");
    env.smtp.clear_faults();
    env.wait_status(id, "sent", Duration::from_secs(60)).await;
    assert_once_each(&sent_recipients(&env).await, 1);
}

/// A warm connection that goes silent mid-transaction fails the attempt;
/// unlike a connection the server had closed, it is not replaced by a new
/// one for the same attempt, since a server silent after the data may
/// already have the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_connection_gone_silent_is_not_replaced_within_the_attempt() {
    let (env, token) = TestEnv::sending(
        &[
            ("EMAIL_TIMEOUT", "2"),
            ("SEND_RETRY_BACKOFF", "60"),
            ("CELERY_TASK_SOFT_TIME_LIMIT", "270"),
            ("CELERY_TASK_TIME_LIMIT", "300"),
        ],
        100,
    )
    .await;
    env.send_until(&token, "warm@example.org", "sent", Duration::from_secs(20))
        .await;
    assert_eq!(env.smtp.connections(), 1);
    env.smtp
        .set_fault(Stage::RcptTo, Fault::Stall(Duration::from_secs(600)));
    let id = env.api().send_simple(&token, "silent@example.org").await;
    eventually(
        "the attempt on the silent connection to give up",
        Duration::from_secs(20),
        || async {
            let rec = platform::db::messages::get(&env.pool, id).await.ok()??;
            (rec.status == "queued" && rec.attempts >= 1 && rec.error.is_some()).then_some(())
        },
    )
    .await;
    assert_eq!(
        env.smtp.connections(),
        1,
        "the attempt opened a new connection after the warm one went silent"
    );
}
