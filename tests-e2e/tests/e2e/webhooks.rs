//! Event webhooks: signed (Standard Webhooks) events of a key's messages
//! reach its endpoints, checked by a real receiver on loopback that
//! verifies with the `standardwebhooks` package from PyPI
//! (tests/python/webhook_receiver.py).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use smtp_sink::Fault;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::python_interop::{python, repo_root};
use crate::support::proxy::TcpProxy;
use crate::support::{eventually, TestEnv};

const ALL_EVENTS: [&str; 6] = [
    "email.accepted",
    "email.sent",
    "email.failed",
    "email.retrying",
    "email.suppressed",
    "email.cancelled",
];

/// The Python receiver: its process, port and what it recorded.
struct Receiver {
    _child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Receiver {
    async fn start() -> Receiver {
        let python = python().await;
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/python/webhook_receiver.py"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start webhook_receiver.py");
        let stdout = child.stdout.take().expect("receiver stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("receiver printed its port in time")
        .expect("read receiver port");
        Receiver {
            _child: child,
            port: line.trim().parse().expect("receiver port"),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn control(&self, state: Value) {
        let res = self
            .http
            .post(format!("http://127.0.0.1:{}/_control", self.port))
            .json(&state)
            .send()
            .await
            .expect("control receiver");
        assert!(res.status().is_success());
    }

    /// Every request received, in order.
    async fn log(&self) -> Vec<Value> {
        self.http
            .get(format!("http://127.0.0.1:{}/_control/log", self.port))
            .send()
            .await
            .expect("receiver log")
            .json()
            .await
            .expect("receiver log JSON")
    }

    /// Waits until some request has been received.
    async fn wait_first_request(&self) {
        eventually("the first answers", Duration::from_secs(30), || async {
            (!self.log().await.is_empty()).then_some(())
        })
        .await;
    }

    /// The requests answered 200, by event id.
    async fn accepted(&self) -> HashMap<String, Vec<Value>> {
        let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
        for entry in self.log().await {
            if entry["answered"] == 200 {
                by_id
                    .entry(entry["id"].as_str().unwrap_or_default().to_string())
                    .or_default()
                    .push(entry);
            }
        }
        by_id
    }

    /// Waits until the receiver has accepted `types` for `message`, and
    /// returns those events' entries by type.
    async fn wait_events(&self, message: Uuid, types: &[&str]) -> HashMap<String, Value> {
        eventually(
            &format!("{types:?} for {message}"),
            Duration::from_secs(30),
            || async {
                let found: HashMap<String, Value> = self
                    .accepted()
                    .await
                    .into_values()
                    .flatten()
                    .filter(|e| e["event"]["data"]["message_id"] == message.to_string())
                    .map(|e| (e["event"]["type"].as_str().unwrap_or("").to_string(), e))
                    .collect();
                types
                    .iter()
                    .all(|t| found.contains_key(*t))
                    .then_some(found)
            },
        )
        .await
    }
}

/// An environment whose processes may call loopback endpoints, with short
/// retry delays; an account on the test SMTP server, a worker, a scheduler
/// (the dispatcher) and a non-admin key with `send` and `read`.
async fn webhook_env(extra: &[(&str, &str)]) -> (TestEnv, String) {
    let mut vars = vec![
        ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ("WEBHOOK_POLL_MS", "100"),
        ("WEBHOOK_BACKOFF_BASE_MS", "200"),
        ("WEBHOOK_BACKOFF_MAX_SECONDS", "1"),
        ("WEBHOOK_CONNECT_TIMEOUT_SECONDS", "1"),
        ("WEBHOOK_TIMEOUT_SECONDS", "2"),
    ];
    vars.extend_from_slice(extra);
    let mut env = TestEnv::with_vars(&vars).await;
    env.start_api().await;
    let admin = env.api().admin_token(&env.pool).await;
    env.api()
        .add_account(&admin, env.smtp.port(), "sender@example.com", 10_000, 0)
        .await;
    env.start_worker();
    env.start_scheduler();
    let (_, token) = env.api().token(&env.pool, &["send", "read"]).await;
    (env, token)
}

/// Registers an endpoint; returns its id and secret.
async fn register(env: &TestEnv, token: &str, url: &str, types: &[&str]) -> (String, String) {
    let res = env
        .api()
        .post(
            "/api/v1/webhooks",
            token,
            &json!({"url": url, "event_types": types, "description": "test receiver"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let secret = res.body["data"]["secret"].as_str().expect("secret");
    assert!(secret.starts_with("whsec_"), "{secret}");
    (
        res.body["data"]["id"].as_str().expect("id").to_string(),
        secret.to_string(),
    )
}

/// Sends `n` simple messages to `{prefix}{i}@example.com`; their ids.
async fn send_many(env: &TestEnv, token: &str, prefix: &str, n: usize) -> Vec<Uuid> {
    let mut messages = Vec::with_capacity(n);
    for i in 0..n {
        let to = format!("{prefix}{i}@example.com");
        messages.push(env.api().send_simple(token, &to).await);
    }
    messages
}

/// Waits until no delivery is left undelivered and no event waits to be
/// fanned out.
async fn wait_all_delivered(env: &TestEnv, timeout: Duration) {
    eventually("every event delivered", timeout, || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered')
                  + (SELECT count(*) FROM webhook_pending_events)",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
}

/// Asserts that every repeat of an event is the same event (same id, same
/// body); returns how many repeats there were.
fn assert_repeats_are_the_same_event(accepted: &HashMap<String, Vec<Value>>) -> usize {
    for (id, hits) in accepted {
        assert!(
            hits.iter().all(|h| h["event"] == hits[0]["event"]),
            "{id}: {hits:?}"
        );
        assert_eq!(hits[0]["event"]["data"]["event_id"], id.as_str());
    }
    accepted.values().map(|h| h.len() - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_of_a_send_and_a_failure_reach_a_verifying_receiver() {
    let receiver = Receiver::start().await;
    let (env, token) = webhook_env(&[]).await;
    let (id, secret) = register(&env, &token, &receiver.url(), &ALL_EVENTS).await;
    receiver.control(json!({"secrets": [secret]})).await;
    env.smtp.set_recipient_fault(
        "nobody@example.org",
        Fault::Reply(550, "5.1.1 No such user".into()),
    );

    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "ann@example.com", "subject": "Hello", "content": "<p>Hello</p>",
                    "metadata": {"order_id": "A-1042", "tenant": "shop-eu"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let sent: Uuid = res.body["data"]["message_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let failed = env.api().send_simple(&token, "nobody@example.org").await;

    let events = receiver
        .wait_events(sent, &["email.accepted", "email.sent"])
        .await;
    let accepted = &events["email.accepted"]["event"];
    let delivered = &events["email.sent"]["event"];
    assert_eq!(accepted["data"]["sequence"], 1, "{accepted}");
    assert_eq!(delivered["data"]["sequence"], 2, "{delivered}");
    assert_eq!(delivered["data"]["to"], json!(["ann@example.com"]));
    assert_eq!(delivered["data"]["account"], "sender@example.com");
    // The sender's metadata comes back in every event of the message.
    for event in [accepted, delivered] {
        assert_eq!(
            event["data"]["metadata"],
            json!({"order_id": "A-1042", "tenant": "shop-eu"}),
            "{event}"
        );
    }
    assert!(delivered["data"]["task_id"].is_string());
    assert!(delivered["data"]["smtp_response"]
        .as_str()
        .is_some_and(|r| r.starts_with("250")));
    for entry in events.values() {
        assert_eq!(entry["verified"], json!([true]), "{entry}");
        assert_eq!(entry["id"], entry["event"]["data"]["event_id"]);
    }
    let events = receiver
        .wait_events(failed, &["email.accepted", "email.failed"])
        .await;
    let failure = &events["email.failed"]["event"]["data"];
    assert!(
        failure["error"].as_str().is_some_and(|e| e.contains("550")),
        "{failure}"
    );
    assert_eq!(events["email.failed"]["verified"], json!([true]));

    // The deliveries view shows each attempt; the secret is never shown again.
    let res = env
        .api()
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), &token)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let items = res.body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{}", res.body);
    assert!(items
        .iter()
        .all(|d| d["status"] == "delivered" && d["last_status"] == 200));
    let shown = env
        .api()
        .get(&format!("/api/v1/webhooks/{id}"), &token)
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(!shown.body.to_string().contains(&secret[6..]));
    assert!(shown.body["data"].get("secret").is_none());
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_ciphertext FROM webhook_endpoints WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains(&secret[6..]));

    // A test event reaches the endpoint whatever it subscribes to.
    let res = env
        .api()
        .post(&format!("/api/v1/webhooks/{id}/test"), &token, &json!({}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let test_id = res.body["data"]["event_id"].as_str().unwrap().to_string();
    eventually("the test event", Duration::from_secs(20), || async {
        receiver.accepted().await.get(&test_id).cloned()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_every_event_exactly_once_after_it_recovers() {
    let receiver = Receiver::start().await;
    let (env, token) = webhook_env(&[]).await;
    let (id, secret) = register(
        &env,
        &token,
        &receiver.url(),
        &["email.accepted", "email.sent"],
    )
    .await;
    receiver
        .control(json!({"secrets": [secret], "fail_next": 5}))
        .await;

    let mut messages = Vec::new();
    for i in 0..3 {
        messages.push(
            env.api()
                .send_simple(&token, &format!("r{i}@example.com"))
                .await,
        );
    }
    for m in &messages {
        receiver
            .wait_events(*m, &["email.accepted", "email.sent"])
            .await;
    }
    // Nothing more arrives: every event was acknowledged exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = receiver.accepted().await;
    assert_eq!(accepted.len(), 6, "{accepted:?}");
    assert!(
        accepted.values().all(|hits| hits.len() == 1),
        "{accepted:?}"
    );
    let log = receiver.log().await;
    assert_eq!(log.iter().filter(|e| e["answered"] == 500).count(), 5);
    // A retried event carries the same id each time.
    let failed_ids: Vec<&Value> = log
        .iter()
        .filter(|e| e["answered"] == 500)
        .map(|e| &e["id"])
        .collect();
    assert!(failed_ids
        .iter()
        .all(|id| accepted.contains_key(id.as_str().unwrap())));
    let res = env
        .api()
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), &token)
        .await;
    let items = res.body["data"]["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|d| d["attempts"].as_i64().unwrap())
            .sum::<i64>(),
        11,
        "{}",
        res.body
    );
    let endpoint = env
        .api()
        .get(&format!("/api/v1/webhooks/{id}"), &token)
        .await;
    assert_eq!(endpoint.body["data"]["failing_since"], Value::Null);
}

/// Sends `count` emails and returns how long until all were sent.
async fn send_and_time(env: &TestEnv, token: &str, tag: &str, count: usize) -> Duration {
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(
            env.api()
                .send_simple(token, &format!("{tag}{i}@example.com"))
                .await,
        );
    }
    for id in ids {
        env.wait_status(id, "sent", Duration::from_secs(30)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_delays_neither_mail_nor_other_endpoints() {
    let hanging = Receiver::start().await;
    let healthy = Receiver::start().await;
    let (env, token) = webhook_env(&[("WEBHOOK_TIMEOUT_SECONDS", "20")]).await;
    let without = send_and_time(&env, &token, "before", 20).await;

    hanging.control(json!({"hang": true})).await;
    register(
        &env,
        &token,
        &hanging.url(),
        &["email.accepted", "email.sent"],
    )
    .await;
    let (_, secret) = register(
        &env,
        &token,
        &healthy.url(),
        &["email.accepted", "email.sent"],
    )
    .await;
    healthy.control(json!({"secrets": [secret]})).await;
    let with = send_and_time(&env, &token, "after", 20).await;

    // Mail goes out as fast (within noise) while one endpoint hangs...
    assert!(
        with <= without * 3 + Duration::from_secs(2),
        "20 sends took {with:?} with a hanging endpoint, {without:?} without"
    );
    // ...and the healthy endpoint gets all 40 events while it still hangs.
    let started = Instant::now();
    eventually(
        "every event at the healthy endpoint",
        Duration::from_secs(15),
        || async { (healthy.accepted().await.len() >= 40).then_some(()) },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(healthy.accepted().await.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_during_the_grace_period() {
    let receiver = Receiver::start().await;
    let (env, token) = webhook_env(&[]).await;
    let (id, old) = register(&env, &token, &receiver.url(), &["email.sent"]).await;
    receiver.control(json!({"secrets": [old]})).await;
    let first = env.api().send_simple(&token, "one@example.com").await;
    let before = receiver.wait_events(first, &["email.sent"]).await;
    assert_eq!(before["email.sent"]["signatures"], 1);

    let res = env
        .api()
        .post(
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let new = res.body["data"]["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(res.body["data"]["previous_secret_expires_at"].is_string());
    receiver.control(json!({"secrets": [old, new]})).await;

    let second = env.api().send_simple(&token, "two@example.com").await;
    let after = &receiver.wait_events(second, &["email.sent"]).await["email.sent"];
    assert_eq!(after["signatures"], 2, "{after}");
    // The verifier accepts with either secret, and rejects a forged body
    // and a replay with an old timestamp.
    assert_eq!(after["verified"], json!([true, true]), "{after}");
    assert_eq!(after["forged_rejected"], true);
    assert_eq!(after["replay_rejected"], true);
    assert_eq!(before["email.sent"]["forged_rejected"], true);
    assert_eq!(before["email.sent"]["replay_rejected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_without_the_override() {
    let mut env = TestEnv::with_vars(&[("WEBHOOK_MAX_ENDPOINTS_PER_KEY", "2")]).await;
    env.start_api().await;
    let (_, token) = env.api().token(&env.pool, &["send", "read"]).await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
    ] {
        let res = env
            .api()
            .post(
                "/api/v1/webhooks",
                &token,
                &json!({"url": url, "event_types": ["email.sent"]}),
            )
            .await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            res.body
        );
        assert_eq!(res.code(), "private_address", "{url}");
        assert_eq!(res.body["error"]["field"], "url");
    }
    for (body, code) in [
        (
            json!({"url": "ftp://hooks.example.com/x", "event_types": ["email.sent"]}),
            "invalid_url",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": []}),
            "validation_error",
        ),
    ] {
        let res = env.api().post("/api/v1/webhooks", &token, &body).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
        assert_eq!(res.code(), code, "{}", res.body);
    }
    let res = env
        .api()
        .post(
            "/api/v1/webhooks",
            &token,
            &json!({"url": "https://hooks.example.com/x", "event_types": ["email.opened"]}),
        )
        .await;
    assert!(res.status.is_client_error(), "{}", res.body);

    // Public URLs are accepted, up to the per-key limit; another key does
    // not see them, an admin does.
    let public = json!({"url": "https://hooks.example.com/notify", "event_types": ["email.sent"]});
    let res = env.api().post("/api/v1/webhooks", &token, &public).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        env.api()
            .post("/api/v1/webhooks", &token, &public)
            .await
            .status,
        StatusCode::CREATED
    );
    let res = env.api().post("/api/v1/webhooks", &token, &public).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
    assert_eq!(res.code(), "webhook_limit_reached");
    let (_, other) = env.api().token(&env.pool, &["send", "read"]).await;
    let path = format!("/api/v1/webhooks/{id}");
    assert_eq!(
        env.api().get(&path, &other).await.status,
        StatusCode::NOT_FOUND
    );
    let admin = env.api().admin_token(&env.pool).await;
    assert_eq!(env.api().get(&path, &admin).await.status, StatusCode::OK);
    let listed = env.api().get("/api/v1/webhooks", &other).await;
    assert_eq!(listed.body["data"]["items"], json!([]));
    // Changing the URL to a private address is refused too.
    let res = env
        .api()
        .request(
            reqwest::Method::PATCH,
            &path,
            Some(&token),
            Some(&json!({"url": "http://192.168.1.1/x"})),
        )
        .await;
    assert_eq!(res.code(), "private_address", "{}", res.body);
    // Every change is audited, without the secret.
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'webhook.create' AND details::text NOT LIKE '%whsec_%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(audit, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_refuses_private_addresses_without_the_override() {
    // The API allows the loopback endpoint; the scheduler does not.
    let receiver = Receiver::start().await;
    let mut env = TestEnv::with_vars(&[("WEBHOOK_POLL_MS", "100")]).await;
    let mut settings = env.settings();
    settings.webhooks.as_mut().unwrap().allow_private = true;
    env.start_api_with(settings).await;
    env.start_scheduler();
    let (_, token) = env.api().token(&env.pool, &["send", "read"]).await;
    let (id, secret) = register(&env, &token, &receiver.url(), &["email.accepted"]).await;
    receiver.control(json!({"secrets": [secret]})).await;
    let res = env
        .api()
        .post(&format!("/api/v1/webhooks/{id}/test"), &token, &json!({}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    let error = eventually("a refused attempt", Duration::from_secs(20), || async {
        let res = env
            .api()
            .get(&format!("/api/v1/webhooks/{id}/deliveries"), &token)
            .await;
        res.body["data"]["items"][0]["last_error"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    assert!(error.contains("not a public address"), "{error}");
    assert!(receiver.log().await.is_empty());
}

const PLATFORM_EVENTS: [&str; 5] = [
    "campaign.run.started",
    "campaign.run.completed",
    "account.paused",
    "account.circuit_open",
    "endpoint.disabled",
];

/// The events the receiver accepted, by type (the last of each type).
async fn accepted_by_type(receiver: &Receiver) -> HashMap<String, Value> {
    receiver
        .accepted()
        .await
        .into_values()
        .flatten()
        .map(|e| (e["event"]["type"].as_str().unwrap_or("").to_string(), e))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_events_reach_the_endpoints_of_admin_keys_only() {
    let admin_receiver = Receiver::start().await;
    let failing = Receiver::start().await;
    let (env, token) = webhook_env(&[("WEBHOOK_RETRY_WINDOW_SECONDS", "3")]).await;
    let admin = env.api().admin_token(&env.pool).await;

    // A key without `admin` may not ask for platform events.
    let res = env
        .api()
        .post(
            "/api/v1/webhooks",
            &token,
            &json!({"url": failing.url(), "event_types": ["email.sent", "account.paused"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert_eq!(res.code(), "admin_event_type", "{}", res.body);
    let (_, secret) = register(&env, &admin, &admin_receiver.url(), &PLATFORM_EVENTS).await;
    admin_receiver.control(json!({"secrets": [secret]})).await;

    // A campaign run (on an empty list) starts and completes.
    let template = env
        .api()
        .create(
            "/api/v1/templates",
            &admin,
            &json!({"name": format!("t{}", Uuid::new_v4().simple()), "subject": "Hi {{ who }}",
                    "html_body": "<p>{{ who }}</p>", "variables": ["who"]}),
        )
        .await;
    let campaign = env.api().admin_campaign(&admin, &template).await;
    let res = env
        .api()
        .post(
            &format!("/api/v1/campaigns/{campaign}/run"),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let run = res.body["data"]["id"].as_str().unwrap().to_string();

    // An operator pauses an account.
    let paused = env
        .api()
        .add_account(&admin, env.smtp.port(), "paused@example.com", 10, 0)
        .await;
    let res = env
        .api()
        .request(
            reqwest::Method::PATCH,
            &format!(
                "/api/v1/admin/email-accounts/{}",
                paused["id"].as_str().unwrap()
            ),
            Some(&admin),
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);

    // An account whose server refuses its password has its circuit opened
    // by the first send it takes (the highest priority).
    let broken_server = smtp_sink::SmtpSink::start()
        .await
        .expect("second SMTP server");
    broken_server.require_auth("someone-else", "other-password");
    env.api()
        .add_account(&admin, broken_server.port(), "broken@example.com", 10, 100)
        .await;
    let message = env.api().send_simple(&token, "circuit@example.com").await;

    // The send key's endpoint that always fails is disabled after the
    // retry window (3 s here).
    let (failing_id, _) = register(
        &env,
        &token,
        &format!("{}?token=s3cret", failing.url()),
        &["email.accepted", "email.sent"],
    )
    .await;
    // Nor may a PATCH add one: not by the send key, nor by an admin to
    // another key's endpoint; the refused change is not applied.
    for who in [&token, &admin] {
        let res = env
            .api()
            .request(
                reqwest::Method::PATCH,
                &format!("/api/v1/webhooks/{failing_id}"),
                Some(who),
                Some(&json!({"event_types": ["email.sent", "account.paused"]})),
            )
            .await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
        assert_eq!(res.code(), "admin_event_type", "{}", res.body);
    }
    let unchanged = env
        .api()
        .get(&format!("/api/v1/webhooks/{failing_id}"), &token)
        .await;
    assert_eq!(
        unchanged.body["data"]["event_types"],
        json!(["email.accepted", "email.sent"])
    );
    env.api()
        .send_simple(&token, "to-a-failing-endpoint@example.com")
        .await;

    let events = eventually("every platform event", Duration::from_secs(60), || async {
        let found = accepted_by_type(&admin_receiver).await;
        PLATFORM_EVENTS
            .iter()
            .all(|t| found.contains_key(*t))
            .then_some(found)
    })
    .await;
    let data = |t: &str| events[t]["event"]["data"].clone();
    for t in PLATFORM_EVENTS {
        assert_eq!(events[t]["verified"], json!([true]), "{t}: {}", events[t]);
    }
    assert_eq!(data("campaign.run.started")["run_id"], run);
    assert_eq!(data("campaign.run.started")["sequence"], 1);
    assert_eq!(data("campaign.run.completed")["run_id"], run);
    assert_eq!(data("campaign.run.completed")["status"], "completed");
    assert_eq!(data("campaign.run.completed")["sequence"], 2);
    assert_eq!(data("campaign.run.completed")["campaign_id"], campaign);
    assert_eq!(data("account.paused")["account"], "paused@example.com");
    assert_eq!(data("account.paused")["is_active"], false);
    assert_eq!(
        data("account.circuit_open")["account"],
        "broken@example.com"
    );
    assert!(data("account.circuit_open")["circuit_open_until"].is_string());
    let disabled = data("endpoint.disabled");
    assert_eq!(disabled["endpoint_id"], failing_id);
    assert!(disabled["reason"].is_string(), "{disabled}");
    assert_eq!(
        disabled["url"],
        failing.url(),
        "no query, no token: {disabled}"
    );
    // Nothing platform-wide reached the send key's endpoint, and the
    // message that met the broken account went out through the other.
    assert!(failing.log().await.iter().all(|e| e["event"]["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("email."))));
    env.wait_status(message, "sent", Duration::from_secs(30))
        .await;
    let shown = env
        .api()
        .get(&format!("/api/v1/webhooks/{failing_id}"), &token)
        .await;
    assert_eq!(shown.body["data"]["is_active"], false, "{}", shown.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_flight_loses_no_event() {
    let receiver = Receiver::start().await;
    let (mut env, token) = webhook_env(&[]).await;
    let types = ["email.accepted", "email.sent"];
    let (_, secret) = register(&env, &token, &receiver.url(), &types).await;
    // Each answer takes a while, so requests are in flight at the kill.
    receiver
        .control(json!({"secrets": [secret], "delay_ms": 1500}))
        .await;
    let messages = send_many(&env, &token, "k", 10).await;
    receiver.wait_first_request().await;
    env.signal_scheduler(0, "KILL").await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(pending > 0, "the kill came after every delivery was done");

    // A new dispatcher delivers the rest, the ones in flight at the kill
    // included: the killed one's locks went with its connection, so they
    // are due at once (no lease to wait out).
    let restarted = std::time::Instant::now();
    env.start_scheduler();
    for m in &messages {
        receiver.wait_events(*m, &types).await;
    }
    let caught_up = restarted.elapsed();
    assert!(
        caught_up < Duration::from_secs(20),
        "the rest took {caught_up:?} after the restart"
    );
    wait_all_delivered(&env, Duration::from_secs(90)).await;
    let accepted = receiver.accepted().await;
    assert_eq!(accepted.len(), 20, "one id per event: {accepted:?}");
    let repeats = assert_repeats_are_the_same_event(&accepted);
    eprintln!("{pending} deliveries pending at the kill; {repeats} repeated after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_while_no_scheduler_runs_arrive_in_order_once_one_starts() {
    let receiver = Receiver::start().await;
    let (mut env, token) = webhook_env(&[]).await;
    let types = ["email.accepted", "email.sent"];
    let (_, secret) = register(&env, &token, &receiver.url(), &types).await;
    receiver.control(json!({"secrets": [secret]})).await;
    env.signal_scheduler(0, "KILL").await;
    let messages = send_many(&env, &token, "later", 10).await;
    for m in &messages {
        env.wait_status(*m, "sent", Duration::from_secs(30)).await;
    }
    // The sending transactions recorded each event as one pending row;
    // nothing has turned them into deliveries yet.
    let (pending, deliveries): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_pending_events),
                (SELECT count(*) FROM webhook_deliveries)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((pending, deliveries), (20, 0));
    // An endpoint registered after the changes gets none of their events.
    let late = Receiver::start().await;
    let (late_id, _) = register(&env, &token, &late.url(), &types).await;

    env.start_scheduler();
    for m in &messages {
        let events = receiver.wait_events(*m, &types).await;
        let accepted = &events["email.accepted"]["event"]["data"];
        let sent = &events["email.sent"]["event"]["data"];
        // Numbered in the order of the changes, each with the message as
        // it was at its change, not as it is when fanned out.
        assert_eq!(
            (&accepted["sequence"], &sent["sequence"]),
            (&json!(1), &json!(2))
        );
        assert_eq!(accepted["status"], "queued", "{accepted}");
        assert_eq!(accepted["account"], Value::Null, "{accepted}");
        assert_eq!(sent["status"], "sent", "{sent}");
        assert_eq!(sent["account"], "sender@example.com", "{sent}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = receiver.accepted().await;
    assert_eq!(accepted.len(), 20, "one id per event");
    assert!(
        accepted.values().all(|hits| hits.len() == 1),
        "{accepted:?}"
    );
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_pending_events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    let late_deliveries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid")
            .bind(&late_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(late_deliveries, 0);
    assert!(late.log().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_the_dispatcher_loses_no_event() {
    let receiver = Receiver::start().await;
    let (mut env, token) = webhook_env(&[]).await;
    // The scheduler reaches PostgreSQL only through a proxy the test cuts.
    env.signal_scheduler(0, "KILL").await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = env
        .settings()
        .database_url
        .replace("127.0.0.1:5432", &proxy.addr.to_string());
    env.start_scheduler_with(&[("DATABASE_URL", url.as_str())]);
    let types = ["email.accepted", "email.sent"];
    let (_, secret) = register(&env, &token, &receiver.url(), &types).await;
    // Slow answers, so requests are in flight (and outcomes unwritten)
    // when the database goes away.
    receiver
        .control(json!({"secrets": [secret], "delay_ms": 300}))
        .await;
    let messages = send_many(&env, &token, "outage", 20).await;
    receiver.wait_first_request().await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    // The same scheduler process, once PostgreSQL is back, delivers every
    // event: a fan-out or an outcome that did not commit is still pending.
    for m in &messages {
        receiver.wait_events(*m, &types).await;
    }
    wait_all_delivered(&env, Duration::from_secs(60)).await;
    let accepted = receiver.accepted().await;
    assert_eq!(accepted.len(), 40, "one id per event: {accepted:?}");
    let repeats = assert_repeats_are_the_same_event(&accepted);
    eprintln!("{repeats} events sent again after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_the_deliveries_and_send_each_event_once() {
    let receiver = Receiver::start().await;
    let (mut env, token) = webhook_env(&[("WEBHOOK_ENDPOINT_CONCURRENCY", "4")]).await;
    env.start_scheduler();
    let types = ["email.accepted", "email.sent"];
    let (id, secret) = register(&env, &token, &receiver.url(), &types).await;
    // Slow answers keep both dispatchers claiming while the other holds
    // deliveries in flight.
    receiver
        .control(json!({"secrets": [secret], "delay_ms": 50}))
        .await;
    let messages = send_many(&env, &token, "two", 40).await;
    for m in &messages {
        receiver.wait_events(*m, &types).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = receiver.accepted().await;
    assert_eq!(accepted.len(), 80, "one id per event");
    let repeats: Vec<_> = accepted.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(repeats.is_empty(), "sent twice: {repeats:?}");
    // Each delivery counts the one attempt made.
    let once: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid
            AND status = 'delivered' AND attempts = 1",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(once, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_read_from_the_mailbox_reaches_a_verifying_receiver_as_email_bounced() {
    use crate::bounces::{report, PASSWORD, SENDER};
    use crate::support::imap::Dovecot;

    let receiver = Receiver::start().await;
    let (env, token) = webhook_env(&[("BOUNCE_POLL_INTERVAL_MS", "200")]).await;
    let imap = Dovecot::start(&[(SENDER, PASSWORD)]).await;
    let admin = env.api().admin_token(&env.pool).await;
    let accounts = env.api().get("/api/v1/admin/email-accounts", &admin).await;
    let account = accounts.body["data"][0]["id"].as_str().unwrap().to_string();
    let res = env
        .api()
        .put(
            &format!("/api/v1/admin/email-accounts/{account}/mailbox"),
            &admin,
            &json!({"imap_host": "127.0.0.1", "imap_port": imap.port, "imap_tls_mode": "none"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let (_, secret) = register(
        &env,
        &token,
        &receiver.url(),
        &["email.sent", "email.bounced"],
    )
    .await;
    receiver.control(json!({"secrets": [secret]})).await;

    let gone = "gone@example.org";
    let id = env
        .send_until(&token, gone, "sent", Duration::from_secs(30))
        .await;
    imap.deliver(SENDER, PASSWORD, &report("postfix_hard", id, gone))
        .await;
    let events = receiver
        .wait_events(id, &["email.sent", "email.bounced"])
        .await;
    let bounced = &events["email.bounced"]["event"]["data"];
    assert_eq!(bounced["status"], "bounced", "{bounced}");
    assert!(
        bounced["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("bounced: 5.1.1")),
        "{bounced}"
    );
    // Ordered after the send.
    assert!(
        bounced["sequence"].as_i64() > events["email.sent"]["event"]["data"]["sequence"].as_i64(),
        "{events:?}"
    );
}
