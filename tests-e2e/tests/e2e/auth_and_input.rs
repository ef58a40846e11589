//! Bad credentials and bad input get clear 4xx errors, never a 500.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::TestEnv;

const SEND: &str = "/api/v1/messages/email/send";

fn forge(env: &TestEnv, key_id: Uuid, algorithm: Algorithm, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "sub": key_id, "scopes": ["send", "read", "admin"], "typ": "access", "iss": "notify-api",
        "iat": now, "nbf": now - 1000, "exp": now + exp_offset, "jti": Uuid::new_v4(),
    });
    let secret = env.vars["JWT_SECRET_KEY"].as_bytes();
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (key_id, token) = api.token(&env.pool, &["send", "read"]).await;

    let res = api
        .request(Method::POST, SEND, None, Some(&json!({})))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
    assert_eq!(res.headers["www-authenticate"], "Bearer");

    let expired = forge(&env, key_id, Algorithm::HS256, -3600);
    let res = api
        .get(
            "/api/v1/messages/00000000-0000-0000-0000-000000000000",
            &expired,
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );

    let valid_forgery = forge(&env, key_id, Algorithm::HS256, 600);
    let res = api
        .get(
            &format!("/api/v1/messages/{}", Uuid::new_v4()),
            &valid_forgery,
        )
        .await;
    assert_eq!(
        res.status,
        StatusCode::NOT_FOUND,
        "a well-signed token passes: {}",
        res.body
    );

    let wrong_alg = forge(&env, key_id, Algorithm::HS512, 600);
    let res = api.get("/api/v1/admin/email-accounts", &wrong_alg).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let res = api.get("/api/v1/admin/email-accounts", &tampered).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    // The same claims with alg "none".
    let payload = token.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        api.get("/api/v1/admin/email-accounts", &none).await.status,
        StatusCode::UNAUTHORIZED
    );

    let res = api.get("/api/v1/admin/email-accounts", "not-a-jwt").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    let res = api.sign_in("noti_nope", "x").await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );

    // Revoking the key stops its outstanding tokens: the API caches usable
    // keys, and PostgreSQL's notification evicts the key within milliseconds.
    platform::db::api_keys::revoke(&env.pool, key_id)
        .await
        .unwrap();
    let path = format!("/api/v1/messages/{}", Uuid::new_v4());
    let started = std::time::Instant::now();
    let res = crate::support::eventually(
        "the revocation to apply",
        std::time::Duration::from_secs(2),
        || async {
            let res = api.get(&path, &token).await;
            (res.status == StatusCode::UNAUTHORIZED).then_some(res)
        },
    )
    .await;
    assert_eq!(res.code(), "key_revoked");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_keys_cannot_reach_admin_routes() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["send", "read"]).await;
    let res = api.get("/api/v1/admin/email-accounts", &token).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let res = api
        .post(
            "/api/v1/admin/email-accounts",
            &token,
            &json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let (_, read_only) = api.token(&env.pool, &["read"]).await;
    let res = api
        .post(
            SEND,
            &read_only,
            &json!({"to": "a@example.org", "subject": "s", "content": "c"}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
}

async fn raw_send(
    env: &TestEnv,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let api = env.api();
    let res = api
        .client
        .post(api.url(SEND))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_records_nothing() {
    let mut env = TestEnv::with_vars(&[("EMAIL_MAX_SIZE", "10000")]).await;
    let token = env.start_api_as_admin().await;
    let ok = json!({"to": "a@example.org", "subject": "Hi", "content": "<p>x</p>"});

    let (status, body) = raw_send(&env, &token, "application/json", b"{\"to\": ".to_vec()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );

    let (status, body) = raw_send(&env, &token, "text/plain", ok.to_string().into_bytes()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );

    let cases = [
        (
            json!({"subject": "Hi", "content": "x"}),
            "invalid_body",
            None,
        ),
        (
            json!({"to": "not-an-address", "subject": "Hi", "content": "x"}),
            "validation_error",
            Some("to[0]"),
        ),
        (
            json!({"to": ["a@example.org", "b@"], "subject": "Hi", "content": "x"}),
            "validation_error",
            Some("to[1]"),
        ),
        (
            json!({"to": "a@example.org", "cc": "x y@example.org", "subject": "Hi", "content": "x"}),
            "validation_error",
            Some("cc[0]"),
        ),
        (
            json!({"to": "a@example.org", "subject": "Hi\r\nBcc: victim@example.org", "content": "x"}),
            "validation_error",
            Some("subject"),
        ),
        (
            json!({"to": "a@example.org", "subject": "Hi", "content": "x", "from_name": "Evil\nX-Header: 1"}),
            "validation_error",
            Some("from_name"),
        ),
        (
            json!({"to": "a@example.org", "subject": "", "content": "x"}),
            "validation_error",
            Some("subject"),
        ),
        (
            json!({"to": "a@example.org", "subject": "Hi", "content": "  "}),
            "validation_error",
            Some("content"),
        ),
        (
            json!({"to": "a@example.org", "subject": "Hi", "content": "x", "reply_to": "nope"}),
            "validation_error",
            Some("reply_to"),
        ),
        (
            json!({"to": "a@example.org", "subject": "Hi", "content": "x", "unknown": 1}),
            "invalid_body",
            None,
        ),
        (
            json!({"to": [], "subject": "Hi", "content": "x"}),
            "validation_error",
            Some("to"),
        ),
        (
            json!({"to": (0..51).map(|i| format!("u{i}@example.org")).collect::<Vec<_>>(), "subject": "Hi", "content": "x"}),
            "validation_error",
            Some("to"),
        ),
    ];
    for (body, code, field) in cases {
        let res = env.api().post(SEND, &token, &body).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {}",
            res.body
        );
        assert_eq!(res.code(), code, "{body} -> {}", res.body);
        assert_eq!(
            res.body["error"]["field"].as_str(),
            field,
            "{body} -> {}",
            res.body
        );
        assert!(res.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    // Content beyond EMAIL_MAX_SIZE, and a body beyond the request limit.
    let big = json!({"to": "a@example.org", "subject": "Hi", "content": "x".repeat(20_000)});
    let res = env.api().post(SEND, &token, &big).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // The server answers before reading the whole body and closes the
    // connection, so this request gets a client of its own (a pooled
    // connection would be dead for the next request).
    let huge =
        json!({"to": "a@example.org", "subject": "Hi", "content": "x".repeat(3 * 1024 * 1024)});
    let res = reqwest::Client::new()
        .post(env.api().url(SEND))
        .bearer_auth(&token)
        .json(&huge)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap_or_default()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    // Bad Idempotency-Key, bad path, unknown route.
    let res = env
        .api()
        .client
        .post(env.api().url(SEND))
        .bearer_auth(&token)
        .header("Idempotency-Key", "")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = env.api().get("/api/v1/messages/not-a-uuid", &token).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "invalid_path")
    );
    let res = env.api().get("/api/v1/nothing-here", &token).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // Bad account input.
    let account_cases = [
        (
            json!({"email": "bad", "smtp_host": "h", "smtp_port": 25, "smtp_password": "p"}),
            "email",
        ),
        (
            json!({"email": "a@example.com", "smtp_host": "h h", "smtp_port": 25, "smtp_password": "p"}),
            "smtp_host",
        ),
        (
            json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 0, "smtp_password": "p"}),
            "smtp_port",
        ),
        (
            json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 25, "smtp_password": ""}),
            "smtp_password",
        ),
        (
            json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 25, "smtp_password": "p", "daily_limit": -1}),
            "daily_limit",
        ),
        (
            json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 25, "smtp_password": "p", "display_name": "A\r\nB"}),
            "display_name",
        ),
    ];
    for (body, field) in account_cases {
        let res = env
            .api()
            .post("/api/v1/admin/email-accounts", &token, &body)
            .await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {}",
            res.body
        );
        assert_eq!(
            res.body["error"]["field"].as_str(),
            Some(field),
            "{body} -> {}",
            res.body
        );
    }
    let res = env
        .api()
        .post("/api/v1/admin/email-accounts", &token, &json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 70000, "smtp_password": "p"}))
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    env.api()
        .add_account(&token, 2525, "dup@example.com", 1, 0)
        .await;
    let res = env
        .api()
        .post("/api/v1/admin/email-accounts", &token, &json!({"email": "dup@example.com", "smtp_host": "h", "smtp_port": 25, "smtp_password": "p"}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "account_exists")
    );

    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM message_records")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let outbox = env.outbox_len().await;
    assert_eq!(
        (records, outbox),
        (0, 0),
        "refused requests leave nothing behind"
    );
}
