//! Sends accepted together travel as `send_email_batch` tasks: fewer broker
//! messages than emails, each a valid Celery message, and each email still
//! retried, recorded and reported on its own.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use platform::celery::TaskMessage;
use platform::db::messages;
use smtp_sink::Fault;
use uuid::Uuid;

use crate::support::{eventually, rabbitmq_channel, TestEnv};

const EMAILS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_batch_tasks_and_a_failing_member_is_retried_alone() {
    let mut env = TestEnv::with_vars(&[("SEND_RETRY_BACKOFF", "1")]).await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 1000).await;
    env.smtp.set_recipient_fault(
        "flaky@example.org",
        Fault::Reply(451, "4.3.0 Try again later".into()),
    );

    // Accepted at once with no worker running: the relay publishes them.
    let api = env.api();
    let ids: Vec<Uuid> = join_all((0..EMAILS).map(|i| {
        let to = if i == 7 {
            "flaky@example.org".to_string()
        } else {
            format!("user{i}@example.org")
        };
        let token = token.clone();
        async move { api.send_simple(&token, &to).await }
    }))
    .await;
    let flaky = ids[7];
    env.wait_outbox_drained("the outbox to drain", Duration::from_secs(10))
        .await;

    // Fewer broker messages than emails, each a Celery message naming its
    // emails with their own task ids.
    let (conn, channel) = rabbitmq_channel().await;
    let queue = channel
        .queue_declare(
            &env.queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let published = queue.message_count() as usize;
    assert!(
        (1..EMAILS).contains(&published),
        "{published} broker messages for {EMAILS} emails"
    );
    let mut members = HashSet::new();
    let mut held = Vec::new();
    while let Some(message) = channel
        .basic_get(&env.queue, BasicGetOptions::default())
        .await
        .unwrap()
    {
        let task = TaskMessage::decode(&message.delivery.properties, &message.delivery.data)
            .expect("a valid Celery message");
        assert_eq!(task.task(), platform::tasks::SEND_EMAIL_BATCH);
        for member in platform::tasks::expand_batch(&task).unwrap() {
            let id: Uuid = member.kwargs["message_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let record = messages::get(&env.pool, id).await.unwrap().unwrap();
            assert_eq!(member.id(), record.task_id, "each email keeps its task id");
            members.insert(id);
        }
        held.push(message);
    }
    assert_eq!(members, ids.iter().copied().collect::<HashSet<_>>());
    for message in held {
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // The worker sends every email once; the one the server refuses for
    // now is retried on its own until the server takes it.
    env.start_worker();
    eventually(
        "the flaky email retried",
        Duration::from_secs(20),
        || async {
            let rec = messages::get(&env.pool, flaky).await.unwrap().unwrap();
            (rec.attempts >= 2).then_some(())
        },
    )
    .await;
    for id in ids.iter().filter(|id| **id != flaky) {
        env.wait_status(*id, "sent", Duration::from_secs(20)).await;
    }
    env.smtp.clear_faults();
    env.wait_status(flaky, "sent", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = env.smtp.received();
    let message_ids: HashSet<String> = received
        .iter()
        .filter_map(|m| {
            m.data_str()
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(received.len(), EMAILS, "each email exactly once");
    assert_eq!(message_ids.len(), EMAILS);
    let others = messages::get(&env.pool, ids[0]).await.unwrap().unwrap();
    assert_eq!(
        others.attempts, 1,
        "the batch's other emails were not retried"
    );

    // Results are per email, under each email's task id.
    let flaky_task = messages::get(&env.pool, flaky)
        .await
        .unwrap()
        .unwrap()
        .task_id;
    let result = env
        .api()
        .state
        .results
        .fetch(&flaky_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result["status"], "SUCCESS");
    let _ = conn.close(200, "done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_task_is_dead_lettered_with_its_reason() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    env.send_until(&token, "first@example.org", "sent", Duration::from_secs(20))
        .await;

    let (conn, channel) = rabbitmq_channel().await;
    let empty = serde_json::json!({"messages": []});
    let task = TaskMessage::new(
        platform::tasks::SEND_EMAIL_BATCH,
        "empty-batch-1",
        vec![],
        empty.as_object().unwrap().clone(),
    );
    channel
        .basic_publish(
            &env.queue,
            &env.queue,
            BasicPublishOptions::default(),
            &task.body(),
            task.properties(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let reason: String = eventually("the dead letter", Duration::from_secs(20), || async {
        sqlx::query_scalar("SELECT reason FROM dead_letters WHERE task_id = 'empty-batch-1'")
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    })
    .await;
    assert!(reason.contains("1 to 50 are allowed"), "{reason}");

    // The worker is still serving.
    env.send_until(&token, "after@example.org", "sent", Duration::from_secs(20))
        .await;
    let _ = conn.close(200, "done").await;
}
