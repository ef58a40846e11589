//! A console session outlives its first access token while it is used,
//! ends at its absolute end, and still ends at once when its key is
//! revoked after a renewal.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::{key, HttpSession, ADMIN};
use crate::support::browser::Browser;
use crate::support::TestEnv;

/// Access tokens of this test live 6 s; a session at most 20 s.
const ACCESS: Duration = Duration::from_secs(6);
const SESSION: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_its_first_access_token() {
    let mut env = TestEnv::new().await;
    let mut settings = env.settings();
    let jwt = settings.jwt.as_mut().expect("the API reads JWT settings");
    jwt.access_ttl = ACCESS;
    jwt.refresh_ttl = SESSION;
    env.start_api_with(settings).await;
    let base = env.api().base.clone();
    let (key_id, operator_key, operator_secret) = key(&env.pool, "operator", ADMIN).await;

    let browser = Browser::start().await;
    browser
        .sign_in(&base, &operator_key, &operator_secret)
        .await;
    let signed_in = Instant::now();
    let first = browser.session_cookie().await.value().to_string();
    // A page 4 s after the last one: each request comes in the second half
    // of its token's life and swaps the token, so the session lasts past
    // the first token's 6 s.
    let mut held = first.clone();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        browser.goto(&format!("{base}/console/messages")).await;
        browser.wait_h1("Messages").await;
        let now = browser.session_cookie().await.value().to_string();
        assert_ne!(now, held, "the cookie holds the next token");
        held = now;
    }
    assert!(
        signed_in.elapsed() > ACCESS * 2,
        "well past the first token"
    );
    let stale = HttpSession::client()
        .get(format!("{base}/console"))
        .header("cookie", format!("notify_console={first}"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        stale.status(),
        StatusCode::SEE_OTHER,
        "the first token is done"
    );
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT session_id) FROM console_sessions WHERE api_key_id = $1",
    )
    .bind(key_id)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(sessions, 1, "one sign-in, several tokens");

    // Past its absolute end, the session is over however active.
    let left: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(ends_at) - now())::float8 FROM console_sessions WHERE api_key_id = $1",
    )
    .bind(key_id)
    .fetch_one(&env.pool)
    .await
    .expect("the session's end");
    assert!(left <= SESSION.as_secs_f64(), "{left}");
    tokio::time::sleep(Duration::from_secs_f64(left.max(0.0)) + Duration::from_millis(500)).await;
    browser.goto(&format!("{base}/console/messages")).await;
    browser.wait_h1("Sign in").await;

    // A renewed session still ends at once when its key is revoked.
    browser
        .sign_in(&base, &operator_key, &operator_secret)
        .await;
    let again = browser.session_cookie().await.value().to_string();
    tokio::time::sleep(Duration::from_secs(4)).await;
    browser.goto(&format!("{base}/console/messages")).await;
    browser.wait_h1("Messages").await;
    assert_ne!(browser.session_cookie().await.value(), again, "renewed");
    // (Tokens of this API live 6 s: a fresh one.)
    let admin_token = env.api().admin_token(&env.pool).await;
    let revoked = env
        .api()
        .delete(&format!("/api/v1/admin/api-keys/{key_id}"), &admin_token)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    browser.goto(&format!("{base}/console/messages")).await;
    browser.wait_h1("Sign in").await;
    browser.close().await;
}
