//! Per-recipient-domain throttles: held across worker processes, a
//! throttled domain's mail waits durably while other domains flow, and the
//! admin routes validate and audit.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use smtp_sink::{Fault, ReceivedMail, Stage};
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

const THROTTLES: &str = "/api/v1/admin/domain-throttles";

/// An API, an admin token and an account with room for the test's mail.
async fn env_with_account() -> (TestEnv, String) {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 1000).await;
    (env, token)
}

async fn throttle(env: &TestEnv, token: &str, body: Value) {
    let res = env.api().post(THROTTLES, token, &body).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
}

/// The mail the SMTP server received for `domain`, in order of arrival.
fn received_for(env: &TestEnv, domain: &str) -> Vec<ReceivedMail> {
    let suffix = format!("@{domain}");
    let mut mail: Vec<ReceivedMail> = env
        .smtp
        .received()
        .into_iter()
        .filter(|m| {
            m.rcpt_to
                .iter()
                .any(|r| r.to_ascii_lowercase().ends_with(&suffix))
        })
        .collect();
    mail.sort_by_key(|m| m.received_at);
    mail
}

/// The most transactions in progress at once among `mail`.
fn peak_overlap(mail: &[ReceivedMail]) -> usize {
    let mut edges: Vec<(SystemTime, i32)> = mail
        .iter()
        .flat_map(|m| [(m.started_at, 1), (m.received_at, -1)])
        .collect();
    // An end and a start at the same instant do not overlap.
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        peak = peak.max(now);
    }
    peak as usize
}

fn gaps(mail: &[ReceivedMail]) -> Vec<Duration> {
    mail.windows(2)
        .map(|w| {
            w[1].received_at
                .duration_since(w[0].received_at)
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domains_rate_holds_across_two_workers_while_other_domains_flow() {
    let (mut env, token) = env_with_account().await;
    // One send a second: a minute's limit, proved over a few seconds.
    throttle(
        &env,
        &token,
        json!({"domain": "slow.example", "rate_limit_per_minute": 60}),
    )
    .await;
    env.start_worker();
    env.start_worker();
    let started = SystemTime::now();
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    for i in 0..6 {
        slow.push(
            env.api()
                .send_simple(&token, &format!("s{i}@Slow.Example"))
                .await,
        );
        for j in 0..4 {
            fast.push(
                env.api()
                    .send_simple(&token, &format!("f{i}-{j}@fast.example"))
                    .await,
            );
        }
    }
    for id in &fast {
        env.wait_status(*id, "sent", Duration::from_secs(20)).await;
    }
    let fast_mail = received_for(&env, "fast.example");
    assert_eq!(fast_mail.len(), 24);
    let fast_done = fast_mail.last().unwrap().received_at;
    let slow_mail_then = received_for(&env, "slow.example").len();
    assert!(
        fast_done.duration_since(started).unwrap() < Duration::from_secs(4),
        "the other domain went at full speed: {:?}",
        fast_done.duration_since(started)
    );
    assert!(
        slow_mail_then <= 5,
        "the throttled domain did not: {slow_mail_then} of 6 by then"
    );
    for id in &slow {
        env.wait_status(*id, "sent", Duration::from_secs(30)).await;
    }
    let slow_mail = received_for(&env, "slow.example");
    assert_eq!(slow_mail.len(), 6);
    println!(
        "slow.example: gaps {:?}, the other domain done after {:?}",
        gaps(&slow_mail),
        fast_done.duration_since(started)
    );
    // Each send a cell (1 s) after the one before, whichever worker sent it
    // (a few milliseconds of SMTP jitter aside).
    // And the held ones kept up with it: each back within a second or so
    // of its cell (the delay ladder's granularity).
    for gap in gaps(&slow_mail) {
        assert!(gap >= Duration::from_millis(900), "{:?}", gaps(&slow_mail));
        assert!(gap <= Duration::from_secs(3), "{:?}", gaps(&slow_mail));
    }
    // The held messages waited in the ladder, and their timeline says why.
    let waited: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT message_id) FROM message_events
          WHERE event = 'waiting' AND detail->>'reason' LIKE 'domain_throttle: %slow.example%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(waited >= 4, "{waited} messages waited for slow.example");
    let fast_waited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_events e JOIN message_records m ON m.id = e.message_id
          WHERE e.event = 'waiting' AND m.to_addrs[1] LIKE '%@fast.example'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(fast_waited, 0);
    let last = slow.last().unwrap();
    let res = env
        .api()
        .get(&format!("/api/v1/messages/{last}/events"), &token)
        .await;
    let events = res.body["data"]["items"].as_array().unwrap().clone();
    let waiting: Vec<&Value> = events.iter().filter(|e| e["event"] == "waiting").collect();
    assert!(!waiting.is_empty(), "{events:?}");
    assert!(
        waiting[0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .starts_with(
                "domain_throttle: waiting for slow.example's limit of 60 sends per minute"
            ),
        "{waiting:?}"
    );
    assert_eq!(env.received_per_message_id().values().max(), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domains_connection_cap_holds_across_two_workers() {
    let (mut env, token) = env_with_account().await;
    throttle(
        &env,
        &token,
        json!({"domain": "capped.example", "max_connections": 2}),
    )
    .await;
    env.smtp
        .set_fault(Stage::DataEnd, Fault::Stall(Duration::from_millis(300)));
    env.start_worker();
    env.start_worker();
    // Each domain's ten in one batch: a worker takes a batch's sends
    // together, as many at once as its connections allow.
    for domain in ["capped.example", "open.example"] {
        let recipients: Vec<String> = (0..10).map(|i| format!("m{i}@{domain}")).collect();
        env.api().send_simple_batch(&token, &recipients).await;
    }
    eventually("20 sent", Duration::from_secs(60), || async {
        (env.count_status("sent").await == 20).then_some(())
    })
    .await;
    let capped = received_for(&env, "capped.example");
    let open = received_for(&env, "open.example");
    assert_eq!((capped.len(), open.len()), (10, 10));
    println!(
        "peaks: capped.example {}, open.example {}, all {}",
        peak_overlap(&capped),
        peak_overlap(&open),
        env.smtp.peak_transactions()
    );
    assert!(peak_overlap(&capped) <= 2, "{}", peak_overlap(&capped));
    // The cap is the domain's: the other domain's mail overlapped more.
    assert!(peak_overlap(&open) > 2, "{}", peak_overlap(&open));
    assert_eq!(env.received_per_message_id().values().max(), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_by_its_domain_is_sent_once_after_its_worker_is_killed() {
    let (mut env, token) = env_with_account().await;
    // A send every 10 s.
    throttle(
        &env,
        &token,
        json!({"domain": "slow.example", "rate_limit_per_minute": 6}),
    )
    .await;
    env.start_worker();
    let first = env
        .send_until(&token, "a@slow.example", "sent", Duration::from_secs(20))
        .await;
    let held = env.api().send_simple(&token, "b@slow.example").await;
    eventually("the second to wait", Duration::from_secs(10), || async {
        let error: Option<String> = sqlx::query_scalar(
            "SELECT error FROM message_records WHERE id = $1 AND status = 'queued'",
        )
        .bind(held)
        .fetch_one(&env.pool)
        .await
        .ok()
        .flatten();
        error
            .filter(|e| e.starts_with("domain_throttle:"))
            .map(|_| ())
    })
    .await;
    env.signal_worker(0, "KILL").await;
    env.wait_worker(0, Duration::from_secs(10)).await;
    env.start_worker();
    env.wait_status(held, "sent", Duration::from_secs(40)).await;
    let mail = received_for(&env, "slow.example");
    assert_eq!(mail.len(), 2);
    assert_eq!(env.received_per_message_id().values().max(), Some(&1));
    // The rate held across the restart: it is in Redis, not in a worker.
    let gap = gaps(&mail)[0];
    assert!(gap >= Duration::from_millis(9_500), "{gap:?}");
    let sent_first: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM message_records WHERE status = 'sent' ORDER BY sent_at")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(sent_first, [first, held]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_throttle_routes_validate_change_and_audit() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;
    let api = env.api();
    let (_, reader) = api.token(&env.pool, &["send", "read"]).await;

    // Validation: 422 with the field at fault.
    for (body, code, field) in [
        (
            json!({"domain": "not a domain"}),
            "validation_error",
            "domain",
        ),
        (json!({"domain": "localhost"}), "validation_error", "domain"),
        (
            json!({"domain": "gmail.com."}),
            "validation_error",
            "domain",
        ),
        (
            json!({"domain": "gmail.com", "rate_limit_per_minute": 0}),
            "validation_error",
            "rate_limit_per_minute",
        ),
        (
            json!({"domain": "gmail.com", "rate_limit_per_minute": 600_001}),
            "validation_error",
            "rate_limit_per_minute",
        ),
        (
            json!({"domain": "gmail.com", "max_connections": 1001}),
            "validation_error",
            "max_connections",
        ),
    ] {
        let res = api.post(THROTTLES, &admin, &body).await;
        assert_eq!(
            (res.status, res.code(), res.body["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, code, Some(field)),
            "{body}: {}",
            res.body
        );
    }
    let res = api
        .post(
            THROTTLES,
            &admin,
            &json!({"domain": "gmail.com", "per_hour": 5}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
    );
    let res = api
        .post(THROTTLES, &reader, &json!({"domain": "gmail.com"}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );

    // Create (lower-cased), and a second one for the domain is a conflict.
    let res = api
        .post(
            THROTTLES,
            &admin,
            &json!({"domain": "GMail.COM", "rate_limit_per_minute": 600, "max_connections": 10}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert_eq!(res.body["data"]["domain"], "gmail.com");
    assert_eq!(res.body["data"]["rate_limit_per_minute"], 600);
    let res = api
        .post(THROTTLES, &admin, &json!({"domain": "gmail.com"}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "domain_throttle_exists")
    );

    // Read in any case; a malformed path is a 400, an unknown domain 404.
    let res = api.get(&format!("{THROTTLES}/Gmail.com"), &admin).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["data"]["max_connections"], 10);
    let res = api.get(&format!("{THROTTLES}/no_such"), &admin).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "invalid_path")
    );
    let res = api
        .get(&format!("{THROTTLES}/googlemail.com"), &admin)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found"),
        "exact domains only"
    );
    let res = api.get(&format!("{THROTTLES}/gmail.com"), &reader).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);

    // PATCH: absent fields kept, 0 removes a limit.
    let res = api
        .request(
            Method::PATCH,
            &format!("{THROTTLES}/gmail.com"),
            Some(&admin),
            Some(&json!({"rate_limit_per_minute": 0})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["rate_limit_per_minute"], Value::Null);
    assert_eq!(res.body["data"]["max_connections"], 10);
    let res = api
        .request(
            Method::PATCH,
            &format!("{THROTTLES}/gmail.com"),
            Some(&admin),
            Some(&json!({"max_connections": -1})),
        )
        .await;
    assert_eq!(
        (res.status, res.code(), res.body["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            Some("max_connections")
        )
    );
    let res = api
        .request(
            Method::PATCH,
            &format!("{THROTTLES}/outlook.com"),
            Some(&admin),
            Some(&json!({"max_connections": 1})),
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    // PUT adds (201) or replaces (200; an absent limit is removed).
    let res = api
        .put(
            &format!("{THROTTLES}/outlook.com"),
            &admin,
            &json!({"rate_limit_per_minute": 120}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let res = api
        .put(
            &format!("{THROTTLES}/outlook.com"),
            &admin,
            &json!({"max_connections": 3}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        (
            &res.body["data"]["rate_limit_per_minute"],
            &res.body["data"]["max_connections"]
        ),
        (&Value::Null, &json!(3))
    );

    let res = api.get(THROTTLES, &admin).await;
    let domains: Vec<&str> = res.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["gmail.com", "outlook.com"]);

    let res = api.delete(&format!("{THROTTLES}/GMAIL.com"), &admin).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let res = api.delete(&format!("{THROTTLES}/gmail.com"), &admin).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    // Every change is in the audit log, with the domain as its target.
    let res = api
        .get("/api/v1/admin/audit-log?target=gmail.com", &admin)
        .await;
    let actions: Vec<(&str, &str)> = res.body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("domain_throttle.delete", "domain_throttle"),
            ("domain_throttle.update", "domain_throttle"),
            ("domain_throttle.create", "domain_throttle"),
        ],
        "{}",
        res.body
    );
    let res = api
        .get("/api/v1/admin/audit-log?target=outlook.com", &admin)
        .await;
    let outlook: HashMap<&str, &Value> = res.body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), &e["details"]))
        .collect();
    assert_eq!(
        outlook["domain_throttle.create"]["rate_limit_per_minute"],
        120
    );
    assert_eq!(outlook["domain_throttle.update"]["max_connections"], 3);
}
