//! Bounces and complaints read from a real IMAP server (a Dovecot of the
//! test's own) by the scheduler's bounce processor, and what they do: the
//! message marked, the address suppressed, the next send to it recorded
//! `suppressed`, the account paused when its rates cross the limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::imap::Dovecot;
use crate::support::{eventually, TestEnv};

pub(crate) const SENDER: &str = "sender@example.com";
/// The SMTP password `add_sender` gives the account, which the IMAP side
/// uses too.
pub(crate) const PASSWORD: &str = "pw-sender@example.com";
const WAIT: Duration = Duration::from_secs(30);

/// A sample report (tests/fixtures/bounces) about message `id` to `to`.
pub(crate) fn report(name: &str, id: Uuid, to: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/bounces/{name}.eml",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("{{MESSAGE_ID}}", &format!("{}@example.com", id.simple()))
        .replace("{{NOTIFY_ID}}", &id.to_string())
        .replace("{{RECIPIENT}}", to)
        .replace("{{ACCOUNT}}", SENDER)
        .replace('\n', "\r\n")
        .into_bytes()
}

/// An environment that sends through `sender@example.com`, a scheduler
/// that reads mailboxes every 200 ms, and the account's mailbox on a
/// Dovecot of its own.
async fn setup(extra: &[(&str, &str)], schedulers: usize) -> (TestEnv, String, Dovecot) {
    let mut vars = vec![("BOUNCE_POLL_INTERVAL_MS", "200")];
    vars.extend_from_slice(extra);
    let (mut env, token) = TestEnv::sending(&vars, 1000).await;
    let imap = Dovecot::start(&[(SENDER, PASSWORD)]).await;
    let account = account_id(&env, &token).await;
    let res = env
        .api()
        .put(
            &format!("/api/v1/admin/email-accounts/{account}/mailbox"),
            &token,
            &json!({"imap_host": "127.0.0.1", "imap_port": imap.port, "imap_tls_mode": "none"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["imap_username"], SENDER);
    for _ in 0..schedulers {
        env.start_scheduler();
    }
    (env, token, imap)
}

async fn account_id(env: &TestEnv, token: &str) -> String {
    let res = env.api().get("/api/v1/admin/email-accounts", token).await;
    res.body["data"][0]["id"]
        .as_str()
        .expect("account")
        .to_string()
}

async fn mailbox(env: &TestEnv, token: &str) -> Value {
    let account = account_id(env, token).await;
    let res = env
        .api()
        .get(
            &format!("/api/v1/admin/email-accounts/{account}/mailbox"),
            token,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["data"].clone()
}

/// Waits until the mailbox view's counters reach `want` (reports,
/// unmatched, malformed, ignored).
async fn wait_counts(env: &TestEnv, token: &str, want: [i64; 4]) -> Value {
    eventually("the mailbox counters", WAIT, || async {
        let m = mailbox(env, token).await;
        let got =
            ["reports", "unmatched", "malformed", "ignored"].map(|k| m[k].as_i64().unwrap_or(-1));
        (got == want).then_some(m)
    })
    .await
}

async fn suppression_reason(env: &TestEnv, address: &str) -> Option<String> {
    sqlx::query_scalar("SELECT reason FROM suppressions WHERE address = $1")
        .bind(address)
        .fetch_optional(&env.pool)
        .await
        .expect("suppressions")
}

async fn timeline(env: &TestEnv, token: &str, id: Uuid) -> Vec<String> {
    let res = env
        .api()
        .get(&format!("/api/v1/messages/{id}/events"), token)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_in_the_mailbox_suppresses_the_address_and_the_next_send_is_suppressed() {
    let (env, token, imap) = setup(&[], 1).await;
    let gone = "gone.user@example.org";
    let id = env.send_until(&token, gone, "sent", WAIT).await;

    imap.deliver(SENDER, PASSWORD, &report("postfix_hard", id, gone))
        .await;
    env.wait_status(id, "bounced", WAIT).await;

    let res = env
        .api()
        .get(&format!("/api/v1/messages/{id}"), &token)
        .await;
    let error = res.body["data"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("bounced: 5.1.1") && error.contains("User unknown"),
        "{}",
        res.body
    );
    assert_eq!(
        suppression_reason(&env, gone).await.as_deref(),
        Some("bounce")
    );
    assert!(timeline(&env, &token, id)
        .await
        .contains(&"bounced".to_string()));

    let res = env
        .api()
        .get(&format!("/api/v1/admin/bounces?message_id={id}"), &token)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let bounce = &res.body["data"]["items"][0];
    assert_eq!(
        (
            &bounce["kind"],
            &bounce["recipient"],
            &bounce["status_code"],
            &bounce["source"],
            &bounce["outcome"],
            &bounce["suppressed"]
        ),
        (
            &json!("hard"),
            &json!(gone),
            &json!("5.1.1"),
            &json!("imap"),
            &json!("bounced"),
            &json!(true)
        ),
        "{bounce}"
    );

    // The report is flagged processed; the counters say so.
    let m = wait_counts(&env, &token, [1, 0, 0, 0]).await;
    assert_eq!(m["last_error"], Value::Null, "{m}");
    let flags = imap.flags(SENDER, PASSWORD).await;
    assert_eq!(flags.len(), 1);
    assert!(
        flags[0].1.contains(&"$NotifyProcessed".to_string())
            && flags[0].1.contains(&"\\Seen".to_string()),
        "{flags:?}"
    );

    // The next send to the address is recorded, not sent.
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": gone, "subject": "again", "content": "<p>again</p>"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["data"]["status"], "suppressed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_marks_the_message_complained_suppresses_and_tells_the_webhook() {
    let (env, token, imap) = setup(&[("WEBHOOK_ALLOW_PRIVATE", "true")], 1).await;
    let res = env
        .api()
        .post(
            "/api/v1/webhooks",
            &token,
            &json!({"url": "http://127.0.0.1:9/hook",
                    "event_types": ["email.bounced", "email.complained"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let annoyed = "annoyed@example.org";
    let id = env.send_until(&token, annoyed, "sent", WAIT).await;

    imap.deliver(SENDER, PASSWORD, &report("arf_complaint", id, annoyed))
        .await;
    env.wait_status(id, "complained", WAIT).await;
    assert_eq!(
        suppression_reason(&env, annoyed).await.as_deref(),
        Some("complaint")
    );
    let events = env.wait_webhook_event_types(id, WAIT).await;
    assert_eq!(events, ["email.complained"]);
    assert!(timeline(&env, &token, id)
        .await
        .contains(&"complained".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_bounces_are_counted_and_suppress_the_address_at_the_limit() {
    let (env, token, imap) = setup(&[("BOUNCE_SOFT_LIMIT", "2")], 1).await;
    let slow = "slow@example.org";
    let first = env.send_until(&token, slow, "sent", WAIT).await;
    imap.deliver(SENDER, PASSWORD, &report("gmail_delayed", first, slow))
        .await;
    wait_counts(&env, &token, [1, 0, 0, 0]).await;
    // Counted on the timeline, the message stays sent, the address is not
    // suppressed yet.
    assert_eq!(env.status(first).await, "sent");
    assert!(timeline(&env, &token, first)
        .await
        .contains(&"soft_bounced".to_string()));
    assert_eq!(suppression_reason(&env, slow).await, None);

    let second = env.send_until(&token, slow, "sent", WAIT).await;
    imap.deliver(SENDER, PASSWORD, &report("gmail_delayed", second, slow))
        .await;
    wait_counts(&env, &token, [2, 0, 0, 0]).await;
    assert_eq!(
        suppression_reason(&env, slow).await.as_deref(),
        Some("soft_bounce")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_unrelated_and_unknown_mail_is_counted_and_left_alone() {
    let (env, token, imap) = setup(&[], 1).await;
    let someone = "someone@example.org";
    // A report that cannot be read, an out-of-office reply, and a bounce
    // of a message that is not ours; then a good report, which is still
    // processed after them.
    imap.deliver(
        SENDER,
        PASSWORD,
        &report("malformed_report", Uuid::new_v4(), someone),
    )
    .await;
    imap.deliver(
        SENDER,
        PASSWORD,
        &report("out_of_office", Uuid::new_v4(), someone),
    )
    .await;
    imap.deliver(
        SENDER,
        PASSWORD,
        &report("postfix_hard", Uuid::new_v4(), someone),
    )
    .await;
    let id = env.send_until(&token, someone, "sent", WAIT).await;
    imap.deliver(SENDER, PASSWORD, &report("exim_plain", id, someone))
        .await;

    let m = wait_counts(&env, &token, [1, 1, 1, 1]).await;
    assert_eq!(m["last_error"], Value::Null, "{m}");
    env.wait_status(id, "bounced", WAIT).await;
    let flags = imap.flags(SENDER, PASSWORD).await;
    let processed: Vec<bool> = flags
        .iter()
        .map(|(_, f)| f.contains(&"$NotifyProcessed".to_string()))
        .collect();
    assert_eq!(processed, [false, false, false, true], "{flags:?}");
    // The unknown bounce is on record, matched to nothing, and did not
    // suppress anyone.
    let res = env
        .api()
        .get("/api/v1/admin/bounces?kind=hard", &token)
        .await;
    let items = res.body["data"]["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items
        .iter()
        .any(|b| b["message_id"].is_null() && b["outcome"].is_null() && b["suppressed"] == false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_apply_each_report_once() {
    let (env, token, imap) = setup(&[], 2).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let to = format!("gone{n}@example.org");
        let id = env.api().send_simple(&token, &to).await;
        ids.push((id, to));
    }
    for (id, _) in &ids {
        env.wait_status(*id, "sent", WAIT).await;
    }
    for (id, to) in &ids {
        imap.deliver(SENDER, PASSWORD, &report("postfix_hard", *id, to))
            .await;
    }
    for (id, _) in &ids {
        env.wait_status(*id, "bounced", WAIT).await;
    }
    wait_counts(&env, &token, [8, 0, 0, 0]).await;
    let bounces: i64 = sqlx::query_scalar("SELECT count(*) FROM bounces")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(bounces, 8);
    let bounced_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_events WHERE event = 'bounced'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(bounced_events, 8, "each message bounced once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_bounce_rate_crosses_the_threshold_is_paused_with_a_reason() {
    let (env, token, imap) = setup(
        &[
            ("BOUNCE_RATE_MIN_SENT", "4"),
            ("BOUNCE_RATE_PAUSE_THRESHOLD", "0.4"),
        ],
        1,
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let to = format!("list{n}@example.org");
        ids.push((env.send_until(&token, &to, "sent", WAIT).await, to));
    }
    // One bounce in four: 25%, under the threshold.
    imap.deliver(
        SENDER,
        PASSWORD,
        &report("postfix_hard", ids[0].0, &ids[0].1),
    )
    .await;
    wait_counts(&env, &token, [1, 0, 0, 0]).await;
    let account = env.api().get("/api/v1/admin/email-accounts", &token).await;
    assert_eq!(
        account.body["data"][0]["is_active"], true,
        "{}",
        account.body
    );
    // Two in four: 50%.
    imap.deliver(
        SENDER,
        PASSWORD,
        &report("postfix_hard", ids[1].0, &ids[1].1),
    )
    .await;
    let account = eventually("the account to be paused", WAIT, || async {
        let res = env.api().get("/api/v1/admin/email-accounts", &token).await;
        let account = res.body["data"][0].clone();
        (account["is_active"] == false).then_some(account)
    })
    .await;
    let reason = account["paused_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("bounce rate 50.00%"), "{account}");
    assert_eq!(account["deliverability"]["hard_bounces"], 2, "{account}");
    let audit = env
        .api()
        .get(
            "/api/v1/admin/audit-log?action=email_account.auto_pause",
            &token,
        )
        .await;
    assert_eq!(
        audit.body["data"]["items"].as_array().map(Vec::len),
        Some(1)
    );
}
