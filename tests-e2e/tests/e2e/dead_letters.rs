//! Messages the worker cannot run are dead-lettered, not dropped, and do
//! not stop the worker.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use platform::celery::TaskMessage;
use serde_json::Map;

use crate::support::{TestEnv, RABBITMQ};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tasks_and_undecodable_messages_go_to_the_dead_letter_queue() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let token = env.api().admin_token(&env.pool).await;
    env.api()
        .add_account(&token, env.smtp.port(), "sender@example.com", 100, 0)
        .await;
    env.start_worker();
    // Let the worker declare its queues.
    let first = env.api().send_simple(&token, "first@example.org").await;
    env.wait_status(first, "sent", Duration::from_secs(20))
        .await;

    let conn = Connection::connect(RABBITMQ, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let unknown = TaskMessage::new("app.tasks.not_ours", "unknown-1", vec![], Map::new());
    let publish = |body: Vec<u8>, props: BasicProperties| {
        let channel = channel.clone();
        let queue = env.queue.clone();
        async move {
            channel
                .basic_publish(&queue, &queue, BasicPublishOptions::default(), &body, props)
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish(unknown.body(), unknown.properties()).await;
    publish(
        b"\x80\x04\x95pickle".to_vec(),
        BasicProperties::default().with_content_type("application/x-python-serialize".into()),
    )
    .await;
    publish(b"{not json".to_vec(), unknown.properties()).await;

    let dead_letter_queue = format!("{}.dead_letter", env.queue);
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reasons.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters so far: {reasons:?}"
        );
        match channel
            .basic_get(&dead_letter_queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(msg) => {
                let headers = msg
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .unwrap_or_default();
                let reason = platform::celery::table_to_json(&headers)
                    ["x-notify-dead-letter-reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                reasons.push(reason);
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown task") && r.contains("app.tasks.not_ours")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("content type")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");

    // The worker is still serving.
    let after = env.api().send_simple(&token, "after@example.org").await;
    env.wait_status(after, "sent", Duration::from_secs(20))
        .await;
    let _ = conn.close(200, "done").await;
}
