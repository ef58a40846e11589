//! Batch sends: valid entries are accepted and delivered like single sends;
//! invalid ones are reported by index.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::TestEnv;

const BATCH: &str = "/api/v1/messages/email/batch";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_accepts_valid_entries_and_reports_invalid_ones_by_index() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    let api = env.api();
    let res = api
        .post(
            "/api/v1/templates",
            &token,
            &json!({"name": "hello", "subject": "Hello {{ name }}",
            "html_body": "<p>Hi {{ name }}</p>", "variables": ["name"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);

    let res = api
        .post(
            BATCH,
            &token,
            &json!({"template": "hello", "messages": [
                {"to": "one@example.org", "variables": {"name": "One"}},
                {"to": "not-an-address", "variables": {"name": "Bad"}},
                {"to": "two@example.org", "variables": {}},
                {"to": "three@example.org", "subject": "Own subject", "content": "<p>own</p>"},
                {"to": "four@example.org", "variables": {"name": "Four"}, "bogus": 1},
            ]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let data = &res.body["data"];
    assert_eq!(
        (data["accepted"].as_u64(), data["rejected"].as_u64()),
        (Some(2), Some(3))
    );
    let results = data["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[1]["error"]["code"], "validation_error");
    assert_eq!(results[1]["error"]["field"], "to[0]");
    assert_eq!(results[2]["error"]["code"], "missing_variable");
    assert_eq!(results[4]["error"]["code"], "invalid_body");
    for i in [0, 3] {
        assert_eq!(results[i]["status"], "queued");
        let id = results[i]["message_id"].as_str().unwrap().parse().unwrap();
        env.wait_status(id, "sent", Duration::from_secs(20)).await;
    }
    let mail = env.smtp.wait_for(2, Duration::from_secs(5)).await;
    let mut subjects: Vec<String> = mail
        .iter()
        .map(|m| {
            mail_parser::MessageParser::default()
                .parse(&m.data)
                .and_then(|p| p.subject().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Hello One", "Own subject"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_is_limited() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["send"]).await;
    let one = json!({"to": "a@example.org", "subject": "s", "content": "c"});
    let res = api
        .post(BATCH, &token, &json!({"messages": vec![one.clone(); 501]}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large")
    );
    let res = api
        .post(BATCH, &token, &json!({"messages": Vec::<Value>::new()}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
    // The documented maximum is accepted, each entry recorded with its outbox row.
    let res = api
        .post(BATCH, &token, &json!({"messages": vec![one; 500]}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["data"]["accepted"], 500);
    assert_eq!(env.count_status("queued").await, 500);
}
