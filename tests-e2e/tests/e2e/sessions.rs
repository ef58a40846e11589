//! Sign-in and sessions: refresh tokens are one-time and a replay revokes
//! the sign-in; a refresh reads scopes from the key and never extends the
//! session; failed sign-ins are throttled per key and per client address;
//! client addresses are taken only from trusted proxies.

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::api::{Response, RunningApi};
use crate::support::TestEnv;

const TOKEN: &str = "/api/v1/auth/token";
const REFRESH: &str = "/api/v1/auth/refresh";

struct Key {
    id: uuid::Uuid,
    key: String,
    secret: String,
}

async fn new_key(env: &TestEnv, scopes: &[&str]) -> Key {
    let credentials = platform::crypto::generate_api_credentials();
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let row = platform::db::api_keys::insert(&env.pool, "session", "", &scopes, &credentials)
        .await
        .unwrap();
    Key {
        id: row.id,
        key: credentials.key,
        secret: credentials.secret,
    }
}

async fn refresh(api: &RunningApi, token: &str) -> Response {
    api.request(
        Method::POST,
        REFRESH,
        None,
        Some(&json!({"refresh_token": token})),
    )
    .await
}

fn token(res: &Response, field: &str) -> String {
    res.body["data"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{}", res.body))
        .to_string()
}

/// A sign-in through a proxy that says the client is `forwarded_for`.
async fn sign_in_forwarded(
    api: &RunningApi,
    forwarded_for: &str,
    key: &str,
    secret: &str,
) -> StatusCode {
    api.client
        .post(api.url(TOKEN))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"api_key": key, "api_secret": secret}))
        .send()
        .await
        .unwrap()
        .status()
}

/// The claims of a JWT (its signature was checked by the API that took it).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_works_once_and_its_replay_revokes_the_sign_in() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let key = new_key(&env, &["send", "read"]).await;
    let first = api.sign_in(&key.key, &key.secret).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let r1 = token(&first, "refresh_token");

    let second = refresh(api, &r1).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let r2 = token(&second, "refresh_token");
    assert_ne!(r1, r2, "each refresh rotates the refresh token");

    // r1 was copied by someone: its second use is refused and revokes the family.
    let replay = refresh(api, &r1).await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::UNAUTHORIZED, "refresh_token_reused"),
        "{}",
        replay.body
    );
    let res = refresh(api, &r2).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "token_revoked"),
        "the legitimate holder's token went with the family: {}",
        res.body
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'auth.refresh_token_reused' AND actor_key_id = $1",
    )
    .bind(key.id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    // A new sign-in is a new family, unaffected.
    let again = api.sign_in(&key.key, &key.secret).await;
    let res = refresh(api, &token(&again, "refresh_token")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);

    // An access token is not a refresh token, and a forged one is refused.
    let res = refresh(api, &token(&again, "access_token")).await;
    assert_eq!(res.code(), "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_takes_scopes_from_the_key_and_never_extends_the_session() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let key = new_key(&env, &["send", "read"]).await;
    let first = api.sign_in(&key.key, &key.secret).await;
    let r1 = token(&first, "refresh_token");
    let session_ends = claims(&r1)["exp"].as_i64().unwrap();
    assert_eq!(
        claims(&token(&first, "access_token"))["scopes"],
        json!(["send", "read"])
    );

    sqlx::query("UPDATE api_keys SET scopes = '{read}' WHERE id = $1")
        .bind(key.id)
        .execute(&env.pool)
        .await
        .unwrap();
    // Two seconds on, so a sliding expiry would show.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let second = refresh(api, &r1).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let access = token(&second, "access_token");
    assert_eq!(
        claims(&access)["scopes"],
        json!(["read"]),
        "scopes from the key"
    );
    let res = api
        .post(
            "/api/v1/messages/email/send",
            &access,
            &json!({"to": "x@example.org", "subject": "s", "content": "c"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    assert_eq!(
        claims(&token(&second, "refresh_token"))["exp"]
            .as_i64()
            .unwrap(),
        session_ends,
        "the sign-in's expiry is kept"
    );

    // A revoked key's refresh token stops working.
    sqlx::query("UPDATE api_keys SET is_active = false, revoked_at = now() WHERE id = $1")
        .bind(key.id)
        .execute(&env.pool)
        .await
        .unwrap();
    let res = refresh(api, &token(&second, "refresh_token")).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "key_revoked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_throttled_per_key_and_per_address() {
    let mut env = TestEnv::with_vars(&[
        ("AUTH_MAX_FAILURES_PER_KEY", "3"),
        ("AUTH_MAX_FAILURES_PER_ADDRESS", "5"),
        ("AUTH_FAILURE_WINDOW_SECONDS", "600"),
    ])
    .await;
    env.start_api().await;
    let api = env.api();
    let alice = new_key(&env, &["send"]).await;
    let bob = new_key(&env, &["send"]).await;

    for _ in 0..3 {
        let res = api.sign_in(&alice.key, "wrong-secret").await;
        assert_eq!(res.code(), "invalid_credentials");
    }
    // Alice's key is spent: even the right secret is refused, with a delay.
    let res = api.sign_in(&alice.key, &alice.secret).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
        "{}",
        res.body
    );
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    // Bob is unaffected until the address is spent (5 failures from it).
    let res = api.sign_in(&bob.key, &bob.secret).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    for _ in 0..2 {
        let res = api.sign_in(&bob.key, "wrong-secret").await;
        assert_eq!(res.code(), "invalid_credentials");
    }
    let res = api.sign_in(&bob.key, &bob.secret).await;
    assert_eq!(res.code(), "too_many_attempts", "{}", res.body);
    // Any key is refused from this address now, known or not.
    let res = api.sign_in("noti_unknown", "x").await;
    assert_eq!(res.code(), "too_many_attempts");

    let rows: Vec<(String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT target_type, actor_key_id FROM audit_log WHERE action = 'auth.throttled' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("api_key".to_string(), Some(alice.id)),
            ("client_address".to_string(), Some(bob.id)),
        ],
        "each throttle's start is audited once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_entries_are_ignored() {
    // The API believes loopback (its default TRUSTED_PROXIES): the test
    // client plays the proxy, which appends the address it saw.
    let mut env = TestEnv::with_vars(&[("AUTH_MAX_FAILURES_PER_ADDRESS", "3")]).await;
    env.start_api().await;
    let api = env.api();
    let key = new_key(&env, &["send"]).await;
    // A guesser rotating a forged first entry is still one address.
    for i in 0..3 {
        let forwarded = format!("10.9.8.{i}, 203.0.113.50");
        let guess = format!("noti_guess{i}");
        let status = sign_in_forwarded(api, &forwarded, &guess, "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = sign_in_forwarded(api, "10.9.8.77, 203.0.113.50", &key.key, &key.secret).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let audited: String =
        sqlx::query_scalar("SELECT client_addr FROM audit_log WHERE action = 'auth.throttled'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(audited, "203.0.113.50");
    // Another client behind the same proxy signs in.
    let status = sign_in_forwarded(api, "203.0.113.51", &key.key, &key.secret).await;
    assert_eq!(status, StatusCode::OK);

    // With no trusted proxy, the header is not believed at all.
    let mut env = TestEnv::with_vars(&[("TRUSTED_PROXIES", "none")]).await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let res = api
        .client
        .post(api.url("/api/v1/suppressions"))
        .bearer_auth(&admin)
        .header("x-forwarded-for", "203.0.113.50")
        .header("x-real-ip", "203.0.113.50")
        .json(&json!({"address": "a@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let audited: String =
        sqlx::query_scalar("SELECT client_addr FROM audit_log WHERE action = 'suppression.create'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(audited, "127.0.0.1");
}
