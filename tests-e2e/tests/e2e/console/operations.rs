//! The console's operations pages in a real browser: editing and
//! importing accounts, suppressions, webhooks (the secret shown once, a
//! test event delivered) and the audit log of it all; and the admin-only
//! rules of the new pages.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{key, HttpSession, ADMIN};
use crate::support::browser::Browser;
use crate::support::{eventually, TestEnv};

/// An HTTP receiver on loopback that answers every request `200 received`.
async fn receiver() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The whole request (headers, then Content-Length bytes).
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nreceived")
                    .await;
            });
        }
    });
    port
}

/// Waits for a `p.notice` reading `text` (after a form's redirect).
async fn wait_notice(browser: &Browser, text: &str) {
    eventually(text, Duration::from_secs(10), || async move {
        browser.text("p.notice").await.filter(|t| t.contains(text))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_and_imports_accounts_and_manages_suppressions_and_webhooks() {
    let mut env = TestEnv::with_vars(&[
        ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ("WEBHOOK_POLL_MS", "100"),
    ])
    .await;
    let admin_token = env.start_api_as_admin().await;
    env.start_scheduler();
    let base = env.api().base.clone();
    let account = env
        .api()
        .add_account(&admin_token, env.smtp.port(), "sender@example.com", 100, 0)
        .await;
    let account_id = account["id"].as_str().expect("id").to_string();
    let sealed_before: Vec<u8> =
        sqlx::query_scalar("SELECT smtp_password_ciphertext FROM email_accounts WHERE email = $1")
            .bind("sender@example.com")
            .fetch_one(&env.pool)
            .await
            .expect("account");
    let (operator_id, operator_key, operator_secret) = key(&env.pool, "operator", ADMIN).await;
    let browser = Browser::start().await;
    browser
        .sign_in(&base, &operator_key, &operator_secret)
        .await;

    // Edit: the form is filled in, except the password.
    browser.goto(&format!("{base}/console/accounts")).await;
    browser.wait_h1("Accounts").await;
    browser
        .click(r#"a[aria-label="Edit sender@example.com"]"#)
        .await;
    browser.wait_h1("Edit account sender@example.com").await;
    let page = browser.source().await;
    assert!(!page.contains("pw-sender@example.com"), "no password shown");
    let password = browser
        .client
        .find(fantoccini::Locator::Id("smtp_password"))
        .await
        .expect("password field")
        .prop("value")
        .await
        .expect("value");
    assert_eq!(password.as_deref(), Some(""));
    browser.screenshot("account-edit").await;
    browser.fill("display_name", "Billing").await;
    browser.fill("daily_limit", "300").await;
    browser.click("#edit-account button[type=submit]").await;
    wait_notice(&browser, "Account saved.").await;
    let (name, limit, sealed_after): (String, i32, Vec<u8>) = sqlx::query_as(
        "SELECT display_name, daily_limit, smtp_password_ciphertext FROM email_accounts WHERE id = $1::uuid",
    )
    .bind(&account_id)
    .fetch_one(&env.pool)
    .await
    .expect("account");
    assert_eq!((name.as_str(), limit), ("Billing", 300));
    assert_eq!(
        sealed_after, sealed_before,
        "an empty password field changes nothing"
    );
    // A refused edit says why, naming the field.
    browser
        .click(r#"a[aria-label="Edit sender@example.com"]"#)
        .await;
    browser.wait_h1("Edit account sender@example.com").await;
    browser.fill("email", "not-an-address").await;
    // The browser's own check would stop the form: the API's is the one tested.
    browser
        .client
        .execute("document.getElementById('email').type = 'text'", vec![])
        .await
        .expect("script");
    browser.click("#edit-account button[type=submit]").await;
    let error = eventually("the refusal", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text(".error").await }
    })
    .await;
    assert!(error.contains("field: email"), "{error}");

    // Import: two good rows and a bad one, each reported.
    browser
        .goto(&format!("{base}/console/accounts/import"))
        .await;
    browser.wait_h1("Import accounts").await;
    let port = env.smtp.port();
    let csv = format!(
        "email,smtp_host,smtp_port,smtp_password,tls_mode,daily_limit\n\
         one@example.com,127.0.0.1,{port},pw-one,none,50\n\
         two@example.com,127.0.0.1,{port},pw-two,none,60\n\
         three-at-example.com,127.0.0.1,{port},pw-three,none,70\n"
    );
    browser.fill("data", &csv).await;
    browser.click("#import-accounts button[type=submit]").await;
    let report = eventually("the import report", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#import-report").await }
    })
    .await;
    assert!(report.contains("2 imported, 1 rejected"), "{report}");
    let rejected = browser
        .text(r#"tr[data-outcome="rejected"]"#)
        .await
        .expect("the rejected row");
    assert!(
        rejected.contains("row 3")
            && rejected.contains("three-at-example.com")
            && rejected.contains("field: email"),
        "{rejected}"
    );
    assert!(
        !browser.source().await.contains("pw-one"),
        "no password shown back"
    );
    browser.screenshot("account-import").await;
    let imported: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_accounts WHERE email IN ('one@example.com', 'two@example.com')",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(imported, 2);

    // Suppressions: add, find, remove.
    browser.goto(&format!("{base}/console/suppressions")).await;
    browser.wait_h1("Suppressions").await;
    browser.fill("address", "Optout@Example.com").await;
    browser.fill("reason", "unsubscribed").await;
    browser.click("#add-suppression button[type=submit]").await;
    wait_notice(&browser, "Address suppressed").await;
    browser.fill("search-address", "optout").await;
    browser.click("form.search button[type=submit]").await;
    let row = eventually("the suppression", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            browser
                .text(r#"tr[data-address="optout@example.com"]"#)
                .await
        }
    })
    .await;
    assert!(row.contains("unsubscribed"), "{row}");
    browser.screenshot("suppressions").await;
    browser
        .click(r#"button[aria-label="Remove the suppression of optout@example.com"]"#)
        .await;
    wait_notice(&browser, "Suppression removed").await;
    assert!(browser
        .text(r#"tr[data-address="optout@example.com"]"#)
        .await
        .is_none());

    // Webhooks: the secret once, then a test event delivered.
    let hook_port = receiver().await;
    let hook_url = format!("http://127.0.0.1:{hook_port}/hook");
    browser.goto(&format!("{base}/console/webhooks")).await;
    browser.wait_h1("Webhooks").await;
    browser.fill("url", &hook_url).await;
    browser.fill("description", "shop").await;
    browser.click("#create-webhook button[type=submit]").await;
    let secret = eventually("the signing secret", Duration::from_secs(10), || {
        let browser = &browser;
        async move { browser.text("#new-webhook-secret").await }
    })
    .await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    browser.screenshot("webhooks").await;
    browser.goto(&format!("{base}/console/webhooks")).await;
    browser.wait_h1("Webhooks").await;
    assert!(
        !browser.source().await.contains(&secret),
        "the secret is not shown again"
    );
    browser.click(r#"a[href^="/console/webhooks/"]"#).await;
    browser.click("#send-test").await;
    let delivered = eventually("the test delivery", Duration::from_secs(20), || {
        let browser = &browser;
        async move { browser.text(r#"tr[data-status="delivered"]"#).await }
    })
    .await;
    assert!(
        delivered.contains("webhook.test")
            && delivered.contains("200")
            && delivered.contains("ms")
            && delivered.contains("received"),
        "{delivered}"
    );
    browser.screenshot("webhook").await;
    browser
        .click(&format!(r#"button[aria-label="Disable {hook_url}"]"#))
        .await;
    wait_notice(&browser, "Endpoint disabled").await;

    // The audit log has every change, with its actor.
    browser.goto(&format!("{base}/console/audit-log")).await;
    browser.wait_h1("Audit log").await;
    let page = browser.source().await;
    for action in [
        "email_account.update",
        "email_account.create",
        "suppression.create",
        "suppression.delete",
        "webhook.create",
        "webhook.update",
    ] {
        assert!(
            page.contains(&format!(r#"data-action="{action}""#)),
            "{action} in the audit log"
        );
    }
    assert!(page.contains(&operator_id.to_string()), "the actor's key");
    browser.screenshot("audit-log").await;
    browser.fill("action", "suppression.delete").await;
    browser.click("form.search button[type=submit]").await;
    eventually("the filtered log", Duration::from_secs(10), || {
        let browser = &browser;
        async move {
            let page = browser.source().await;
            (page.contains(r#"data-action="suppression.delete""#)
                && !page.contains(r#"data-action="webhook.create""#))
            .then_some(())
        }
    })
    .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_session_gets_403_on_the_new_admin_pages_with_no_data() {
    let mut env = TestEnv::new().await;
    let admin_token = env.start_api_as_admin().await;
    let base = env.api().base.clone();
    let account = env
        .api()
        .add_account(
            &admin_token,
            env.smtp.port(),
            "secret-sender@example.com",
            100,
            0,
        )
        .await;
    let account_id = account["id"].as_str().expect("id").to_string();
    let suppressed = env
        .api()
        .post(
            "/api/v1/suppressions",
            &admin_token,
            &json!({"address": "admins-own@example.com", "reason": "private reason"}),
        )
        .await;
    assert_eq!(suppressed.status, StatusCode::CREATED);
    let (_, user_key, user_secret) = key(&env.pool, "shop", &["send", "read"]).await;
    let (session, _) = HttpSession::sign_in(&base, &user_key, &user_secret, false).await;

    let (_, overview) = session.get("/console").await;
    assert!(
        !overview.contains("/console/audit-log"),
        "no audit log in the nav"
    );
    for path in [
        "/console/audit-log".to_string(),
        "/console/accounts/import".to_string(),
        format!("/console/accounts/{account_id}/edit"),
    ] {
        let (status, page) = session.get(&path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        for secret in [
            "secret-sender@example.com",
            "admins-own@example.com",
            "private reason",
            "suppression.create",
        ] {
            assert!(!page.contains(secret), "{path} shows {secret}");
        }
        assert!(
            page.contains("insufficient_scope"),
            "{path}: the reason in words"
        );
    }
    // Suppressions: a non-admin key sees only its own, and removes none.
    let (status, page) = session.get("/console/suppressions").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("admins-own@example.com"),
        "another key's suppression"
    );
    assert!(!page.contains("Remove the suppression"), "no remove button");
    let csrf = session.csrf.clone();
    let (status, page) = session
        .post(
            "/console/suppressions/remove",
            &[
                ("csrf", csrf.as_str()),
                ("address", "admins-own@example.com"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let (status, _) = session
        .post(
            "/console/accounts/import",
            &[
                ("csrf", csrf.as_str()),
                ("data", "[{\"email\": \"x@example.com\"}]"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let still: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM suppressions WHERE address = 'admins-own@example.com'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(still, 1, "the suppression stays");
    // Its own suppressions and webhooks it manages.
    let (status, _) = session
        .post(
            "/console/suppressions",
            &[
                ("csrf", csrf.as_str()),
                ("address", "mine@example.com"),
                ("reason", "asked"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = session.get("/console/suppressions").await;
    assert!(page.contains("mine@example.com"));
    let (status, page) = session.get("/console/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("campaign.run.started"),
        "platform events are for admin keys"
    );
}
