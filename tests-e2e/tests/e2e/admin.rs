//! Operators: API keys, the audit log, SMTP account test/import/health, queues.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::TestEnv;

const KEYS: &str = "/api/v1/admin/api-keys";
const ACCOUNTS: &str = "/api/v1/admin/email-accounts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_minted_listed_and_revoked_with_immediate_effect() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let (_, sender) = api.token(&env.pool, &["send"]).await;

    let res = api
        .post(KEYS, &sender, &json!({"name": "x", "scopes": ["send"]}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let res = api
        .post(KEYS, &admin, &json!({"name": "x", "scopes": ["root"]}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
    assert_eq!(res.body["error"]["field"], "scopes[0]");

    let res = api
        .post(
            KEYS,
            &admin,
            &json!({"name": "billing", "scopes": ["send", "read"], "rate_limit_per_minute": 120}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let data = &res.body["data"];
    let id = data["id"].as_str().unwrap().to_string();
    assert_eq!(data["rate_limit_per_minute"], 120);
    let (key, secret) = (
        data["api_key"].as_str().unwrap(),
        data["api_secret"].as_str().unwrap(),
    );
    let res = api.sign_in(key, secret).await;
    assert_eq!(res.status, StatusCode::OK);
    let token = res.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api.get("/api/v1/messages", &token).await.status,
        StatusCode::OK
    );

    let res = api.get(KEYS, &admin).await;
    let listed = res.body["data"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        !res.body.to_string().contains(secret),
        "secrets are never listed"
    );
    assert!(listed.iter().all(|k| k.get("secret_hash").is_none()));

    let path = format!("{KEYS}/{id}");
    assert_eq!(
        api.delete(&path, &admin).await.status,
        StatusCode::NO_CONTENT
    );
    let res = api.get("/api/v1/messages", &token).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "key_revoked"),
        "outstanding tokens fail at once"
    );
    let res = api.delete(&path, &admin).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "already_revoked")
    );
    let res = api
        .delete(&format!("{KEYS}/{}", uuid::Uuid::new_v4()), &admin)
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let res = api.delete(&format!("{KEYS}/not-a-uuid"), &admin).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "invalid_path")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_audited_without_secrets() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (admin_id, admin) = api.token(&env.pool, &["send", "read", "admin"]).await;
    let res = api
        .client
        .post(api.url(ACCOUNTS))
        .bearer_auth(&admin)
        // A forged first entry, then what the (loopback, trusted) proxy saw.
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .json(
            &json!({"email": "ops@example.com", "smtp_host": "127.0.0.1", "smtp_port": 2525,
            "smtp_password": "hunter2-very-secret", "tls_mode": "none"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let account: Value = res.json().await.unwrap();
    let account_id = account["data"]["id"].as_str().unwrap().to_string();
    let res = api
        .request(
            Method::PATCH,
            &format!("{ACCOUNTS}/{account_id}"),
            Some(&admin),
            Some(&json!({"smtp_password": "another-secret-pw", "daily_limit": 9})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    api.post(
        "/api/v1/suppressions",
        &admin,
        &json!({"address": "x@example.org"}),
    )
    .await;
    api.post(KEYS, &admin, &json!({"name": "k", "scopes": ["read"]}))
        .await;

    let res = api.get("/api/v1/admin/audit-log", &admin).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let text = res.body.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("another-secret") && !text.contains("secret_"),
        "{text}"
    );
    let items = res.body["data"]["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "api_key.create",
            "suppression.create",
            "email_account.update",
            "email_account.create"
        ]
    );
    let created = &items[3];
    assert_eq!(created["actor_key_id"], admin_id.to_string());
    assert_eq!(created["target_id"], account_id);
    assert_eq!(created["client_addr"], "203.0.113.7");
    assert_eq!(created["details"]["email"], "ops@example.com");
    assert_eq!(
        items[2]["details"]["changed"],
        json!(["smtp_password", "daily_limit"])
    );
    assert_eq!(
        items[2]["client_addr"], "127.0.0.1",
        "the TCP peer without X-Forwarded-For"
    );

    // Filters and pagination.
    let res = api
        .get(
            "/api/v1/admin/audit-log?action=email_account.update",
            &admin,
        )
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 1);
    let res = api
        .get(
            &format!("/api/v1/admin/audit-log?target={account_id}"),
            &admin,
        )
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 2);
    let res = api
        .get(
            &format!("/api/v1/admin/audit-log?actor={admin_id}&limit=3"),
            &admin,
        )
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 3);
    let cursor = res.body["data"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let res = api
        .get(
            &format!("/api/v1/admin/audit-log?limit=3&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_eq!(
        res.body["data"]["items"][0]["action"],
        "email_account.create"
    );
    assert!(res.body["data"]["next_cursor"].is_null());
    let res = api
        .get(
            "/api/v1/admin/audit-log?created_after=2999-01-01T00:00:00Z",
            &admin,
        )
        .await;
    assert_eq!(res.body["data"]["items"].as_array().unwrap().len(), 0);
    let res = api.get("/api/v1/admin/audit-log?bogus=1", &admin).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_tested_imported_and_show_health() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let good = api
        .add_account(&admin, env.smtp.port(), "good@example.com", 10, 0)
        .await;
    assert_eq!(good["health"], "healthy");
    assert_eq!(good["consecutive_failures"], 0);
    let res = api
        .post(
            &format!("{ACCOUNTS}/{}/test", good["id"].as_str().unwrap()),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["ok"], true, "{}", res.body);
    assert!(env.smtp.received().is_empty(), "a test sends nothing");

    env.smtp.require_auth("good@example.com", "something-else");
    let res = api
        .post(
            &format!("{ACCOUNTS}/{}/test", good["id"].as_str().unwrap()),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(res.body["data"]["ok"], false, "{}", res.body);
    assert!(!res.body["data"]["message"].as_str().unwrap().is_empty());
    let res = api
        .post(
            &format!("{ACCOUNTS}/{}/test", uuid::Uuid::new_v4()),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    let entry = |email: &str| {
        json!({"email": email, "smtp_host": "127.0.0.1", "smtp_port": 2525,
        "smtp_password": "pw-import-secret", "tls_mode": "none"})
    };
    let res = api
        .post(
            &format!("{ACCOUNTS}/import"),
            &admin,
            &json!([
                entry("a@example.com"), entry("bad address"), entry("good@example.com"),
                {"email": "c@example.com"}, entry("d@example.com"),
            ]),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let data = &res.body["data"];
    assert_eq!(
        (data["imported"].as_u64(), data["rejected"].as_u64()),
        (Some(2), Some(3))
    );
    let results = data["results"].as_array().unwrap();
    assert!(results[0]["id"].is_string() && results[4]["id"].is_string());
    assert_eq!(results[1]["error"]["code"], "validation_error");
    assert_eq!(results[1]["error"]["field"], "email");
    assert_eq!(results[2]["error"]["code"], "account_exists");
    assert_eq!(results[3]["error"]["code"], "invalid_body");
    assert!(!res.body.to_string().contains("pw-import-secret"));
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT smtp_password_ciphertext FROM email_accounts")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(
        stored
            .iter()
            .all(|c| !String::from_utf8_lossy(c).contains("pw-import")),
        "encrypted"
    );
    let res = api
        .post(&format!("{ACCOUNTS}/import"), &admin, &json!([]))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );

    // Health follows the circuit columns.
    sqlx::query("UPDATE email_accounts SET consecutive_failures = 5, circuit_open_until = now() + interval '5 minutes' WHERE email = 'a@example.com'")
        .execute(&env.pool)
        .await
        .unwrap();
    let res = api.get(ACCOUNTS, &admin).await;
    let a = res.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == "a@example.com")
        .unwrap()
        .clone();
    assert_eq!(a["health"], "circuit_open");
    assert_eq!(a["consecutive_failures"], 5);
    assert!(a.get("smtp_password").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_show_depth_and_consumers() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;
    let (_, reader) = env.api().token(&env.pool, &["read"]).await;
    let res = env.api().get("/api/v1/admin/queues", &reader).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    env.start_worker();
    let queue = env.queue.clone();
    let res = crate::support::eventually(
        "the worker to consume",
        std::time::Duration::from_secs(20),
        || async {
            let res = env.api().get("/api/v1/admin/queues", &admin).await;
            (res.body["data"][0]["consumers"].as_u64() >= Some(1)).then_some(res)
        },
    )
    .await;
    let queues = res.body["data"].as_array().unwrap();
    assert_eq!(queues[0]["name"], queue);
    assert_eq!(queues[0]["role"], "tasks");
    assert_eq!(queues[0]["exists"], true);
    assert_eq!(queues[1]["name"], format!("{queue}.dead_letter"));
    assert_eq!(queues[1]["role"], "dead_letter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_change_the_database_rolls_back_is_not_audited() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let account = api
        .add_account(&admin, env.smtp.port(), "kept@example.com", 100, 0)
        .await;
    let id = account["id"].as_str().unwrap().to_string();
    // The fault: this test's database refuses the change at commit, after
    // the handler has done (and audited) its work.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
         CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE OR DELETE ON email_accounts
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let path = api.url(&format!("{ACCOUNTS}/{id}"));
    let update = api
        .client
        .patch(&path)
        .bearer_auth(&admin)
        .json(&json!({"daily_limit": 7}))
        .send()
        .await
        .unwrap();
    let delete = api
        .client
        .delete(&path)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(!update.status().is_success() && !delete.status().is_success());

    let audited: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id")
            .bind(&id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        audited,
        ["email_account.create"],
        "only what happened is audited"
    );
    let limit: i32 =
        sqlx::query_scalar("SELECT daily_limit FROM email_accounts WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(limit, 100);
}
