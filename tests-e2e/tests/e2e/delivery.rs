//! SMTP failures are classified, retried or final, and nothing is sent twice.

use std::time::Duration;

use platform::celery::TaskMessage;
use platform::db::{messages, outbox};
use smtp_sink::{Fault, Stage};
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

async fn record(env: &TestEnv, id: Uuid) -> messages::MessageRecord {
    messages::get(&env.pool, id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rejection_fails_the_message_with_the_servers_reply() {
    let (env, token) = TestEnv::sending(&[], 1000).await;
    env.smtp.set_recipient_fault(
        "nobody@example.org",
        Fault::Reply(550, "5.1.1 No such user".into()),
    );
    let id = env
        .send_until(
            &token,
            "nobody@example.org",
            "failed",
            Duration::from_secs(20),
        )
        .await;
    let rec = record(&env, id).await;
    assert!(
        rec.error.as_deref().unwrap().contains("550"),
        "{:?}",
        rec.error
    );
    assert!(rec
        .smtp_response
        .as_deref()
        .unwrap()
        .contains("No such user"));
    assert_eq!(rec.attempts, 1, "a 5xx is final: no retry");
    assert!(rec.failed_at.is_some());

    // The Celery result says FAILURE, as Python would read it.
    let result = celery_result(&env, &rec.task_id).await;
    assert_eq!(result["status"], "FAILURE");
    assert_eq!(result["result"]["exc_type"], "EmailDeliveryError");
    // The failed quota reservation was given back.
    let sent: i32 = sqlx::query_scalar("SELECT daily_sent_count FROM email_accounts")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_rejection_is_retried_until_delivered() {
    let (env, token) = TestEnv::sending(&[], 1000).await;
    env.smtp.set_fault(
        Stage::RcptTo,
        Fault::Reply(451, "4.3.0 Try again later".into()),
    );
    let id = env.api().send_simple(&token, "later@example.org").await;
    eventually("a retry after the 451", Duration::from_secs(20), || async {
        let rec = record(&env, id).await;
        (rec.attempts >= 2 && rec.status == "queued").then_some(())
    })
    .await;
    let rec = record(&env, id).await;
    assert!(
        rec.error.as_deref().unwrap().contains("451"),
        "{:?}",
        rec.error
    );
    env.smtp.clear_faults();
    env.wait_status(id, "sent", Duration::from_secs(20)).await;
    assert_eq!(env.smtp.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_is_retried_and_exhausted_retries_fail() {
    let (env, token) = TestEnv::sending(&[("SEND_MAX_RETRIES", "1")], 1000).await;
    env.smtp.set_fault(Stage::DataEnd, Fault::Drop);
    let id = env
        .send_until(
            &token,
            "dropped@example.org",
            "failed",
            Duration::from_secs(30),
        )
        .await;
    let rec = record(&env, id).await;
    assert_eq!(rec.attempts, 2);
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{:?}",
        rec.error
    );
    assert!(env.smtp.received().is_empty());

    // Once the server behaves, new mail flows again through the same worker.
    env.smtp.clear_faults();
    env.send_until(&token, "fine@example.org", "sent", Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_published_twice_sends_one_email() {
    let (env, _token) = TestEnv::sending(&[], 1000).await;
    let new = messages::NewMessage {
        id: Uuid::now_v7(),
        task_id: Uuid::new_v4().to_string(),
        api_key_id: None,
        to: vec!["twice@example.org".into()],
        cc: vec![],
        bcc: vec![],
        reply_to: None,
        from_name: None,
        subject: "Once".into(),
        html_body: "<p>once</p>".into(),
        text_body: None,
        metadata: None,
        unsubscribe_scope: None,
    };
    let kwargs = serde_json::json!({"message_id": new.id})
        .as_object()
        .unwrap()
        .clone();
    let task = TaskMessage::new(platform::tasks::SEND_EMAIL, &new.task_id, vec![], kwargs);
    // As if the relay had published, crashed before deleting, and published again.
    let mut tx = env.pool.begin().await.unwrap();
    messages::insert(&mut *tx, &new).await.unwrap();
    for _ in 0..3 {
        outbox::enqueue(&mut *tx, &env.queue, &env.queue, &task)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    env.wait_status(new.id, "sent", Duration::from_secs(20))
        .await;
    env.wait_outbox_drained("the outbox to drain", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.smtp.received().len(), 1);
    assert_eq!(record(&env, new.id).await.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_carry_sends_and_delayed_retries() {
    let (env, token) = TestEnv::sending(&[("CELERY_QUEUE_TYPE", "quorum")], 1000).await;
    env.smtp.set_fault(
        Stage::RcptTo,
        Fault::Reply(451, "4.3.0 Try again later".into()),
    );
    let id = env.api().send_simple(&token, "quorum@example.org").await;
    eventually(
        "a retry through the delay queue",
        Duration::from_secs(20),
        || async { (record(&env, id).await.attempts >= 2).then_some(()) },
    )
    .await;
    env.smtp.clear_faults();
    env.wait_status(id, "sent", Duration::from_secs(20)).await;

    // RabbitMQ says the queues are quorum queues.
    let client = reqwest::Client::new();
    for queue in [env.queue.clone(), format!("{}.bulk", env.queue)] {
        let info: serde_json::Value = client
            .get(format!("http://127.0.0.1:15672/api/queues/%2F/{queue}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["type"], "quorum", "{queue}: {info}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_costs_at_most_the_soft_time_limit_then_the_send_is_retried() {
    let (env, token) = TestEnv::sending(
        &[
            ("CELERY_TASK_SOFT_TIME_LIMIT", "2"),
            ("CELERY_TASK_TIME_LIMIT", "3"),
        ],
        1000,
    )
    .await;
    // The server accepts the data, then says nothing for far longer than the limit.
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_secs(30)));
    let id = env.api().send_simple(&token, "hung@example.org").await;
    let started = std::time::Instant::now();
    eventually(
        "the hung attempt to be abandoned",
        Duration::from_secs(10),
        || async {
            let rec = record(&env, id).await;
            (rec.status == "queued" && rec.attempts >= 1 && rec.error.is_some()).then_some(rec)
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let rec = record(&env, id).await;
    assert!(
        rec.error.as_deref().unwrap().contains("no answer"),
        "{:?}",
        rec.error
    );
    env.smtp.clear_faults();
    env.wait_status(id, "sent", Duration::from_secs(20)).await;
    // The abandoned attempt never completed at the server.
    assert_eq!(env.smtp.count(), 1);
    // Stored right after the record is marked sent (a moment later).
    eventually(
        "the Celery result SUCCESS",
        Duration::from_secs(5),
        || async {
            let result = celery_result(&env, &rec.task_id).await;
            (result["status"] == "SUCCESS").then_some(())
        },
    )
    .await;
}

/// The task's stored Celery result, as Python's AsyncResult reads it.
async fn celery_result(env: &TestEnv, task_id: &str) -> serde_json::Value {
    env.api()
        .state
        .results
        .fetch(task_id)
        .await
        .unwrap()
        .expect("a stored result")
}
