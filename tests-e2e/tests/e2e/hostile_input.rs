//! Property-based fuzzing of every route from `/openapi.json` with
//! schemathesis (`scripts/fuzz.sh`, short run): no server errors, every
//! response as documented (status, content type, schema, the error
//! envelope), schema-violating requests refused and schema-valid ones
//! accepted unless a documented business rule refuses them
//! (`tests/fuzz/schemathesis.toml` lists those, each with its reason).

use std::time::Duration;

use serde_json::json;
use tokio::process::Command;

use crate::python_interop::{python, repo_root};
use crate::support::TestEnv;

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
            .env("FUZZ_SEED", "1")
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
    api.add_account(&admin, env.smtp.port(), "sender@example.com", 100, 0)
        .await;
    let res = api
        .post(
            "/api/v1/templates",
            &admin,
            &json!({"name": "welcome", "subject": "Hi {{ name }}",
                    "html_body": "<p>{{ name }}</p>", "variables": ["name"]}),
        )
        .await;
    assert_eq!(res.status, reqwest::StatusCode::CREATED, "{}", res.body);

    fuzz(&api.base, &send, "send-only").await;
    fuzz(&api.base, &admin, "admin").await;
}
