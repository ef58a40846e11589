//! Templates: CRUD, preview, and templated sends rendered at request time.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestEnv;

const SEND: &str = "/api/v1/messages/email/send";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_managed_previewed_and_checked() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["send", "read"]).await;
    let (_, reader) = api.token(&env.pool, &["read"]).await;

    let body = json!({"name": "welcome", "subject": "Welcome, {{ name }}!",
        "html_body": "<p>Hello {{ name }}</p>", "text_body": "Hello {{ name }}", "variables": ["name"]});
    let id = api.create("/api/v1/templates", &token, &body).await;

    let res = api.post("/api/v1/templates", &token, &body).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "template_exists")
    );
    let res = api
        .post(
            "/api/v1/templates",
            &reader,
            &json!({"name": "x", "subject": "s", "html_body": "h"}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );

    let res = api
        .post(
            "/api/v1/templates",
            &token,
            &json!({"name": "broken", "subject": "Hi", "html_body": "{% if %}"}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "template_syntax_error")
    );
    assert_eq!(res.body["error"]["field"], "html_body");
    let res = api
        .post("/api/v1/templates", &token,
            &json!({"name": "undeclared", "subject": "Hi {{ who }}", "html_body": "x", "variables": []}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "undeclared_variable")
    );
    assert!(res.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("who"));

    // Preview: HTML escaped, subject and text not.
    let res = api
        .post(
            &format!("/api/v1/templates/{id}/render"),
            &token,
            &json!({"variables": {"name": "<Ann & Bob>"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["subject"], "Welcome, <Ann & Bob>!");
    assert_eq!(
        res.body["data"]["html"],
        "<p>Hello &lt;Ann &amp; Bob&gt;</p>"
    );
    assert_eq!(res.body["data"]["text"], "Hello <Ann & Bob>");
    let res = api
        .post(
            &format!("/api/v1/templates/{id}/render"),
            &token,
            &json!({"variables": {}}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "missing_variable")
    );
    assert_eq!(res.body["error"]["field"], "variables.name");

    // Replace, read, list, delete.
    let res = api
        .request(Method::PUT, &format!("/api/v1/templates/{id}"), Some(&token),
            Some(&json!({"name": "welcome", "subject": "Hi {{ user.name }}", "html_body": "<b>{{ user.name }}</b>", "variables": ["user"]})))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let res = api
        .post(
            &format!("/api/v1/templates/{id}/render"),
            &token,
            &json!({"variables": {"user": "not an object"}}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "template_render_error")
    );
    let res = api.get(&format!("/api/v1/templates/{id}"), &token).await;
    assert_eq!(res.body["data"]["variables"], json!(["user"]));
    let res = api.get("/api/v1/templates?limit=10", &token).await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 1);
    // Templates belong to the key that made them (see ownership.rs).
    let res = api.get(&format!("/api/v1/templates/{id}"), &reader).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let res = api.delete(&format!("/api/v1/templates/{id}"), &token).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let res = api.get(&format!("/api/v1/templates/{id}"), &token).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templated_send_is_rendered_at_request_time_and_delivered() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    let api = env.api();
    let template_id = api
        .create(
            "/api/v1/templates",
            &token,
            &json!({"name": "receipt", "subject": "Receipt {{ number }}",
            "html_body": "<p>Total: {{ total }}</p>", "variables": ["number", "total"]}),
        )
        .await;

    // Refused at request time, naming the variable; nothing recorded.
    let res = api
        .post(
            SEND,
            &token,
            &json!({"to": "a@example.org", "template": "receipt", "variables": {"number": 7}}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "missing_variable")
    );
    assert_eq!(res.body["error"]["field"], "variables.total");
    let res = api
        .post(
            SEND,
            &token,
            &json!({"to": "a@example.org", "template_id": template_id,
            "variables": {"number": 7, "total": 1, "totl": 2}}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_variable")
    );
    assert_eq!(res.body["error"]["field"], "variables.totl");
    let res = api
        .post(
            SEND,
            &token,
            &json!({"to": "a@example.org", "template": "nope", "variables": {}}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_template")
    );
    let res = api
        .post(
            SEND,
            &token,
            &json!({"to": "a@example.org", "template": "receipt", "subject": "x",
            "variables": {"number": 1, "total": 2}}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
    assert_eq!(env.count_status("queued").await, 0);

    let res = api
        .post(
            SEND,
            &token,
            &json!({"to": "a@example.org", "template": "receipt",
            "variables": {"number": 42, "total": "<5 €>"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let mail = env.smtp.wait_for(1, Duration::from_secs(20)).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail[0].data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Receipt 42"));
    assert_eq!(parsed.body_html(0).unwrap(), "<p>Total: &lt;5 €&gt;</p>");
}
