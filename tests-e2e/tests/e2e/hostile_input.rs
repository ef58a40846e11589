//! Hostile input. Property-based fuzzing of every route from `/openapi.json` with
//! schemathesis (`scripts/fuzz.sh`, short run): no server errors, every
//! response as documented (status, content type, schema, the error
//! envelope), schema-violating requests refused and schema-valid ones
//! accepted unless a documented business rule refuses them
//! (`tests/fuzz/schemathesis.toml` lists those, each with its reason).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::process::Command;
use uuid::Uuid;

use crate::python_interop::{python, repo_root};
use crate::support::api::RunningApi;
use crate::support::TestEnv;

const SEND: &str = "/api/v1/messages/email/send";

/// Test cases per operation and phase: enough to reach every documented
/// constraint, few enough for a couple of minutes on two cores.
const MAX_EXAMPLES: &str = "8";

/// Runs the short fuzzing run with `token`; returns schemathesis's report,
/// failing the test (with that report) on any finding.
async fn fuzz(base: &str, token: &str, label: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(420),
        Command::new("bash")
            .arg(repo_root().join("scripts/fuzz.sh"))
            .arg(base)
            .arg(token)
            .arg("--no-color")
            .env("FUZZ_MAX_EXAMPLES", MAX_EXAMPLES)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the fuzzing run finished in time")
    .expect("run scripts/fuzz.sh");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("== fuzzing with the {label} token ==\n{report}");
    assert!(
        out.status.success(),
        "schemathesis found problems with the {label} token:\n{report}"
    );
    let requests: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("fuzz: ")?.strip_suffix(" requests made"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in the report:\n{report}"));
    assert!(requests > 500, "only {requests} requests were made");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_every_route_finds_no_server_error_and_no_undocumented_answer() {
    // Built before the API starts, so its (one-off) install is not timed.
    python().await;
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;
    let (_, send) = api.token(&env.pool, &["send"]).await;
    // Something to find: an account, a template and a list, so that reads
    // and sends by name get past "not found" now and then.
    env.add_sender(&admin, 100).await;
    let res = api
        .post(
            "/api/v1/templates",
            &admin,
            &json!({"name": "welcome", "subject": "Hi {{ name }}",
                    "html_body": "<p>{{ name }}</p>", "variables": ["name"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);

    fuzz(&api.base, &send, "send-only").await;
    fuzz(&api.base, &admin, "admin").await;
}

/// Sends `body` as is (not re-encoded by a JSON library) to `path`.
async fn raw_post(api: &RunningApi, path: &str, token: &str, body: String) -> (StatusCode, Value) {
    let res = api
        .client
        .post(api.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("http request");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_header_injection_and_misused_tokens_get_a_4xx() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let admin = api.admin_token(&env.pool).await;

    // JSON nested past serde_json's recursion limit (128), in a send (parsed
    // by hand) and in a route with the common extractor: 400, not a stack
    // overflow.
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let send = format!(
        r#"{{"to": "a@example.org", "subject": "s", "content": "c", "variables": {}}}"#,
        nested(5_000)
    );
    let (status, body) = raw_post(api, SEND, &admin, send).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{body}"
    );
    let (status, body) = raw_post(
        api,
        "/api/v1/admin/email-accounts/import",
        &admin,
        nested(100_000),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{body}"
    );

    // CR/LF in every field that ends up in a mail header or an SMTP command,
    // beyond those of auth_and_input::bad_input_gets_a_clear_4xx_and_records_nothing.
    let attachment = |filename: &str, content_type: &str| {
        json!({"to": "a@example.org", "subject": "s", "content": "c", "attachments": [
            {"filename": filename, "content_type": content_type, "content": "aGk="}]})
    };
    let res = api
        .post(
            "/api/v1/templates",
            &admin,
            &json!({"name": "greeting", "subject": "Hi {{ name }}", "html_body": "<p>x</p>",
                    "variables": ["name"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let injected = "x\r\nBcc: victim@example.org";
    for (body, field) in [
        (
            attachment(injected, "text/plain"),
            "attachments[0].filename",
        ),
        (
            attachment("a.txt", &format!("text/plain{injected}")),
            "attachments[0].content_type",
        ),
        (
            json!({"to": "a@example.org", "subject": "s", "content": "c", "reply_to": format!("a@example.org{injected}")}),
            "reply_to",
        ),
        (
            json!({"to": format!("a@example.org{injected}"), "subject": "s", "content": "c"}),
            "to[0]",
        ),
        // A template's subject rendered with a variable holding CR/LF.
        (
            json!({"to": "a@example.org", "template": "greeting", "variables": {"name": injected}}),
            "subject",
        ),
    ] {
        let res = api.post(SEND, &admin, &body).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {}",
            res.body
        );
        assert_eq!(res.body["error"]["field"], field, "{}", res.body);
    }
    let res = api
        .post(
            "/api/v1/admin/email-accounts",
            &admin,
            &json!({"email": "a@example.com", "smtp_host": "h", "smtp_port": 25,
                    "smtp_password": "p", "smtp_username": injected}),
        )
        .await;
    assert_eq!(
        (res.status, res.body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("smtp_username"))
    );
    assert_eq!(env.count_status("queued").await, 0, "nothing was recorded");

    // A refresh token is no access token, and the reverse.
    let (key, secret) = {
        let credentials = platform::crypto::generate_api_credentials();
        platform::db::api_keys::insert(&env.pool, "t", "", &["send".to_string()], &credentials)
            .await
            .expect("insert api key");
        (credentials.key, credentials.secret)
    };
    let res = api.sign_in(key, secret).await;
    let access = res.body["data"]["access_token"]
        .as_str()
        .expect("access token");
    let refresh = res.body["data"]["refresh_token"]
        .as_str()
        .expect("refresh token");
    let res = api.get("/api/v1/templates", refresh).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    let res = api
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": access})),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    // Well-formed claims signed with another key.
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": Uuid::new_v4(), "scopes": ["admin"], "typ": "access",
        "iss": "notify-api", "iat": now, "nbf": now, "exp": now + 600, "jti": Uuid::new_v4()});
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-0123456789abcdef0123456789"),
    )
    .expect("sign");
    let res = api.get("/api/v1/admin/email-accounts", &other).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
}
