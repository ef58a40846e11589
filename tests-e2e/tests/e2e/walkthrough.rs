//! README's walkthrough, end to end.

use std::time::Duration;

use mail_parser::MessageParser;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::process::Command;
use uuid::Uuid;

use crate::support::{binary, eventually, TestEnv};

async fn cli_create_key(env: &TestEnv) -> (Uuid, String, String) {
    let out = Command::new(binary("notify-api"))
        .env_clear()
        .envs(&env.vars)
        .current_dir(std::env::temp_dir())
        .args([
            "create-api-key",
            "--name",
            "default",
            "--description",
            "walkthrough",
            "--admin",
        ])
        .output()
        .await
        .expect("run notify-api create-api-key");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{label} missing in {stdout}"))
    };
    let id = stdout
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| id.parse().expect("key id"))
        .expect("key id in output");
    (id, field("API Key:"), field("API Secret:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_from_cli_key_to_delivered_email() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    env.start_worker();

    // 1. An API key from the CLI; only hashes are stored.
    let (key_id, key, secret) = cli_create_key(&env).await;
    assert!(key.starts_with("noti_"));
    let stored: (String, String, String) = sqlx::query_as(
        "SELECT key_hash, secret_hash, array_to_string(scopes, ',') FROM api_keys WHERE id = $1",
    )
    .bind(key_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(!stored.0.contains(&key) && !stored.1.contains(&secret));
    assert_eq!(stored.2, "send,read,admin");

    // 2. Token and refresh.
    let api = env.api();
    let res = api.sign_in(key, secret).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let data = &res.body["data"];
    assert_eq!(data["token_type"], "bearer");
    assert_eq!(data["expires_in"], 3600);
    let refresh = data["refresh_token"].as_str().unwrap().to_string();
    let res = api
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let token = res.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // 3. An SMTP account; the server only accepts the right password, so a
    //    delivery proves it was decrypted correctly.
    env.smtp.require_auth("sender@example.com", "s3cret-pass");
    let res = api
        .post(
            "/api/v1/admin/email-accounts",
            &token,
            &json!({
                "email": "sender@example.com", "smtp_host": "127.0.0.1", "smtp_port": env.smtp.port(),
                "smtp_username": "sender@example.com", "smtp_password": "s3cret-pass",
                "display_name": "Acme Notices", "daily_limit": 100, "priority": 10, "tls_mode": "none",
            }),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let account = res.body["data"].clone();
    assert!(!res.body.to_string().contains("s3cret-pass"));
    assert!(account.get("smtp_password").is_none());
    let account_id = account["id"].as_str().unwrap().to_string();
    let (ciphertext, nonce, key_ref): (Vec<u8>, Vec<u8>, String) = sqlx::query_as(
        "SELECT smtp_password_ciphertext, smtp_password_nonce, smtp_password_key_id FROM email_accounts WHERE id = $1::uuid",
    )
    .bind(&account_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(!ciphertext.windows(11).any(|w| w == b"s3cret-pass"));
    assert_eq!((nonce.len(), key_ref.as_str()), (12, "k1"));

    let res = api
        .request(
            Method::PATCH,
            &format!("/api/v1/admin/email-accounts/{account_id}"),
            Some(&token),
            Some(&json!({"daily_limit": 1000, "priority": 5})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(
        (
            res.body["data"]["daily_limit"].as_i64(),
            res.body["data"]["priority"].as_i64()
        ),
        (Some(1000), Some(5))
    );
    let listed = api.get("/api/v1/admin/email-accounts", &token).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert!(!listed.body.to_string().contains("s3cret-pass"));

    // A second account, disabled and then deleted, is never used.
    let spare = api
        .add_account(&token, env.smtp.port(), "spare@example.com", 100, 100)
        .await;
    let spare_path = format!(
        "/api/v1/admin/email-accounts/{}",
        spare["id"].as_str().unwrap()
    );
    let res = api
        .request(
            Method::PATCH,
            &spare_path,
            Some(&token),
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(res.body["data"]["is_active"], false);
    let res = api.delete(&spare_path, &token).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get(&spare_path, &token).await.status,
        StatusCode::NOT_FOUND
    );

    // 4. Send, with an Idempotency-Key.
    let body = json!({
        "to": "alice@example.org", "cc": ["carol@example.org"], "bcc": "bob@example.org",
        "subject": "Your receipt", "content": "<h1>Thanks</h1><p>Order <b>42</b> is paid.</p>",
        "reply_to": "help@example.com",
    });
    let send = |body: serde_json::Value, idem: &'static str| {
        let req = api
            .client
            .post(api.url("/api/v1/messages/email/send"))
            .bearer_auth(&token)
            .header("Idempotency-Key", idem)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send(body.clone(), "order-42").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["data"]["status"], "queued");
    let message_id = first["data"]["message_id"].as_str().unwrap().to_string();
    assert!(first["data"]["task_id"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .is_ok());

    // 5. The record moves to sent.
    let message = eventually(
        "the message to be sent",
        Duration::from_secs(20),
        || async {
            let res = api
                .get(&format!("/api/v1/messages/{message_id}"), &token)
                .await;
            (res.body["data"]["status"] == "sent").then_some(res.body["data"].clone())
        },
    )
    .await;
    assert_eq!(message["account_email"], "sender@example.com");
    assert_eq!(message["attempts"], 1);
    assert!(
        message["smtp_response"]
            .as_str()
            .unwrap()
            .starts_with("250"),
        "{message}"
    );
    assert!(message["sent_at"].is_string() && message["queued_at"].is_string());

    // 6. The email as received.
    let received = env.smtp.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 1);
    let mail = &received[0];
    assert_eq!(mail.auth_user.as_deref(), Some("sender@example.com"));
    assert_eq!(mail.mail_from, "sender@example.com");
    let mut rcpt = mail.rcpt_to.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        ["alice@example.org", "bob@example.org", "carol@example.org"]
    );
    let parsed = MessageParser::default()
        .parse(&mail.data)
        .expect("parseable email");
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("Acme Notices"));
    assert_eq!(from.address(), Some("sender@example.com"));
    assert_eq!(parsed.message_id(), message["smtp_message_id"].as_str());
    assert!(parsed.date().is_some());
    assert_eq!(parsed.subject(), Some("Your receipt"));
    assert!(parsed.body_html(0).unwrap().contains("<b>42</b>"));
    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains("Thanks") && text.contains("42") && !text.contains("<b>"),
        "{text}"
    );
    assert!(parsed.reply_to().is_some());
    assert!(
        !mail.data_str().to_ascii_lowercase().contains("\nbcc:"),
        "Bcc must not be in the headers"
    );

    // Idempotency: a replay returns the first response and sends nothing.
    let replay = send(body.clone(), "order-42").await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(replay, first);
    let mut changed = body.clone();
    changed["subject"] = json!("Another");
    let reused = send(changed, "order-42").await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reused: serde_json::Value = reused.json().await.unwrap();
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");

    // While a request with the key is in flight (its lock held), a retry is 409.
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("idempotency:{key_id}:order-43"))
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = send(body.clone(), "order-43").await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    holder.rollback().await.unwrap();
    assert_eq!(
        send(body.clone(), "order-43").await.status(),
        StatusCode::ACCEPTED
    );

    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM message_records")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(records, 2, "the replay must not record a new message");
    env.smtp.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.smtp.received().len(), 2);

    // Health, readiness, version, docs.
    let health = api.request(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = api.request(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["checks"]["rabbitmq"], "ok");
    let version = api
        .request(Method::GET, "/api/v1/version", None, None)
        .await;
    assert_eq!(version.body["data"]["version"], env!("CARGO_PKG_VERSION"));
    let openapi = api.request(Method::GET, "/openapi.json", None, None).await;
    assert!(openapi.body["paths"]["/api/v1/messages/email/send"]["post"].is_object());
    let docs = api.client.get(api.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let metrics = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
}
