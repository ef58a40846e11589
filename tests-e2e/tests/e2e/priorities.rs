//! Transactional mail is not held up by a bulk backlog.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use platform::celery::TaskMessage;
use uuid::Uuid;

use crate::support::{eventually, rabbitmq_channel, TestEnv};

const BACKLOG: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_send_overtakes_a_20000_message_bulk_backlog() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 1_000_000).await;

    // 20,000 campaign messages: recorded, and queued on the bulk queue.
    let ids: Vec<Uuid> = (0..BACKLOG).map(|_| Uuid::now_v7()).collect();
    let task_ids: Vec<String> = ids.iter().map(|_| Uuid::new_v4().to_string()).collect();
    sqlx::query(
        "INSERT INTO message_records (id, task_id, status, to_addrs, subject, html_body, queued_at)
         SELECT id, task_id, 'queued', ARRAY['bulk' || n || '@example.org'], 'Campaign', '<p>news</p>', now()
         FROM UNNEST($1::uuid[], $2::text[]) WITH ORDINALITY AS t(id, task_id, n)",
    )
    .bind(&ids)
    .bind(&task_ids)
    .execute(&env.pool)
    .await
    .unwrap();
    let bulk = format!("{}.bulk", env.queue);
    let (conn, channel) = rabbitmq_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    platform::broker::Topology::new(env.settings().queues)
        .declare_task_queue(&channel)
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(BACKLOG);
    for (id, task_id) in ids.iter().zip(&task_ids) {
        let kwargs = serde_json::json!({"message_id": id})
            .as_object()
            .unwrap()
            .clone();
        let task = TaskMessage::new(platform::tasks::SEND_EMAIL, task_id, vec![], kwargs);
        let confirm = channel
            .basic_publish(
                &bulk,
                &bulk,
                BasicPublishOptions::default(),
                &task.body(),
                task.properties(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.unwrap();
    }
    let _ = conn.close(200, "backlog queued").await;

    env.start_worker();
    eventually(
        "the backlog to be draining",
        Duration::from_secs(30),
        || async { (env.smtp.count() >= 200).then_some(()) },
    )
    .await;

    let started = Instant::now();
    env.send_until(&token, "urgent@example.org", "sent", Duration::from_secs(5))
        .await;
    let took = started.elapsed();
    let bulk_sent = env.count_status("sent").await - 1;
    println!(
        "transactional send delivered in {took:?} with {} bulk messages still queued",
        BACKLOG as i64 - bulk_sent
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        bulk_sent < BACKLOG as i64 / 2,
        "the backlog was still there: {bulk_sent} sent"
    );
}
