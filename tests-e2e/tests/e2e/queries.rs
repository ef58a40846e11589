//! Listing messages (filters, cursor pagination, per-key visibility) and statistics.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestEnv;

const SEND: &str = "/api/v1/messages/email/send";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_listed_filtered_and_paginated() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let (_, alice) = api.token(&env.pool, &["send", "read"]).await;
    let (_, bob) = api.token(&env.pool, &["send", "read"]).await;
    let (_, sender_only) = api.token(&env.pool, &["send"]).await;
    // Campaigns are admin resources: only an admin key tags sends with one
    // (see ownership.rs).
    let res = api
        .post(
            "/api/v1/templates",
            &admin,
            &json!({"name": "q", "subject": "s {{ who }}", "html_body": "c", "variables": ["who"]}),
        )
        .await;
    let template = res.body["data"]["id"].as_str().unwrap().to_string();
    let campaign = api.admin_campaign(&admin, &template).await;
    let mut alice_ids = Vec::new();
    for i in 0..7 {
        let body = json!({"to": format!("user{i}@example.org"), "subject": "s", "content": "c"});
        let res = api.post(SEND, &alice, &body).await;
        assert_eq!(res.status, StatusCode::ACCEPTED);
        alice_ids.push(res.body["data"]["message_id"].as_str().unwrap().to_string());
        if i % 2 == 0 {
            let tagged = json!({"to": format!("user{i}@example.org"), "subject": "s",
                                "content": "c", "campaign_id": campaign});
            let res = api.post(SEND, &admin, &tagged).await;
            assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
        }
    }
    let bob_id = api.send_simple(&bob, "User3@Example.org").await;

    // Pages of 3, newest first, no duplicates or gaps.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/messages?limit=3&cursor={c}"),
            None => "/api/v1/messages?limit=3".to_string(),
        };
        let res = api.get(&path, &alice).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        for item in res.body["data"]["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match res.body["data"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected = alice_ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "alice sees her own messages, newest first");

    let res = api
        .get(&format!("/api/v1/messages?campaign_id={campaign}"), &admin)
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 4);
    let res = api
        .get(&format!("/api/v1/messages?campaign_id={campaign}"), &alice)
        .await;
    assert_eq!(res.body["data"]["items"], json!([]), "not alice's messages");
    let res = api
        .get("/api/v1/messages?recipient=user3@example.org", &admin)
        .await;
    let found: HashSet<String> = res.body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        found,
        HashSet::from([alice_ids[3].clone(), bob_id.to_string()]),
        "case-insensitive, admin sees all"
    );
    // Alice's 7, Bob's 1 and the admin's 4 campaign sends.
    let res = api.get("/api/v1/messages?status=queued", &admin).await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 12);
    let res = api.get("/api/v1/messages?status=sent", &admin).await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 0);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let res = api
        .get(&format!("/api/v1/messages?created_after={future}"), &admin)
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 0);
    let res = api
        .get(&format!("/api/v1/messages?created_before={future}"), &admin)
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 12);

    // Another key's message is invisible.
    let res = api.get(&format!("/api/v1/messages/{bob_id}"), &alice).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    // Bad parameters.
    let res = api.get("/api/v1/messages?status=lost", &alice).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
    let res = api.get("/api/v1/messages?limit=101", &alice).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit")
    );
    let res = api.get("/api/v1/messages?cursor=garbage!", &alice).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor")
    );
    let res = api
        .get("/api/v1/messages?created_after=yesterday", &alice)
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let res = api.get("/api/v1/messages", &sender_only).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );

    // Statistics: per day and status, per account and status.
    let res = api.get("/api/v1/messages/stats", &alice).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let by_day = res.body["data"]["by_day"].as_array().unwrap();
    assert_eq!(by_day.len(), 1);
    assert_eq!(by_day[0]["status"], "queued");
    assert_eq!(by_day[0]["count"], 7);
    let res = api.get("/api/v1/messages/stats", &admin).await;
    assert_eq!(res.body["data"]["by_day"][0]["count"], 12);
    assert_eq!(res.body["data"]["by_account"][0]["count"], 12);
    assert!(res.body["data"]["by_account"][0]["account_id"].is_null());
    let res = api
        .get(
            "/api/v1/messages/stats?created_after=2020-01-01T00:00:00Z",
            &admin,
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
}
