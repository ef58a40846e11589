//! Campaigns: lists, validation, cron firing exactly once with two
//! schedulers, and a run that survives the leader's kill -9.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{eventually, TestEnv};

/// A template with `name` declared, and a list with `members`; returns
/// (template id, list id).
async fn audience(env: &TestEnv, token: &str, members: Value) -> (String, String) {
    let api = env.api();
    let template = api
        .create(
            "/api/v1/templates",
            token,
            &json!({"name": format!("t{}", Uuid::new_v4().simple()),
                    "subject": "Hello {{ name }}", "html_body": "<p>Hi {{ name }}</p>",
                    "variables": ["name"]}),
        )
        .await;
    let list = api
        .create(
            "/api/v1/lists",
            token,
            &json!({"name": format!("l{}", Uuid::new_v4().simple())}),
        )
        .await;
    let res = api
        .post(&format!("/api/v1/lists/{list}/members"), token, &members)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    (template, list)
}

/// An inactive campaign mailing `n` new members; returns its id.
async fn inactive_campaign(env: &TestEnv, token: &str, name: &str, n: usize) -> String {
    let members: Vec<Value> = (0..n)
        .map(|i| json!({"address": format!("m{i}@example.org"), "variables": {"name": format!("M{i}")}}))
        .collect();
    let (template, list) = audience(env, token, Value::Array(members)).await;
    env.api()
        .create(
            "/api/v1/campaigns",
            token,
            &json!({"name": name, "template_id": template, "list_ids": [list],
                    "cron": "0 0 1 1 *", "is_active": false}),
        )
        .await
}

/// Fires a run of campaign `id` now; returns the run's id.
async fn run_now(env: &TestEnv, token: &str, id: &str) -> Uuid {
    let res = env
        .api()
        .post(&format!("/api/v1/campaigns/{id}/run"), token, &json!({}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    res.body["data"]["id"]
        .as_str()
        .expect("run id")
        .parse()
        .expect("uuid")
}

/// A run's status and how many recipients it has enqueued so far.
async fn run_progress(pool: &sqlx::PgPool, run: Uuid) -> (String, i32) {
    sqlx::query_as("SELECT status, recipients FROM campaign_runs WHERE id = $1")
        .bind(run)
        .fetch_one(pool)
        .await
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_import_validates_and_campaigns_validate_cron_and_time_zone() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    let api = env.api();
    let (template, list) = audience(
        &env,
        &token,
        json!([{"address": "A@example.org", "variables": {"name": "Ann"}},
               {"address": "a@example.org"}, {"address": "not-an-address"},
               {"address": "b@example.org"}]),
    )
    .await;
    let res = api.get(&format!("/api/v1/lists/{list}"), &token).await;
    assert_eq!(res.body["data"]["member_count"], 2, "{}", res.body);
    let res = api
        .post(
            &format!("/api/v1/lists/{list}/members"),
            &token,
            &json!([{"address": "c@example.org"}, {"address": "c@example.org"}, {"address": "x"}]),
        )
        .await;
    assert_eq!(res.body["data"]["added"], 1, "{}", res.body);
    assert_eq!(res.body["data"]["duplicates"], 1);
    assert_eq!(res.body["data"]["rejected"][0]["index"], 2);
    let res = api
        .get(&format!("/api/v1/lists/{list}/members"), &token)
        .await;
    let addresses: Vec<&str> = res.body["data"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["address"].as_str().expect("address"))
        .collect();
    assert_eq!(
        addresses,
        ["a@example.org", "b@example.org", "c@example.org"]
    );
    let res = api
        .delete(
            &format!("/api/v1/lists/{list}/members/c@example.org"),
            &token,
        )
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);

    // The largest import: 100,000 members in one request; one more is refused.
    let big: Vec<Value> = (0..100_000)
        .map(|i| json!({"address": format!("user{i}@example.net")}))
        .collect();
    let res = api
        .post("/api/v1/lists", &token, &json!({"name": "big"}))
        .await;
    let big_list = res.body["data"]["id"].as_str().expect("id").to_string();
    let res = api
        .post(
            &format!("/api/v1/lists/{big_list}/members"),
            &token,
            &Value::Array(big.clone()),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["added"], 100_000);
    let mut too_many = big;
    too_many.push(json!({"address": "one-more@example.net"}));
    let res = api
        .post(
            &format!("/api/v1/lists/{big_list}/members"),
            &token,
            &Value::Array(too_many),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "import_too_large")
    );

    let base = json!({"name": "digest", "template_id": template, "list_ids": [list],
                      "cron": "0 30 2 * * *", "time_zone": "America/New_York"});
    let mut bad_cron = base.clone();
    bad_cron["cron"] = json!("61 * * * *");
    let res = api.post("/api/v1/campaigns", &token, &bad_cron).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_cron"),
        "{}",
        res.body
    );
    assert_eq!(res.body["error"]["field"], "cron");
    let mut bad_tz = base.clone();
    bad_tz["time_zone"] = json!("Mars/Olympus_Mons");
    let res = api.post("/api/v1/campaigns", &token, &bad_tz).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_zone"),
        "{}",
        res.body
    );
    assert_eq!(res.body["error"]["field"], "time_zone");
    let mut bad_list = base.clone();
    bad_list["list_ids"] = json!([Uuid::new_v4()]);
    let res = api.post("/api/v1/campaigns", &token, &bad_list).await;
    assert_eq!(res.code(), "unknown_list", "{}", res.body);

    let res = api.post("/api/v1/campaigns", &token, &base).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let next: DateTime<Utc> = res.body["data"]["next_run_at"]
        .as_str()
        .expect("next_run_at shown")
        .parse()
        .expect("time");
    let local = next.with_timezone(&chrono_tz::America::New_York);
    assert_eq!(local.format("%H:%M:%S").to_string(), "02:30:00");
    let id = res.body["data"]["id"].as_str().expect("id").to_string();
    let mut off = base.clone();
    off["is_active"] = json!(false);
    let res = api
        .put(&format!("/api/v1/campaigns/{id}"), &token, &off)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert!(res.body["data"]["next_run_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_every_five_seconds_runs_exactly_once_per_time_with_two_schedulers() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.add_sender(&token, 100_000).await;
    let (template, list) = audience(
        &env,
        &token,
        json!([{"address": "ann@example.org", "variables": {"name": "Ann"}},
               {"address": "bob@example.org"}, {"address": "cy@example.org"},
               {"address": "optout@example.org"}]),
    )
    .await;
    let res = env
        .api()
        .post(
            "/api/v1/suppressions",
            &token,
            &json!({"address": "optout@example.org", "reason": "unsubscribed"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    env.start_worker();
    env.start_scheduler();
    env.start_scheduler();
    env.wait_scheduler_leader("a scheduler leader", Duration::from_secs(30))
        .await;
    let campaign = json!({"name": "every 5 s", "template_id": template, "list_ids": [list],
                          "variables": {"name": "friend"},
                          "cron": "*/5 * * * * *", "time_zone": "UTC"});
    let res = env.api().post("/api/v1/campaigns", &token, &campaign).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let id = res.body["data"]["id"].as_str().expect("id").to_string();
    let first: DateTime<Utc> = res.body["data"]["next_run_at"]
        .as_str()
        .expect("next")
        .parse()
        .expect("time");

    // Let it fire for about 22 seconds, then stop it.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let mut off = campaign.clone();
    off["is_active"] = json!(false);
    let res = env
        .api()
        .put(&format!("/api/v1/campaigns/{id}"), &token, &off)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let stopped = Utc::now();

    let runs: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, scheduled_for FROM campaign_runs WHERE campaign_id = $1 ORDER BY scheduled_for",
    )
    .bind(id.parse::<Uuid>().expect("uuid"))
    .fetch_all(&env.pool)
    .await
    .expect("runs");
    // Exactly the 5-second marks from the first to the stop (the last may
    // or may not have fired before the stop).
    let expected: Vec<DateTime<Utc>> = (0..)
        .map(|i| first + chrono::Duration::seconds(5 * i))
        .take_while(|t| *t <= stopped)
        .collect();
    let times: Vec<DateTime<Utc>> = runs.iter().map(|r| r.1).collect();
    assert!(times.len() >= 4, "runs: {times:?}");
    assert!(
        times == expected || times[..] == expected[..expected.len() - 1],
        "runs {times:?}, expected {expected:?}"
    );

    let n = runs.len();
    env.smtp.wait_for(3 * n, Duration::from_secs(60)).await;
    let res = env
        .api()
        .get(&format!("/api/v1/campaigns/{id}/runs"), &token)
        .await;
    let views = res.body["data"].as_array().expect("runs").clone();
    assert_eq!(views.len(), n);
    for v in &views {
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["recipients"], 3, "{v}");
        assert_eq!(v["suppressed"], 1, "{v}");
    }
    eventually("all sent", Duration::from_secs(30), || async {
        (env.count_status("sent").await == 3 * n as i64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = env.smtp.received();
    assert_eq!(received.len(), 3 * n, "each recipient once per run");
    let per_run: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT campaign_run_id, to_addrs FROM message_records
           GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(&env.pool)
    .await
    .expect("dups");
    assert_eq!(per_run, 0, "no recipient twice in a run");
    assert!(received
        .iter()
        .all(|m| !m.rcpt_to.iter().any(|r| r.contains("optout"))));
    let ann = received
        .iter()
        .find(|m| m.rcpt_to.iter().any(|r| r.contains("ann@")))
        .expect("ann's mail")
        .data_str();
    assert!(ann.contains("Hello Ann"), "member variable wins");
    let bob = received
        .iter()
        .find(|m| m.rcpt_to.iter().any(|r| r.contains("bob@")))
        .expect("bob's mail")
        .data_str();
    assert!(bob.contains("Hello friend"), "campaign variable as default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_completes_once_when_the_leader_is_killed_mid_fan_out() {
    let mut env = TestEnv::with_vars(&[
        ("CAMPAIGN_BATCH_SIZE", "20"),
        ("SCHEDULER_LEADER_RETRY_MS", "500"),
    ])
    .await;
    let token = env.start_api_as_admin().await;
    const N: usize = 10_000;
    let id = inactive_campaign(&env, &token, "big", N).await;
    let a = env.start_scheduler();
    let b = env.start_scheduler();
    let leader = env
        .wait_scheduler_leader("a leader", Duration::from_secs(20))
        .await;
    let run = run_now(&env, &token, &id).await;

    // Mid fan-out: some members enqueued, not all.
    eventually("the fan-out to start", Duration::from_secs(20), || async {
        let (_, recipients) = run_progress(&env.pool, run).await;
        (recipients > 0).then_some(())
    })
    .await;
    let dead = if env.scheduler_pid(a) == leader { a } else { b };
    env.signal_scheduler(dead, "KILL").await;
    let (status, recipients) = run_progress(&env.pool, run).await;
    assert_eq!(status, "running", "killed mid-run ({recipients} enqueued)");
    assert!((recipients as usize) < N);

    eventually("the run to complete", Duration::from_secs(60), || async {
        let (status, _) = run_progress(&env.pool, run).await;
        (status == "completed").then_some(())
    })
    .await;
    let (_, recipients) = run_progress(&env.pool, run).await;
    assert_eq!(recipients as usize, N);
    let rows: Vec<Vec<String>> =
        sqlx::query_scalar("SELECT to_addrs FROM message_records WHERE campaign_run_id = $1")
            .bind(run)
            .fetch_all(&env.pool)
            .await
            .expect("messages");
    assert_eq!(rows.len(), N, "one message per member");
    let distinct: HashSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(distinct.len(), N, "each member once");
    let outbox_or_published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_records WHERE campaign_run_id = $1 AND status = 'queued'",
    )
    .bind(run)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(outbox_or_published as usize, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_recipient_run_is_enqueued_within_60_seconds() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    const N: usize = 100_000;
    let id = inactive_campaign(&env, &token, "huge", N).await;
    env.start_scheduler();
    env.wait_scheduler_leader("a leader", Duration::from_secs(20))
        .await;

    let started = std::time::Instant::now();
    let run = run_now(&env, &token, &id).await;
    let recipients = eventually(
        "the fan-out to complete",
        Duration::from_secs(90),
        || async {
            let (status, recipients) = run_progress(&env.pool, run).await;
            (status == "completed").then_some(recipients)
        },
    )
    .await;
    let took = started.elapsed();
    println!("100,000-recipient run rendered and enqueued in {took:?}");
    assert_eq!(recipients as usize, N);
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_records WHERE campaign_run_id = $1")
            .bind(run)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(queued as usize, N);
    assert!(took < Duration::from_secs(60), "{took:?}");
}
