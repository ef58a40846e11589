//! Resources belong to the key that created them: another non-admin key
//! neither sees nor changes them, a campaign's template and the removal of
//! a suppression need an admin key, and a send can only name a campaign its
//! key may see. Every cross-key attempt answers as documented and changes
//! nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::api::RunningApi;
use crate::support::TestEnv;

const TEMPLATES: &str = "/api/v1/templates";
const SEND: &str = "/api/v1/messages/email/send";

async fn create_template(api: &RunningApi, token: &str, name: &str) -> String {
    api.create(
        TEMPLATES,
        token,
        &json!({"name": name, "subject": "Hi {{ who }}", "html_body": "<p>{{ who }}</p>",
                "variables": ["who"]}),
    )
    .await
}

fn replacement(name: &str) -> Value {
    json!({"name": name, "subject": "Changed", "html_body": "<p>changed</p>"})
}

async fn stored_subject(env: &TestEnv, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT subject FROM templates WHERE id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

async fn message_count(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM message_records")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_neither_sees_nor_changes_nor_uses_another_keys_templates() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, alice) = api.token(&env.pool, &["send", "read"]).await;
    let (_, bob) = api.token(&env.pool, &["send", "read"]).await;
    let admin = api.admin_token(&env.pool).await;
    let id = create_template(api, &alice, "alice-welcome").await;
    let path = format!("{TEMPLATES}/{id}");

    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::PUT, path.clone(), Some(replacement("bob-owns-it"))),
        (Method::DELETE, path.clone(), None),
        (
            Method::POST,
            format!("{path}/render"),
            Some(json!({"variables": {"who": "x"}})),
        ),
    ] {
        let res = api
            .request(method.clone(), &path, Some(&bob), body.as_ref())
            .await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {path}: {}",
            res.body
        );
    }
    let res = api.get(TEMPLATES, &bob).await;
    assert_eq!(res.body["data"]["items"], json!([]), "{}", res.body);
    for reference in [
        json!({"template_id": id}),
        json!({"template": "alice-welcome"}),
    ] {
        let mut body = json!({"to": "x@example.org", "variables": {"who": "x"}});
        body.as_object_mut()
            .unwrap()
            .extend(reference.as_object().unwrap().clone());
        let res = api.post(SEND, &bob, &body).await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown_template"),
            "{}",
            res.body
        );
    }
    let res = api
        .post(
            "/api/v1/messages/email/batch",
            &bob,
            &json!({"template_id": id, "messages": [{"to": "x@example.org", "variables": {"who": "x"}}]}),
        )
        .await;
    assert_eq!(res.body["data"]["rejected"], 1, "{}", res.body);
    assert_eq!(
        res.body["data"]["results"][0]["error"]["code"],
        "unknown_template"
    );
    assert_eq!(
        stored_subject(&env, &id).await.as_deref(),
        Some("Hi {{ who }}")
    );
    assert_eq!(message_count(&env).await, 0);

    // The owner and admins see it; the owner uses it.
    let res = api.get(&path, &alice).await;
    assert_eq!(res.status, StatusCode::OK);
    let res = api.get(TEMPLATES, &admin).await;
    assert_eq!(res.body["data"]["items"][0]["id"], id.as_str());
    let res = api
        .post(
            SEND,
            &alice,
            &json!({"to": "x@example.org", "template": "alice-welcome", "variables": {"who": "x"}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_changes_a_template_that_a_campaign_mails() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, owner) = api.token(&env.pool, &["send", "read"]).await;
    let admin = api.admin_token(&env.pool).await;
    let id = create_template(api, &owner, "digest").await;
    api.admin_campaign(&admin, &id).await;

    let path = format!("{TEMPLATES}/{id}");
    let res = api.put(&path, &owner, &replacement("digest")).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "template_used_by_campaign"),
        "{}",
        res.body
    );
    let res = api.delete(&path, &owner).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "template_used_by_campaign")
    );
    assert_eq!(
        stored_subject(&env, &id).await.as_deref(),
        Some("Hi {{ who }}")
    );

    let res = api.put(&path, &admin, &replacement("digest")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(stored_subject(&env, &id).await.as_deref(), Some("Changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_are_listed_per_key_and_removed_only_by_an_admin() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, alice) = api.token(&env.pool, &["send", "read"]).await;
    let (_, bob) = api.token(&env.pool, &["send", "read"]).await;
    let admin = api.admin_token(&env.pool).await;
    let res = api
        .post(
            "/api/v1/suppressions",
            &alice,
            &json!({"address": "gone@example.org", "reason": "unsubscribed"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);

    let res = api.get("/api/v1/suppressions", &bob).await;
    assert_eq!(res.body["data"]["items"], json!([]), "{}", res.body);
    for key in [&alice, &bob] {
        let res = api
            .delete("/api/v1/suppressions/gone@example.org", key)
            .await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::FORBIDDEN, "insufficient_scope")
        );
    }
    // Suppression is platform-wide: Bob cannot mail the address either.
    let res = api
        .post(
            SEND,
            &bob,
            &json!({"to": "gone@example.org", "subject": "s", "content": "c"}),
        )
        .await;
    assert_eq!(res.body["data"]["status"], "suppressed", "{}", res.body);

    let res = api.get("/api/v1/suppressions", &admin).await;
    assert_eq!(res.body["data"]["items"][0]["address"], "gone@example.org");
    let res = api
        .delete("/api/v1/suppressions/gone@example.org", &admin)
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'suppression.delete'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_names_only_a_campaign_its_key_may_see() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, sender) = api.token(&env.pool, &["send", "read"]).await;
    let admin = api.admin_token(&env.pool).await;
    let template = create_template(api, &admin, "news").await;
    let campaign = api.admin_campaign(&admin, &template).await;
    let send = |campaign_id: String| json!({"to": "x@example.org", "subject": "s", "content": "c", "campaign_id": campaign_id});

    // An admin campaign, and one that does not exist: the same answer.
    for id in [campaign.clone(), Uuid::new_v4().to_string()] {
        let res = api.post(SEND, &sender, &send(id)).await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown_campaign"),
            "{}",
            res.body
        );
        assert_eq!(res.body["error"]["field"], "campaign_id");
    }
    let res = api
        .post(
            "/api/v1/messages/email/batch",
            &sender,
            &json!({"messages": [send(campaign.clone())]}),
        )
        .await;
    assert_eq!(
        res.body["data"]["results"][0]["error"]["code"],
        "unknown_campaign"
    );
    assert_eq!(message_count(&env).await, 0, "nothing recorded");

    let res = api
        .post(SEND, &admin, &send(Uuid::new_v4().to_string()))
        .await;
    assert_eq!(res.code(), "unknown_campaign");
    let res = api.post(SEND, &admin, &send(campaign.clone())).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let tagged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_records WHERE campaign_id = $1")
            .bind(Uuid::parse_str(&campaign).unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(tagged, 1);
}
