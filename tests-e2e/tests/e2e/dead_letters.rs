//! Messages the worker cannot run are dead-lettered, not dropped, and do
//! not stop the worker.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use platform::celery::TaskMessage;
use serde_json::Map;

use crate::support::{rabbitmq_channel, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tasks_and_undecodable_messages_go_to_the_dead_letter_queue() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    // Let the worker declare its queues.
    env.send_until(&token, "first@example.org", "sent", Duration::from_secs(20))
        .await;

    let (conn, channel) = rabbitmq_channel().await;
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
    env.send_until(&token, "after@example.org", "sent", Duration::from_secs(20))
        .await;
    let _ = conn.close(200, "done").await;
}
