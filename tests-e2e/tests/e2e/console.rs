//! The operator console in a real browser (headless Chromium over
//! WebDriver) against the real platform: sign-in and sign-out, accounts,
//! a message reaching `sent` on its page, dead letters, API keys, and the
//! security rules (CSRF, admin pages, the sandboxed email). Every page's
//! screenshot lands in `target/console-screenshots/`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use platform::crypto::generate_api_credentials;
use platform::db::{api_keys, dead_letters};
use reqwest::StatusCode;
use serde_json::{json, Map};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::browser::Browser;
use crate::support::{eventually, TestEnv};

mod operations;
mod renewal;

/// A key made in the database: (id, key, secret).
async fn key(pool: &PgPool, name: &str, scopes: &[&str]) -> (Uuid, String, String) {
    let credentials = generate_api_credentials();
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let key = api_keys::insert(pool, name, "", &scopes, &credentials)
        .await
        .expect("insert api key");
    (key.id, credentials.key, credentials.secret)
}

const ADMIN: &[&str] = &["send", "read", "admin"];

/// A console session held by a plain HTTP client (no redirects followed):
/// its cookie header and its CSRF token.
struct HttpSession {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

/// The value of `name="csrf"` in a page.
fn csrf_in(html: &str) -> String {
    let start = html
        .find(r#"name="csrf" value=""#)
        .map(|i| i + r#"name="csrf" value=""#.len())
        .expect("a CSRF field in the page");
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The `name=value` of the Set-Cookie header for `name`, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            (
                v.split(';').next().unwrap_or_default().to_string(),
                v.to_string(),
            )
        })
}

impl HttpSession {
    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    /// Signs in through the form, as a browser would; returns the sign-in
    /// answer's Set-Cookie of the session too.
    async fn sign_in(
        base: &str,
        key: &str,
        secret: &str,
        forwarded_https: bool,
    ) -> (HttpSession, String) {
        let client = Self::client();
        let form = client
            .get(format!("{base}/console/sign-in"))
            .send()
            .await
            .expect("sign-in page");
        let (csrf_cookie, _) = set_cookie(&form, "notify_console_csrf").expect("csrf cookie");
        let csrf = csrf_in(&form.text().await.expect("body"));
        let mut request = client
            .post(format!("{base}/console/sign-in"))
            .header("cookie", &csrf_cookie)
            .form(&[("api_key", key), ("api_secret", secret), ("csrf", &csrf)]);
        if forwarded_https {
            request = request.header("x-forwarded-proto", "https");
        }
        let answer = request.send().await.expect("sign in");
        assert_eq!(
            answer.status(),
            StatusCode::SEE_OTHER,
            "sign-in redirects to the overview"
        );
        let (cookie, header) = set_cookie(&answer, "notify_console").expect("session cookie");
        let overview = client
            .get(format!("{base}/console"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("overview");
        assert_eq!(overview.status(), StatusCode::OK);
        let csrf = csrf_in(&overview.text().await.expect("body"));
        (
            HttpSession {
                client,
                base: base.to_string(),
                cookie,
                csrf,
            },
            header,
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("get");
        let status = r.status();
        (status, r.text().await.unwrap_or_default())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .expect("post");
        let status = r.status();
        (status, r.text().await.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_sets_a_strict_cookie_and_sign_out_revokes_the_session() {
    let mut env = TestEnv::with_vars(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    env.start_api().await;
    let base = env.api().base.clone();
    let (_, admin_key, admin_secret) = key(&env.pool, "operator", ADMIN).await;

    let browser = Browser::start().await;
    // A wrong secret is refused in words.
    browser.goto(&format!("{base}/console/sign-in")).await;
    browser.screenshot("sign-in").await;
    browser.fill("api_key", &admin_key).await;
    browser.fill("api_secret", "secret_wrong").await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_h1("Sign in").await;
    let error = browser.text(".error").await.expect("an error on the page");
    assert!(error.contains("API key or secret is wrong"), "{error}");
    assert!(error.contains("invalid_credentials"), "{error}");

    browser.sign_in(&base, &admin_key, &admin_secret).await;
    let cookie = browser.session_cookie().await;
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let token = cookie.value().to_string();
    let page = browser.source().await;
    assert!(page.contains("Sends per minute"), "the overview's chart");
    assert!(page.contains("Sends per hour"), "the overview's day chart");
    assert!(page.contains("Workers online"), "admin sees the workers");
    let stored: Option<String> = browser
        .client
        .execute(
            "return window.localStorage.length ? JSON.stringify(window.localStorage) : null",
            vec![],
        )
        .await
        .expect("script")
        .as_str()
        .map(str::to_owned);
    assert_eq!(stored, None, "nothing in localStorage");

    // The overview refreshes itself (htmx polling of its live part).
    let first = browser.text(".updated time").await.expect("updated time");
    eventually("the overview to refresh", Duration::from_secs(15), || {
        let browser = &browser;
        let first = first.clone();
        async move { browser.text(".updated time").await.filter(|t| *t != first) }
    })
    .await;

    browser.click("form.sign-out button[type=submit]").await;
    browser.wait_h1("Sign in").await;
    browser.close().await;

    // The token of the ended session opens nothing any more.
    let client = HttpSession::client();
    let after = client
        .get(format!("{base}/console"))
        .header("cookie", format!("notify_console={token}"))
        .send()
        .await
        .expect("get");
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert_eq!(after.headers()["location"], "/console/sign-in");

    // Over TLS (a trusted proxy says so) the cookie is Secure; else not.
    let (_, plain) = HttpSession::sign_in(&base, &admin_key, &admin_secret, false).await;
    assert!(
        plain.contains("HttpOnly") && plain.contains("SameSite=Strict"),
        "{plain}"
    );
    assert!(!plain.contains("Secure"), "{plain}");
    let (_, tls) = HttpSession::sign_in(&base, &admin_key, &admin_secret, true).await;
    assert!(tls.contains("; Secure"), "{tls}");
}

/// Fills and sends the console's form for `noreply@example.com`.
async fn add_account(browser: &Browser, smtp_port: u16) {
    browser.fill("email", "noreply@example.com").await;
    browser.fill("display_name", "System notice").await;
    browser.fill("smtp_host", "127.0.0.1").await;
    browser.fill("smtp_port", &smtp_port.to_string()).await;
    browser.fill("smtp_password", "hunter2-very-secret").await;
    browser
        .client
        .find(fantoccini::Locator::Id("tls_mode"))
        .await
        .expect("tls select")
        .select_by_value("none")
        .await
        .expect("select none");
    browser.fill("daily_limit", "250").await;
    browser.click("#create-account button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_account_created_is_listed_with_its_health_and_no_password() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let base = env.api().base.clone();
    let (_, admin_key, admin_secret) = key(&env.pool, "operator", ADMIN).await;
    let browser = Browser::start().await;
    browser.sign_in(&base, &admin_key, &admin_secret).await;

    browser.goto(&format!("{base}/console/accounts")).await;
    browser.wait_h1("Accounts").await;
    add_account(&browser, env.smtp.port()).await;
    let row = eventually("the account in the list", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            browser
                .text(r#"tr[data-account="noreply@example.com"]"#)
                .await
        }
    })
    .await;
    assert!(row.contains("healthy"), "{row}");
    assert!(row.contains("0 / 250"), "quota used today: {row}");
    assert!(browser
        .text(".notice")
        .await
        .unwrap_or_default()
        .contains("Account created"));
    assert!(
        !browser.source().await.contains("hunter2"),
        "no password in the page"
    );

    // Test connection: the local SMTP server answers.
    browser
        .click(r#"tr[data-account="noreply@example.com"] button[aria-label^="Test"]"#)
        .await;
    let result = eventually("the connection test", Duration::from_secs(15), || {
        let browser = &browser;
        async move { browser.text(".test-result").await }
    })
    .await;
    assert!(result.contains("passed"), "{result}");
    browser.screenshot("accounts").await;

    // The API's error, in words and with its field: the same address again.
    add_account(&browser, env.smtp.port()).await;
    let error = eventually("the refusal", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text(".error").await }
    })
    .await;
    assert!(
        error.contains("error code: account_exists") || error.contains("already"),
        "{error}"
    );
    assert!(
        !browser.source().await.contains("hunter2"),
        "the refused password is not echoed"
    );

    // Pause, then resume.
    browser
        .click(r#"tr[data-account="noreply@example.com"] button[aria-label^="Pause"]"#)
        .await;
    eventually("the pause", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            browser
                .text(r#"tr[data-account="noreply@example.com"]"#)
                .await
                .filter(|row| row.contains("disabled"))
        }
    })
    .await;
    browser
        .click(r#"tr[data-account="noreply@example.com"] button[aria-label^="Resume"]"#)
        .await;
    eventually("the resume", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            browser
                .text(r#"tr[data-account="noreply@example.com"]"#)
                .await
                .filter(|row| row.contains("healthy"))
        }
    })
    .await;
    browser.goto(&format!("{base}/console")).await;
    browser.wait_h1("Overview").await;
    let overview = browser.source().await;
    assert!(
        overview.contains("noreply@example.com"),
        "the overview lists the account"
    );
    browser.close().await;
}

/// A server that counts every connection made to it: anything the email
/// loads or a script in it reaches.
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_message_page_reaches_sent_and_its_email_runs_no_script_and_loads_nothing() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    let base = env.api().base.clone();
    let (_, admin_key, admin_secret) = key(&env.pool, "operator", ADMIN).await;
    let (port, hits) = canary().await;
    let html = format!(
        "<h1>Hello</h1><p>Your order shipped.</p>\
         <script>document.title = 'pwned'; window.pwned = 1; fetch('http://127.0.0.1:{port}/script');</script>\
         <img src=\"http://127.0.0.1:{port}/pixel.png\" alt=\"\">"
    );
    let sent = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "buyer@example.com", "subject": "Your order", "content": html}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.body);
    let id = sent.body["data"]["message_id"]
        .as_str()
        .expect("id")
        .to_string();

    let browser = Browser::start().await;
    browser.sign_in(&base, &admin_key, &admin_secret).await;
    browser.goto(&format!("{base}/console/messages/{id}")).await;
    // The page follows the message by itself until it is final.
    eventually(
        "the message page to show sent",
        Duration::from_secs(30),
        || {
            let browser = &browser;
            async move { browser.text("#status").await.filter(|s| s == "sent") }
        },
    )
    .await;
    let timeline = browser.text("ol.timeline").await.unwrap_or_default();
    assert!(
        timeline.contains("accepted") && timeline.contains("sent"),
        "{timeline}"
    );
    // Let the frame load and whatever it would fetch be fetched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    browser.screenshot("message").await;
    let frame = browser
        .client
        .find(fantoccini::Locator::Id("email-frame"))
        .await
        .expect("the email's frame");
    assert_eq!(
        frame.attr("sandbox").await.expect("attr"),
        Some(String::new())
    );
    assert_eq!(
        browser.client.title().await.expect("title"),
        format!("Message {} · notify console", &id[..8])
    );
    frame.enter_frame().await.expect("enter the frame");
    let heading = browser.text("h1").await.unwrap_or_default();
    assert_eq!(heading, "Hello", "the email is shown");
    if let Ok(seen) = browser
        .client
        .execute("return [document.title, typeof window.pwned]", vec![])
        .await
    {
        assert_eq!(
            seen,
            json!(["", "undefined"]),
            "the email's script did not run"
        );
    }
    browser
        .client
        .enter_parent_frame()
        .await
        .expect("leave the frame");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the email reached nothing outside"
    );

    // The email's own route says the same to any browser.
    let (session, _) = HttpSession::sign_in(&base, &admin_key, &admin_secret, false).await;
    let body = session
        .client
        .get(format!("{base}/console/messages/{id}/body"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .expect("body");
    let csp = body.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.starts_with("default-src 'none'; img-src data:; style-src 'unsafe-inline'"),
        "{csp}"
    );

    // The overview counts it.
    browser.goto(&format!("{base}/console")).await;
    browser.wait_h1("Overview").await;
    let legend = browser.text("ul.legend").await.unwrap_or_default();
    assert!(
        legend.contains("accepted: 1") && legend.contains("sent: 1"),
        "{legend}"
    );
    // And so does the last day's chart, per hour, drawn with the page.
    let day = browser
        .text("#day + figure ul.legend")
        .await
        .unwrap_or_default();
    assert!(
        day.contains("accepted: 1") && day.contains("sent: 1"),
        "{day}"
    );
    browser.screenshot("overview").await;

    // Search: by recipient and status, the message is listed with a link.
    browser.goto(&format!("{base}/console/messages")).await;
    browser.fill("recipient", "buyer@example.com").await;
    browser
        .client
        .find(fantoccini::Locator::Id("status"))
        .await
        .expect("status select")
        .select_by_value("sent")
        .await
        .expect("select sent");
    browser.click("form.search button[type=submit]").await;
    let table = eventually("the search result", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#messages-table").await }
    })
    .await;
    assert!(
        table.contains("buyer@example.com") && table.contains("Your order"),
        "{table}"
    );
    browser.screenshot("messages").await;
    browser.fill("recipient", "nobody@example.com").await;
    browser.click("form.search button[type=submit]").await;
    eventually("an empty result", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            browser
                .source()
                .await
                .contains("No message matches.")
                .then_some(())
        }
    })
    .await;
    browser.close().await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_requeues_a_dead_letter() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let base = env.api().base.clone();
    let (_, admin_key, admin_secret) = key(&env.pool, "operator", ADMIN).await;
    let task =
        platform::celery::TaskMessage::new("app.tasks.report", "dead-task-1", vec![], Map::new());
    let body = task.body();
    let id = dead_letters::insert(
        &env.pool,
        dead_letters::NewDeadLetter {
            task_id: Some("dead-task-1"),
            task_name: Some("app.tasks.report"),
            message_id: None,
            reason: "unknown task",
            content_type: Some("application/json"),
            headers: Map::new(),
            body: &body,
        },
    )
    .await
    .expect("a dead letter");

    let browser = Browser::start().await;
    browser.sign_in(&base, &admin_key, &admin_secret).await;
    browser.goto(&format!("{base}/console/dead-letters")).await;
    browser.wait_h1("Dead letters").await;
    let row = browser
        .text(&format!(r#"tr[data-dead-letter="{id}"]"#))
        .await
        .expect("the dead letter listed");
    assert!(
        row.contains("app.tasks.report") && row.contains("unknown task"),
        "{row}"
    );
    browser.screenshot("dead-letters").await;
    browser
        .click(&format!(r#"tr[data-dead-letter="{id}"] button"#))
        .await;
    eventually("the requeue", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            browser
                .text(&format!(r#"tr[data-dead-letter="{id}"]"#))
                .await
                .filter(|r| r.contains("requeued"))
        }
    })
    .await;
    browser.close().await;
    let requeued: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT requeued_at FROM dead_letters WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .expect("dead letter");
    assert!(requeued.is_some());
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'dead_letter.requeue' AND target_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&env.pool)
    .await
    .expect("audit");
    assert_eq!(audited, 1, "the same audited path as the REST route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_revoking_a_key_ends_its_session() {
    let mut env = TestEnv::new().await;
    let admin_token = env.start_api_as_admin().await;
    let base = env.api().base.clone();
    let (operator_id, operator_key, operator_secret) = key(&env.pool, "operator", ADMIN).await;
    let browser = Browser::start().await;
    browser
        .sign_in(&base, &operator_key, &operator_secret)
        .await;

    // Mint a key: the secret is shown once.
    browser.goto(&format!("{base}/console/api-keys")).await;
    browser.wait_h1("API keys").await;
    browser.fill("name", "billing-service").await;
    browser.click(r#"input[name="scope_send"]"#).await;
    browser.click("#mint-key button[type=submit]").await;
    let minted_key = eventually("the minted key", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#new-api-key").await }
    })
    .await;
    let minted_secret = browser.text("#new-api-secret").await.expect("the secret");
    assert!(minted_key.starts_with("noti_"), "{minted_key}");
    browser.screenshot("api-keys").await;
    let signed = env.api().sign_in(&minted_key, &minted_secret).await;
    assert_eq!(signed.status, StatusCode::OK, "the minted key works");
    browser.goto(&format!("{base}/console/api-keys")).await;
    assert!(
        !browser.source().await.contains(&minted_secret),
        "the secret is not shown again"
    );
    // An error in words: no scope.
    browser.fill("name", "no-scopes").await;
    browser.click("#mint-key button[type=submit]").await;
    let error = eventually("the refusal", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text(".error").await }
    })
    .await;
    assert!(
        error.contains("at least one scope") && error.contains("scopes"),
        "{error}"
    );

    // Revoked elsewhere (the REST API), the key's console session ends.
    let revoked = env
        .api()
        .delete(
            &format!("/api/v1/admin/api-keys/{operator_id}"),
            &admin_token,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    browser.goto(&format!("{base}/console/messages")).await;
    browser.wait_h1("Sign in").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_post_without_the_csrf_token_is_refused() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let base = env.api().base.clone();
    let (_, admin_key, admin_secret) = key(&env.pool, "operator", ADMIN).await;
    let (session, _) = HttpSession::sign_in(&base, &admin_key, &admin_secret, false).await;
    let keys_before: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&env.pool)
        .await
        .expect("count");

    let mint = [("name", "forged"), ("scope_admin", "on")];
    let (status, page) = session.post("/console/api-keys", &mint).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        page.contains("security token is missing or wrong"),
        "{page}"
    );
    let mut wrong = mint.to_vec();
    wrong.push(("csrf", "0123456789abcdef"));
    let (status, _) = session.post("/console/api-keys", &wrong).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = session.post("/console/sign-out", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "sign-out too");
    let keys_after: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(keys_after, keys_before, "nothing was minted");

    // The sign-in form has its own token (double-submit cookie).
    let refused = session
        .client
        .post(format!("{base}/console/sign-in"))
        .form(&[
            ("api_key", admin_key.as_str()),
            ("api_secret", admin_secret.as_str()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // With the session's token the same form works.
    let mut right = mint.to_vec();
    right.push(("csrf", session.csrf.as_str()));
    let (status, page) = session.post("/console/api-keys", &right).await;
    assert_eq!(status, StatusCode::CREATED, "{page}");

    // A session's token is its own: another sign-in's does not pass.
    let (other, _) = HttpSession::sign_in(&base, &admin_key, &admin_secret, false).await;
    assert_ne!(other.csrf, session.csrf);
    let mut crossed = mint.to_vec();
    crossed.push(("csrf", other.csrf.as_str()));
    let (status, _) = session.post("/console/api-keys", &crossed).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_non_admin_session_gets_403_on_admin_pages_with_no_data() {
    let mut env = TestEnv::new().await;
    let admin_token = env.start_api_as_admin().await;
    let base = env.api().base.clone();
    env.api()
        .add_account(
            &admin_token,
            env.smtp.port(),
            "secret-sender@example.com",
            100,
            0,
        )
        .await;
    let (_, admin_key_name, _) = key(&env.pool, "admin-only-key-name", ADMIN).await;
    let task =
        platform::celery::TaskMessage::new("app.tasks.private", "private-task", vec![], Map::new());
    let body = task.body();
    let dead = dead_letters::insert(
        &env.pool,
        dead_letters::NewDeadLetter {
            task_id: Some("private-task"),
            task_name: Some("app.tasks.private"),
            message_id: None,
            reason: "private reason",
            content_type: Some("application/json"),
            headers: Map::new(),
            body: &body,
        },
    )
    .await
    .expect("dead letter");
    let (_, user_key, user_secret) = key(&env.pool, "shop", &["send", "read"]).await;

    let browser = Browser::start().await;
    browser.sign_in(&base, &user_key, &user_secret).await;
    let nav = browser.text("nav").await.unwrap_or_default();
    assert!(
        !nav.contains("Accounts")
            && !nav.contains("API keys")
            && !nav.contains("Dead letters")
            && !nav.contains("Lists")
            && !nav.contains("Campaigns"),
        "{nav}"
    );
    assert!(nav.contains("Templates"), "{nav}");
    let overview = browser.source().await;
    assert!(
        !overview.contains("secret-sender@example.com"),
        "no accounts on a non-admin overview"
    );
    assert!(!overview.contains("Workers online"));
    browser.goto(&format!("{base}/console/accounts")).await;
    browser.wait_h1("Not allowed").await;
    browser.screenshot("forbidden").await;
    browser.close().await;

    let (session, _) = HttpSession::sign_in(&base, &user_key, &user_secret, false).await;
    for path in [
        "/console/accounts",
        "/console/api-keys",
        "/console/dead-letters",
        "/console/lists",
        "/console/campaigns",
    ] {
        let (status, page) = session.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        for secret in [
            "secret-sender@example.com",
            "admin-only-key-name",
            &admin_key_name[..12],
            "private reason",
            "app.tasks.private",
        ] {
            assert!(!page.contains(secret), "{path} shows {secret}");
        }
        assert!(
            page.contains("insufficient_scope"),
            "{path}: the reason in words"
        );
    }
    let csrf = session.csrf.clone();
    let (status, _) = session
        .post(
            &format!("/console/dead-letters/{dead}/requeue"),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = session
        .post(
            "/console/api-keys",
            &[
                ("csrf", csrf.as_str()),
                ("name", "x"),
                ("scope_admin", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let requeued: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT requeued_at FROM dead_letters WHERE id = $1")
            .bind(dead)
            .fetch_one(&env.pool)
            .await
            .expect("dead letter");
    assert!(requeued.is_none());
}

/// The list id in a console URL `/console/lists/{id}...`.
async fn list_id_in_url(browser: &Browser) -> String {
    let url = browser.client.current_url().await.expect("url");
    url.path()
        .trim_start_matches("/console/lists/")
        .trim_end_matches('/')
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_imports_a_list_from_csv_runs_a_campaign_and_watches_it_reach_100_percent() {
    let (mut env, _token) = TestEnv::sending(&[], 1000).await;
    env.start_scheduler();
    let base = env.api().base.clone();
    let (_, admin_key, admin_secret) = key(&env.pool, "operator", ADMIN).await;
    let browser = Browser::start().await;
    browser.sign_in(&base, &admin_key, &admin_secret).await;
    let nav = browser.text("nav").await.unwrap_or_default();
    assert!(
        nav.contains("Templates") && nav.contains("Lists") && nav.contains("Campaigns"),
        "{nav}"
    );

    // A template, previewed live as it is typed.
    browser.goto(&format!("{base}/console/templates/new")).await;
    browser.wait_h1("New template").await;
    browser.fill("name", "welcome").await;
    browser.fill("subject", "Hello {{ name }}").await;
    browser
        .fill("html_body", "<h1>Hi {{ name }}</h1><p>Welcome aboard.</p>")
        .await;
    browser.fill("variables", "name").await;
    browser.fill("sample", r#"{"name": "Ann"}"#).await;
    eventually(
        "the preview's rendered subject",
        Duration::from_secs(10),
        || {
            let browser = &browser;
            async move {
                browser
                    .text("#preview-subject")
                    .await
                    .filter(|s| s == "Hello Ann")
            }
        },
    )
    .await;
    let frame = browser
        .client
        .find(fantoccini::Locator::Id("preview-frame"))
        .await
        .expect("the preview's frame");
    assert_eq!(
        frame.attr("sandbox").await.expect("attr"),
        Some(String::new())
    );
    frame.enter_frame().await.expect("enter the preview");
    assert_eq!(
        browser.text("h1").await.as_deref(),
        Some("Hi Ann"),
        "the HTML rendered in the frame"
    );
    browser
        .client
        .enter_parent_frame()
        .await
        .expect("leave the preview");
    // A template error, in words with its field.
    browser.fill("sample", r#"{"nom": "Ann"}"#).await;
    let error = eventually("the preview's error", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#preview .error").await }
    })
    .await;
    assert!(error.contains("variables."), "{error}");
    browser.fill("sample", r#"{"name": "Ann"}"#).await;
    eventually("the preview again", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#preview-subject").await }
    })
    .await;
    browser
        .client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .expect("scroll to the top");
    browser.screenshot("template").await;
    browser.click("#template-form button[type=submit]").await;
    browser.wait_h1("Templates").await;
    let row = browser
        .text(r#"tr[data-template="welcome"]"#)
        .await
        .expect("the template listed");
    assert!(row.contains("Hello {{ name }}"), "{row}");
    browser.screenshot("templates").await;
    // Its editor: previewed as saved (sample values empty), then changed.
    browser.click(r#"tr[data-template="welcome"] a"#).await;
    browser.wait_h1("Template welcome").await;
    assert_eq!(
        browser.text("#preview-subject").await.as_deref(),
        Some("Hello")
    );
    browser.fill("subject", "Hello {{ name }}!").await;
    browser.click("#template-form button[type=submit]").await;
    let saved = eventually("the save", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text(".notice").await }
    })
    .await;
    assert_eq!(saved, "Template saved.");
    assert_eq!(
        browser
            .client
            .find(fantoccini::Locator::Id("subject"))
            .await
            .expect("subject")
            .prop("value")
            .await
            .expect("value")
            .as_deref(),
        Some("Hello {{ name }}!")
    );

    // A list, imported from CSV: 20 good rows and 2 bad ones (lines 6 and 15).
    browser.goto(&format!("{base}/console/lists")).await;
    browser.wait_h1("Lists").await;
    browser.fill("name", "newsletter").await;
    browser.click("#create-list button[type=submit]").await;
    browser.wait_h1("List newsletter").await;
    let list_id = list_id_in_url(&browser).await;
    let mut csv = String::from("email,name\n");
    let mut good = 0;
    for line in 2..=23 {
        match line {
            6 => csv.push_str("not-an-address,Bad\n"),
            15 => csv.push_str(",Nobody\n"),
            _ => {
                csv.push_str(&format!("member{good}@example.com,Member {good}\n"));
                good += 1;
            }
        }
    }
    assert_eq!(good, 20);
    browser.fill("csv", &csv).await;
    browser.click("#import-csv button[type=submit]").await;
    let summary = eventually("the import report", Duration::from_secs(15), || {
        let browser = &browser;
        async move { browser.text("#import-summary").await }
    })
    .await;
    assert!(
        summary.contains("20 added") && summary.contains("2 rejected"),
        "{summary}"
    );
    let line6 = browser
        .text(r#"#rejected-rows tr[data-line="6"]"#)
        .await
        .expect("line 6 reported");
    assert!(line6.contains("not-an-address"), "{line6}");
    let line15 = browser
        .text(r#"#rejected-rows tr[data-line="15"]"#)
        .await
        .expect("line 15 reported");
    assert!(line15.contains("no email address"), "{line15}");
    assert_eq!(browser.text("#member-count").await.as_deref(), Some("20"));
    browser.screenshot("list").await;

    // A campaign on that list, its next runs shown in its time zone.
    browser.goto(&format!("{base}/console/campaigns")).await;
    browser.wait_h1("Campaigns").await;
    browser.fill("name", "weekly digest").await;
    browser
        .client
        .find(fantoccini::Locator::Id("template_id"))
        .await
        .expect("template select")
        .select_by_label("welcome")
        .await
        .expect("select the template");
    browser
        .click(&format!(r#"input[name="list_ids"][value="{list_id}"]"#))
        .await;
    browser.fill("time_zone", "Europe/Paris").await;
    browser.fill("cron", "0 9 * * MON").await;
    let preview = eventually("the next-run preview", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#next-runs").await }
    })
    .await;
    assert_eq!(preview.lines().count(), 3, "{preview}");
    assert!(
        preview
            .lines()
            .all(|l| l.starts_with("Mon ") && l.contains("09:00 CE")),
        "Mondays at 09:00 Paris time: {preview}"
    );
    browser.screenshot("campaigns").await;
    browser.click("#create-campaign button[type=submit]").await;
    browser.wait_h1("Campaign weekly digest").await;
    let upcoming = browser.text("#next-runs").await.expect("next runs");
    assert_eq!(upcoming.lines().count(), 3, "{upcoming}");
    let facts = browser.text("dl.facts").await.unwrap_or_default();
    assert!(
        facts.contains("welcome") && facts.contains("newsletter"),
        "{facts}"
    );

    // Run now: the progress bar follows delivery to 100% by itself.
    browser.click("#run-now button").await;
    browser.wait_h1("Campaign weekly digest").await;
    eventually("the run to reach 100%", Duration::from_secs(90), || {
        let browser = &browser;
        async move {
            browser
                .text("tr.run .percent")
                .await
                .filter(|p| p == "100%")
        }
    })
    .await;
    let run = browser.text("tr.run").await.expect("the run");
    assert!(run.contains("20 / 20"), "{run}");
    let runs = browser
        .client
        .find(fantoccini::Locator::Id("runs"))
        .await
        .expect("runs");
    assert_eq!(
        runs.attr("hx-get").await.expect("attr"),
        None,
        "polling stops when the run is done"
    );
    browser.screenshot("campaign").await;
    browser.close().await;
    env.smtp.wait_for(20, Duration::from_secs(10)).await;

    // The import refuses a POST without the session's CSRF token.
    let (session, _) = HttpSession::sign_in(&base, &admin_key, &admin_secret, false).await;
    let (status, page) = session
        .post(
            &format!("/console/lists/{list_id}/import"),
            &[("csv", "email\nforged@example.com\n")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        page.contains("security token is missing or wrong"),
        "{page}"
    );
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM list_members WHERE address = $1")
        .bind("forged@example.com")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(members, 0, "nothing was imported");

    // Size limits, in words: the import's own (512 KiB of CSV), and the
    // console's form limit (2 MiB) before anything is read into a handler.
    let import = format!("/console/lists/{list_id}/import");
    let csrf = session.csrf.clone();
    let big = format!("email\n{}", "a".repeat(600 * 1024));
    let (status, page) = session
        .post(&import, &[("csrf", csrf.as_str()), ("csv", big.as_str())])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("larger than 524288 bytes") && page.contains("import_too_large"),
        "{page}"
    );
    let huge = "a".repeat(3 * 1024 * 1024);
    let (status, page) = session
        .post(&import, &[("csrf", csrf.as_str()), ("csv", huge.as_str())])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(page.contains("larger than 2 MiB"), "{page}");
}
