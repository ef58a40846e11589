//! Templates cannot hang or exhaust the API: rendering is bounded in steps
//! and output, a template that runs away with placeholder values is
//! refused when saved, and one that runs away with a send's values fails
//! that preview or send with the limit named, while the API keeps
//! answering.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::api::RunningApi;
use crate::support::TestEnv;

/// A template whose loops run as far as its variable `n` says: harmless
/// with a placeholder value, so it saves.
async fn driven_template(api: &RunningApi, token: &str) -> String {
    api.create(
        "/api/v1/templates",
        token,
        &json!({"name": "driven", "subject": "Hi",
                "html_body": "{% for i in range(n|int) %}{% for j in range(n|int) %}x{% endfor %}{% endfor %}",
                "variables": ["n"]}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_templates_are_refused_with_the_limit_named_and_the_api_keeps_answering() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let api = env.api();
    let token = api.token(&env.pool, &["send", "read"]).await.1;

    // Two nested range(100000) loops: refused at save.
    let started = Instant::now();
    let res = api
        .post(
            "/api/v1/templates",
            &token,
            &json!({"name": "nested", "subject": "Hi",
                    "html_body": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                    "variables": []}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert_eq!(
        res.body["error"]["code"], "template_too_costly",
        "{}",
        res.body
    );
    assert_eq!(res.body["error"]["field"], "html_body");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Output beyond the cap: refused at save.
    let res = api
        .post(
            "/api/v1/templates",
            &token,
            &json!({"name": "big", "subject": "Hi", "html_body": "{{ 'x' * 3000000 }}",
                    "variables": []}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert_eq!(
        res.body["error"]["code"], "template_output_too_large",
        "{}",
        res.body
    );

    // Harmless with placeholders, so saved; the preview and a send with a
    // runaway value fail with the limit named, each within seconds, and
    // /health answers while they run.
    let id = driven_template(api, &token).await;
    let path = format!("/api/v1/templates/{id}/render");
    let runaway = json!({"variables": {"n": 100000}});
    let previews = (0..8).map(|_| api.post(&path, &token, &runaway));
    let started = Instant::now();
    let (previews, health) = tokio::join!(futures_util::future::join_all(previews), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let res = reqwest::get(api.url("/health")).await.expect("health");
        (res.status(), started.elapsed())
    });
    for res in previews {
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
        assert_eq!(
            res.body["error"]["code"], "template_too_costly",
            "{}",
            res.body
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(health.0, StatusCode::OK);
    assert!(
        health.1 < Duration::from_secs(2),
        "/health took {:?}",
        health.1
    );
    let res = api
        .post(
            "/api/v1/messages/email/send",
            &token,
            &json!({"to": "a@example.com", "template_id": id, "variables": {"n": 100000}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert_eq!(
        res.body["error"]["code"], "template_too_costly",
        "{}",
        res.body
    );
    let res = api
        .post(
            &format!("/api/v1/templates/{id}/render"),
            &token,
            &json!({"variables": {"n": 2}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["html"], "xxxx", "{}", res.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_template_runs_away_for_its_members_fails_its_run_with_the_reason() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    let api = env.api();
    let template = driven_template(api, &token).await;
    let res = api
        .post("/api/v1/lists", &token, &json!({"name": "runaway"}))
        .await;
    let list = res.body["data"]["id"].as_str().unwrap().to_string();
    let members = json!([{"address": "m1@example.org", "variables": {"n": 100000}},
                         {"address": "m2@example.org", "variables": {"n": 100000}}]);
    let res = api
        .post(&format!("/api/v1/lists/{list}/members"), &token, &members)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let id = api
        .create(
            "/api/v1/campaigns",
            &token,
            &json!({"name": "runaway", "template_id": template, "list_ids": [list],
                    "cron": "0 0 1 1 *", "is_active": false}),
        )
        .await;
    env.start_scheduler();
    let res = env
        .api()
        .post(&format!("/api/v1/campaigns/{id}/run"), &token, &json!({}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let run: uuid::Uuid = res.body["data"]["id"].as_str().unwrap().parse().unwrap();
    let (status, error) =
        crate::support::eventually("the run to fail", Duration::from_secs(30), || async {
            let row: (String, Option<String>) =
                sqlx::query_as("SELECT status, error FROM campaign_runs WHERE id = $1")
                    .bind(run)
                    .fetch_one(&env.pool)
                    .await
                    .unwrap();
            (row.0 != "running" && row.0 != "pending").then_some(row)
        })
        .await;
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("rendering limit") && error.contains("steps"),
        "{error}"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM message_records")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "nothing was enqueued");
    // The scheduler is still alive and leading.
    assert!(env.scheduler_leader_pid().await.is_some());
}
