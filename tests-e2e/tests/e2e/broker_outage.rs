//! Requests accepted while RabbitMQ is unreachable are delivered later.

use std::time::Duration;

use crate::support::api::Response;
use crate::support::proxy::TcpProxy;
use crate::support::{eventually, TestEnv};

/// Starts the API so that it reaches RabbitMQ only through a proxy the
/// test controls.
async fn api_behind_proxy(env: &mut TestEnv) -> TcpProxy {
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker_urls = vec![format!("amqp://guest:guest@{}/%2f", proxy.addr)];
    env.start_api_with(settings).await;
    proxy
}

/// Asserts that readiness answers 503 with `check` down and the database
/// up; returns the answer.
async fn assert_not_ready(env: &TestEnv, check: &str) -> Response {
    let ready = env
        .api()
        .request(reqwest::Method::GET, "/health/ready", None, None)
        .await;
    assert_eq!(ready.status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body["checks"][check]
            .as_str()
            .unwrap()
            .starts_with("down"),
        "{}",
        ready.body
    );
    assert_eq!(ready.body["checks"]["database"], "ok");
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_accepted_during_a_broker_outage_are_delivered_after_it() {
    let mut env = TestEnv::new().await;
    let proxy = api_behind_proxy(&mut env).await;
    env.start_worker();
    let token = env.api().admin_token(&env.pool).await;
    env.add_sender(&token, 100).await;

    env.send_until(
        &token,
        "before@example.org",
        "sent",
        Duration::from_secs(20),
    )
    .await;

    proxy.cut();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("during{i}@example.org"))
                .await,
        );
    }
    assert_not_ready(&env, "rabbitmq").await;

    // Nothing reaches the queue while the broker is cut off; the outbox holds it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending = env.outbox_len().await;
    assert_eq!(pending, 5);
    assert_eq!(env.smtp.received().len(), 1);

    proxy.restore();
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(30)).await;
    }
    env.wait_outbox_drained("the outbox to drain", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.smtp.received().len(), 6, "each message exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_redis_when_the_result_backend_is_unreachable() {
    // Nothing listens on port 1: the API starts, and readiness says why it is not ready.
    let mut env = TestEnv::with_vars(&[("CELERY_RESULT_BACKEND", "redis://127.0.0.1:1/1")]).await;
    env.start_api().await;
    let ready = assert_not_ready(&env, "redis").await;
    assert_eq!(ready.body["checks"]["rabbitmq"], "ok");
    // Liveness is unaffected.
    let live = env
        .api()
        .request(reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!(live.status, reqwest::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reuses_its_result_and_its_broker_connection_and_tells_no_details() {
    let mut env = TestEnv::new().await;
    let proxy = api_behind_proxy(&mut env).await;
    let api = env.api();
    let ready = api
        .request(reqwest::Method::GET, "/health/ready", None, None)
        .await;
    assert_eq!(ready.status, reqwest::StatusCode::OK, "{}", ready.body);
    let baseline = proxy.accepted();

    // A burst, then more after the cached result went stale: no new
    // connection to RabbitMQ for any of them.
    for round in 0..2 {
        let calls = (0..50).map(|_| api.request(reqwest::Method::GET, "/health/ready", None, None));
        for res in futures_util::future::join_all(calls).await {
            assert_eq!(
                res.status,
                reqwest::StatusCode::OK,
                "round {round}: {}",
                res.body
            );
        }
        tokio::time::sleep(notify_api::readiness::FRESH_FOR + Duration::from_millis(200)).await;
    }
    assert_eq!(
        proxy.accepted() - baseline,
        0,
        "readiness probes reuse one broker connection"
    );

    // Down: the component is named, with no error text.
    proxy.cut();
    let ready = eventually(
        "readiness to see the cut",
        Duration::from_secs(10),
        || async {
            let res = api
                .request(reqwest::Method::GET, "/health/ready", None, None)
                .await;
            (res.status == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(res)
        },
    )
    .await;
    assert_eq!(
        ready.body,
        serde_json::json!({"status": "unavailable",
            "checks": {"database": "ok", "rabbitmq": "down", "redis": "ok"}})
    );
    proxy.restore();
    eventually("readiness to recover", Duration::from_secs(10), || async {
        let res = api
            .request(reqwest::Method::GET, "/health/ready", None, None)
            .await;
        (res.status == reqwest::StatusCode::OK).then_some(())
    })
    .await;
}
