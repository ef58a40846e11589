//! One-click unsubscribe (RFC 8058): campaign mail (and sends that ask)
//! carries `List-Unsubscribe` and `List-Unsubscribe-Post`; GET of the link
//! changes nothing, a one-click POST unsubscribes at once (from the
//! campaign's lists, or from all mail), once; altered, forged and moved
//! tokens are refused; the timeline and the webhook events say so.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use smtp_sink::ReceivedMail;
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

const SECRET: &str = "e2e-unsubscribe-secret-0123456789abcdef";
const BASE: &str = "https://mail.example.test/notify";

/// API, worker, scheduler and a sender, with unsubscribe links signed
/// with [`SECRET`] under [`BASE`].
async fn environment() -> (TestEnv, String) {
    let (mut env, token) = TestEnv::sending(
        &[
            ("UNSUBSCRIBE_SECRET", SECRET),
            ("PUBLIC_BASE_URL", BASE),
            ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ],
        10_000,
    )
    .await;
    env.start_scheduler();
    env.wait_scheduler_leader("a scheduler leader", Duration::from_secs(30))
        .await;
    (env, token)
}

/// An inactive campaign of `scope` mailing a new list of `members`;
/// returns (campaign id, list id).
async fn campaign(env: &TestEnv, token: &str, scope: &str, members: &[&str]) -> (String, String) {
    let api = env.api();
    let template = api
        .create(
            "/api/v1/templates",
            token,
            &json!({"name": format!("t{}", Uuid::new_v4().simple()),
                    "subject": "News for {{ email }}", "html_body": "<p>Hi {{ email }}</p>",
                    "variables": ["email"]}),
        )
        .await;
    let list = api
        .create(
            "/api/v1/lists",
            token,
            &json!({"name": format!("l{}", Uuid::new_v4().simple())}),
        )
        .await;
    let members: Vec<Value> = members.iter().map(|a| json!({"address": a})).collect();
    let res = api
        .post(
            &format!("/api/v1/lists/{list}/members"),
            token,
            &json!(members),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let res = api
        .post(
            "/api/v1/campaigns",
            token,
            &json!({"name": "news", "template_id": template, "list_ids": [list],
                    "cron": "0 0 1 1 *", "is_active": false, "unsubscribe_scope": scope}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    assert_eq!(res.body["data"]["unsubscribe_scope"], scope);
    (res.body["data"]["id"].as_str().unwrap().to_string(), list)
}

/// Fires a run now and waits for it to be fanned out; returns its recipients.
async fn run(env: &TestEnv, token: &str, campaign: &str) -> i64 {
    let res = env
        .api()
        .post(
            &format!("/api/v1/campaigns/{campaign}/run"),
            token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let run: Uuid = res.body["data"]["id"].as_str().unwrap().parse().unwrap();
    eventually("the run to complete", Duration::from_secs(30), || async {
        let (status, recipients): (String, i32) =
            sqlx::query_as("SELECT status, recipients FROM campaign_runs WHERE id = $1")
                .bind(run)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        (status == "completed").then_some(i64::from(recipients))
    })
    .await
}

/// The last email received for `address`.
fn mail_to(env: &TestEnv, address: &str) -> ReceivedMail {
    env.smtp
        .received()
        .into_iter()
        .rev()
        .find(|m| m.rcpt_to.iter().any(|r| r.contains(address)))
        .unwrap_or_else(|| panic!("no mail to {address}"))
}

/// A header of a received email, unfolded; `None` when absent.
fn header(mail: &ReceivedMail, name: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .expect("an email");
    let value = parsed
        .headers_raw()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.replace("\r\n", "").replace('\n', "").trim().to_string());
    value
}

/// The token of the email's one-click link, checking both headers are
/// well-formed: one `<https://…/u/{token}>` (no mailto: none configured)
/// and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
fn one_click_token(mail: &ReceivedMail) -> String {
    let value = header(mail, "List-Unsubscribe").expect("a List-Unsubscribe header");
    assert_eq!(
        header(mail, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let links: Vec<&str> = value.split(',').map(str::trim).collect();
    assert_eq!(links.len(), 1, "only the https link: {value}");
    let url = links[0]
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or_else(|| panic!("a link in angle brackets: {value}"));
    let token = url
        .strip_prefix(&format!("{BASE}/u/"))
        .unwrap_or_else(|| panic!("{url} is under PUBLIC_BASE_URL"));
    assert!(
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token}"
    );
    token.to_string()
}

/// The id of the one message to `address`.
async fn message_to(env: &TestEnv, address: &str) -> Uuid {
    sqlx::query_scalar(
        "SELECT id FROM message_records WHERE to_addrs = ARRAY[$1] ORDER BY id DESC LIMIT 1",
    )
    .bind(address)
    .fetch_one(&env.pool)
    .await
    .expect("a message")
}

/// GET of the link: (status, content type, body).
async fn get_link(env: &TestEnv, token: &str, accept: &str) -> (StatusCode, String, String) {
    let res = env
        .api()
        .client
        .get(env.api().url(&format!("/u/{token}")))
        .header(ACCEPT, accept)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let content_type = res.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    (status, content_type, res.text().await.unwrap())
}

/// A one-click POST as a mailbox provider sends it, answered in JSON.
async fn one_click(env: &TestEnv, token: &str) -> (StatusCode, Value) {
    let res = env
        .api()
        .client
        .post(env.api().url(&format!("/u/{token}")))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    (status, res.json().await.unwrap())
}

async fn timeline(env: &TestEnv, token: &str, id: Uuid) -> Vec<Value> {
    let res = env
        .api()
        .get(&format!("/api/v1/messages/{id}/events"), token)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    res.body["data"]["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_click_post_unsubscribes_a_member_from_the_campaigns_lists_and_get_does_not() {
    let (env, token) = environment().await;
    let (campaign, list) = campaign(
        &env,
        &token,
        "list",
        &["ann@example.org", "bob@example.org"],
    )
    .await;
    assert_eq!(run(&env, &token, &campaign).await, 2);
    env.smtp.wait_for(2, Duration::from_secs(30)).await;
    let ann = one_click_token(&mail_to(&env, "ann@example.org"));
    let bob = one_click_token(&mail_to(&env, "bob@example.org"));
    assert_ne!(ann, bob);
    let message = message_to(&env, "ann@example.org").await;

    // GET (a link scanner, or the recipient's browser): a page with a
    // button that POSTs, and no change.
    let (status, content_type, page) = get_link(&env, &ann, "text/html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("ann@example.org"), "{page}");
    assert!(page.contains("method=\"post\""), "{page}");
    assert!(page.contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    let (_, _, state) = get_link(&env, &ann, "application/json").await;
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["data"]["status"], "subscribed", "{state}");
    let unsubscribed: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT unsubscribed_at FROM list_members WHERE address = 'ann@example.org'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(unsubscribed.is_none(), "GET changes nothing");

    // Altered, forged and moved tokens are refused, and change nothing.
    let mut altered = ann.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let (status, body) = one_click(&env, &altered).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_unsubscribe_token");
    let (status, _, page) = get_link(&env, &altered, "text/html").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("does not work"), "{page}");
    // Ann's token with bob's address in it (the same length), MAC kept.
    let mut raw = URL_SAFE_NO_PAD.decode(&ann).unwrap();
    let at = raw.len() - 32 - "ann@example.org".len();
    raw[at..at + 15].copy_from_slice(b"bob@example.org");
    let moved = URL_SAFE_NO_PAD.encode(&raw);
    let (status, body) = one_click(&env, &moved).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_unsubscribe_token");
    // Signed with another secret.
    use platform::mail::unsubscribe::{Claims, Target, UnsubscribeKey};
    let campaign_id: Uuid = campaign.parse().unwrap();
    let claims = Claims::new(
        message,
        "ann@example.org",
        Target::CampaignLists(campaign_id),
    );
    let forged =
        UnsubscribeKey::new("another-secret-0123456789abcdef0123".to_string().into()).sign(&claims);
    let (status, body) = one_click(&env, &forged).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_unsubscribe_token"))
    );
    // Signed with the right secret, but for an address ann's email was not sent to.
    let links = env.settings().unsubscribe.expect("unsubscribe settings");
    let replayed = links.key.sign(&Claims::new(
        message,
        "bob@example.org",
        Target::CampaignLists(campaign_id),
    ));
    let (status, body) = one_click(&env, &replayed).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_unsubscribe_token"))
    );
    // The right token without the one-click body.
    let res = env
        .api()
        .client
        .post(env.api().url(&format!("/u/{ann}")))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_one_click");

    // The one-click POST unsubscribes ann; again, it is idempotent.
    let (status, body) = one_click(&env, &ann).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "unsubscribed");
    assert_eq!(body["data"]["scope"], "list");
    assert_eq!(body["data"]["address"], "ann@example.org");
    let (status, body) = one_click(&env, &ann).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "already_unsubscribed");
    // A browser's POST (the page's button) gets a page.
    let res = env
        .api()
        .client
        .post(env.api().url(&format!("/u/{ann}")))
        .form(&[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Already unsubscribed"));

    // The timeline says so, once.
    let events = timeline(&env, &token, message).await;
    let unsubscribed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "unsubscribed")
        .collect();
    assert_eq!(unsubscribed.len(), 1, "{events:?}");
    assert_eq!(unsubscribed[0]["status"], "sent");
    assert_eq!(
        unsubscribed[0]["detail"],
        json!({"scope": "list", "address": "ann@example.org"})
    );
    let res = env
        .api()
        .get(&format!("/api/v1/lists/{list}/members"), &token)
        .await;
    let ann_member = res.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == "ann@example.org")
        .cloned()
        .unwrap();
    assert!(ann_member["unsubscribed_at"].is_string(), "{ann_member}");

    // The next run mails bob only.
    assert_eq!(run(&env, &token, &campaign).await, 1);
    env.smtp.wait_for(3, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = env.smtp.received();
    assert_eq!(received.len(), 3);
    assert!(received[2].rcpt_to.iter().any(|r| r.contains("bob@")));
    let to_ann = received
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r.contains("ann@")))
        .count();
    assert_eq!(to_ann, 1, "ann is not mailed again");
    // Leaving the list is not a suppression.
    let suppressed: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(suppressed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_scope_suppresses_and_sends_carry_a_link_only_when_they_ask() {
    let (env, token) = environment().await;
    let api = env.api();

    // A campaign of global scope: its link suppresses the address.
    let (campaign, _) = campaign(&env, &token, "global", &["carol@example.org"]).await;
    assert_eq!(run(&env, &token, &campaign).await, 1);
    env.smtp.wait_for(1, Duration::from_secs(30)).await;
    let carol = one_click_token(&mail_to(&env, "carol@example.org"));
    let (status, body) = one_click(&env, &carol).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["data"]["status"], &body["data"]["scope"]),
        (&json!("unsubscribed"), &json!("global"))
    );
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM suppressions WHERE address = 'carol@example.org'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(reason, "unsubscribe");
    let later = api.send_simple(&token, "carol@example.org").await;
    env.wait_status(later, "suppressed", Duration::from_secs(10))
        .await;
    let carol_campaign_message: Uuid = sqlx::query_scalar(
        "SELECT id FROM message_records WHERE to_addrs = ARRAY['carol@example.org']
            AND campaign_id IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let events = timeline(&env, &token, carol_campaign_message).await;
    assert!(
        events.iter().any(|e| e["event"] == "unsubscribed"
            && e["detail"] == json!({"scope": "global", "address": "carol@example.org"})),
        "{events:?}"
    );

    // Transactional mail: a link only when the send asks, and then global.
    let res = api
        .post(
            "/api/v1/webhooks",
            &token,
            &json!({"url": "http://127.0.0.1:9/hook", "event_types": ["email.unsubscribed"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let send = |to: &str, ask: bool| {
        let mut body = json!({"to": to, "subject": "Receipt", "content": "<p>Thanks</p>"});
        if ask {
            body["list_unsubscribe"] = json!(true);
        }
        body
    };
    let res = api
        .post(
            "/api/v1/messages/email/send",
            &token,
            &send("dan@example.org", true),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let dan: Uuid = res.body["data"]["message_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let res = api
        .post(
            "/api/v1/messages/email/send",
            &token,
            &send("eve@example.org", false),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let mut several = send("fay@example.org", true);
    several["cc"] = json!("gus@example.org");
    let res = api
        .post("/api/v1/messages/email/send", &token, &several)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        "{}",
        res.body
    );
    assert_eq!(res.body["error"]["field"], "list_unsubscribe");
    // A batch entry asks the same way.
    let res = api
        .post(
            "/api/v1/messages/email/batch",
            &token,
            &json!({"messages": [send("hal@example.org", true), send("ida@example.org", false)]}),
        )
        .await;
    assert_eq!(res.body["data"]["accepted"], 2, "{}", res.body);
    let scopes: Vec<(Vec<String>, Option<String>)> = sqlx::query_as(
        "SELECT to_addrs, unsubscribe_scope FROM message_records
          WHERE to_addrs && ARRAY['hal@example.org', 'ida@example.org'] ORDER BY to_addrs",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        scopes,
        [
            (
                vec!["hal@example.org".to_string()],
                Some("global".to_string())
            ),
            (vec!["ida@example.org".to_string()], None)
        ]
    );
    env.wait_status(dan, "sent", Duration::from_secs(20)).await;
    eventually("eve's mail", Duration::from_secs(20), || async {
        env.smtp
            .received()
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r.contains("eve@")))
            .then_some(())
    })
    .await;
    assert_eq!(
        header(&mail_to(&env, "eve@example.org"), "List-Unsubscribe"),
        None
    );
    assert_eq!(
        header(&mail_to(&env, "eve@example.org"), "List-Unsubscribe-Post"),
        None
    );
    let res = api.get(&format!("/api/v1/messages/{dan}"), &token).await;
    assert_eq!(
        res.body["data"]["unsubscribe_scope"], "global",
        "{}",
        res.body
    );
    let dan_token = one_click_token(&mail_to(&env, "dan@example.org"));
    let (status, body) = one_click(&env, &dan_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["scope"], "global");
    let events = env
        .wait_webhook_event_types(dan, Duration::from_secs(20))
        .await;
    assert_eq!(
        events,
        ["email.unsubscribed"],
        "the endpoint wants only that"
    );
    let again = api.send_simple(&token, "dan@example.org").await;
    env.wait_status(again, "suppressed", Duration::from_secs(10))
        .await;
}

#[test]
fn the_unsubscribe_scope_schema_leaves_the_api_key_scopes_alone() {
    let spec = notify_api::docs::document();
    let schemas = &spec["components"]["schemas"];
    assert_eq!(schemas["Scope"]["enum"], json!(["send", "read", "admin"]));
    assert_eq!(
        schemas["UnsubscribeScope"]["enum"],
        json!(["list", "global"])
    );
    let post = &spec["paths"]["/u/{token}"]["post"];
    assert!(post["security"].is_null(), "the token is the credential");
    assert!(post["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object());
}
