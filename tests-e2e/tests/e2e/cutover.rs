//! Switching from the Python platform: its database built as it is in
//! production (tables, Fernet-encrypted passwords and hashed API secrets
//! written by the real `cryptography`, `bcrypt`, `passlib` packages, see
//! tests/python/legacy_platform.py), imported with `notify-api
//! import-python`; then its Celery worker (tests/python/legacy_worker.py)
//! and ours side by side on one queue.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::Command;
use uuid::Uuid;

use crate::python_interop::{python, repo_root};
use crate::support::{binary, eventually, publish_tasks, TestEnv, POSTGRES, RABBITMQ};

/// The Python platform's ENCRYPTION_KEY (a Fernet key).
const FERNET_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The Python platform's database, created empty for one test and dropped
/// after it (the name lets scripts/test.sh drop it if the test dies).
struct PythonDb {
    name: String,
    url: String,
}

impl PythonDb {
    async fn create() -> PythonDb {
        let created = Utc::now().timestamp();
        let name = format!("notify_test_{created}_py{}", Uuid::new_v4().simple());
        let admin = PgPool::connect(&format!("{POSTGRES}/postgres?sslmode=disable"))
            .await
            .expect("postgres");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create the Python platform's database");
        admin.close().await;
        let url = format!("{POSTGRES}/{name}?sslmode=disable");
        PythonDb { name, url }
    }

    async fn drop(self) {
        let admin = PgPool::connect(&format!("{POSTGRES}/postgres?sslmode=disable"))
            .await
            .expect("postgres");
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await;
    }
}

/// Runs tests/python/legacy_platform.py; returns its JSON line.
async fn legacy(python: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(python)
            .arg(repo_root().join("tests/python/legacy_platform.py"))
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("legacy_platform.py finished in time")
    .expect("run legacy_platform.py");
    assert!(
        out.status.success(),
        "legacy_platform.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("legacy_platform.py prints JSON")
}

/// Builds the Python platform's tables and rows from `spec`.
async fn build_python_platform(python: &Path, db: &PythonDb, spec: &Value) {
    let file = std::env::temp_dir().join(format!("legacy-spec-{}.json", Uuid::new_v4()));
    std::fs::write(&file, spec.to_string()).expect("write spec");
    legacy(
        python,
        &[
            "create",
            "--database-url",
            &db.url,
            "--fernet-key",
            FERNET_KEY,
            "--spec",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let _ = std::fs::remove_file(file);
}

/// `notify-api import-python --json ...` with the test's settings.
async fn import(env: &TestEnv, db: &PythonDb, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(binary("notify-api"))
            .env_clear()
            .envs(&env.vars)
            .env("PYTHON_ENCRYPTION_KEY", FERNET_KEY)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .args(["import-python", "--json", "--from", &db.url])
            .args(args)
            .output(),
    )
    .await
    .expect("import finished in time")
    .expect("run notify-api import-python");
    assert!(
        out.status.success(),
        "import-python {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("import-python --json prints JSON")
}

/// The report row for `row` of `kind`.
fn row<'a>(report: &'a Value, kind: &str, starts_with: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["row"].as_str().unwrap().starts_with(starts_with))
        .unwrap_or_else(|| panic!("no {kind} row {starts_with} in {report}"))
}

/// Every row of our tables that an import writes, as text.
async fn snapshot(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' / ',
            (SELECT string_agg(t::text, '|' ORDER BY email) FROM email_accounts t),
            (SELECT string_agg(t::text, '|' ORDER BY key_hash) FROM api_keys t),
            (SELECT string_agg(t::text, '|' ORDER BY task_id) FROM message_records t))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn token_status(env: &TestEnv, key: &str, secret: &str) -> (StatusCode, Value) {
    let res = env.api().sign_in(key, secret).await;
    (res.status, res.body)
}

fn subject_of(mail: &smtp_sink::ReceivedMail) -> String {
    mail.data_str()
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_accounts_keys_and_counts_are_imported_and_keep_working() {
    let mut env = TestEnv::new().await;
    let db = PythonDb::create().await;
    let python = python().await;
    let port = env.smtp.port();
    // The sink checks AUTH: a send must carry the Python platform's
    // username and (decrypted) password.
    env.smtp.require_auth("legacy-a", "pässword A");
    let today = Utc::now().date_naive();
    let yesterday = today - chrono::Days::new(1);
    let account = |email: &str, port: u16, user: &str, password: &str| {
        json!({"email": email, "smtp_host": "127.0.0.1", "smtp_port": port,
               "smtp_username": user, "password": password, "display_name": "Legacy",
               "daily_limit": 100, "priority": 10, "is_active": true,
               "daily_sent_count": 0, "last_reset_date": today.to_string()})
    };
    let mut a = account("a@legacy.example", port, "legacy-a", "pässword A");
    a["daily_sent_count"] = json!(40);
    let mut b = account("b@legacy.example", 465, "legacy-b", "pw-b");
    // Counted yesterday: nothing to carry; and disabled.
    b["daily_sent_count"] = json!(7);
    b["last_reset_date"] = json!(yesterday.to_string());
    b["is_active"] = json!(false);
    let c = account("c@legacy.example", 2600, "legacy-c", "pw-c");
    let d = account("d@legacy.example", 587, "legacy-d", "pw-d");
    let e = account("not-an-address", 587, "legacy-e", "pw-e");
    let id = Uuid::new_v4().simple().to_string();
    let key = |scheme: &str| format!("noti_{scheme}_{}", &id[..12]);
    let secret = |scheme: &str| format!("secret_{scheme}_Zx9{}", &id[12..]);
    let schemes = [
        "sha256",
        "bcrypt",
        "pbkdf2_sha256",
        "argon2",
        "werkzeug_pbkdf2",
    ];
    let mut keys: Vec<Value> = schemes
        .iter()
        .map(|s| {
            json!({"name": format!("{s} key"), "description": "from Python", "api_key": key(s),
                   "api_secret": secret(s), "scheme": s, "is_admin": *s == "sha256",
                   "is_active": true})
        })
        .collect();
    keys.push(
        json!({"name": "revoked", "api_key": key("revoked"), "api_secret": secret("revoked"),
                     "scheme": "bcrypt", "is_admin": false, "is_active": false}),
    );
    keys.push(
        json!({"name": "expired", "api_key": key("expired"), "api_secret": secret("expired"),
                     "scheme": "sha256", "is_admin": false, "is_active": true,
                     "expires_at": (Utc::now() - chrono::Duration::days(1)).to_rfc3339()}),
    );
    keys.push(
        json!({"name": "md5", "api_key": key("md5"), "api_secret": secret("md5"),
                     "scheme": "md5_crypt", "is_admin": false, "is_active": true}),
    );
    keys.push(
        json!({"name": "clear", "api_key": key("clear"), "api_secret": secret("clear"),
                     "scheme": "plain", "is_admin": false, "is_active": true}),
    );
    let message = |task: &str, status: &str| {
        json!({"task_id": task, "to_email": "r1@example.com, r2@example.com",
               "subject": format!("old {task}"), "content": "<p>old</p>", "status": status,
               "account_email": "a@legacy.example", "api_key": key("bcrypt"),
               "sent_at": if status == "sent" { json!(Utc::now().to_rfc3339()) } else { Value::Null }})
    };
    let spec = json!({
        "accounts": [a, b, c, d, e],
        "keys": keys,
        "messages": [message("py-1", "sent"), message("py-2", "sent"), message("py-3", "sent"),
                     message("py-4", "failed"), message("py-5", "pending")],
    });
    build_python_platform(&python, &db, &spec).await;
    legacy(
        &python,
        &[
            "corrupt",
            "--database-url",
            &db.url,
            "--email",
            "d@legacy.example",
        ],
        &[],
    )
    .await;
    let port_tls = format!("{port}=none");
    let args = [
        "--messages-since-days",
        "30",
        "--port-tls",
        port_tls.as_str(),
    ];

    // A dry run reports what an import would do and writes nothing.
    let before = snapshot(&env.pool).await;
    let dry = import(&env, &db, &[&args[..], &["--dry-run"]].concat()).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["accounts"]["imported"], 2, "{dry}");
    assert_eq!(dry["keys"]["imported"], 7, "{dry}");
    assert_eq!(snapshot(&env.pool).await, before, "a dry run wrote nothing");

    let first = import(&env, &db, &args).await;
    assert_eq!(first["dry_run"], false);
    assert_eq!(
        first["accounts"],
        json!({"imported": 2, "updated": 0, "unchanged": 0, "skipped": 0, "refused": 3}),
        "{first}"
    );
    let refused = |who: &str| {
        row(&first, "account", who)["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(refused("d@legacy.example").contains("bad Fernet token"));
    assert!(refused("c@legacy.example").contains("unknown TLS port 2600"));
    assert!(refused("not-an-address").contains("invalid address"));
    assert_eq!(
        first["keys"],
        json!({"imported": 7, "updated": 0, "unchanged": 0, "skipped": 0, "refused": 2}),
        "{first}"
    );
    assert!(row(&first, "key", &key("md5")[..12])["detail"]
        .as_str()
        .unwrap()
        .contains("MD5-crypt"));
    assert_eq!(first["quota_carried"], 1, "only a@ counted today");
    assert_eq!(first["messages"]["imported"], 4, "{first}");
    assert_eq!(
        first["messages"]["skipped"], 1,
        "the pending one is in flight"
    );
    // No secret of any kind in the report.
    for s in ["pässword", "pw-b", "secret_"] {
        assert!(!first.to_string().contains(s), "report leaks {s}");
    }

    // Our rows: today's count carried, the disabled account disabled, the
    // password sealed under our key (never the Fernet token).
    let (sent_today, active): (i32, bool) = sqlx::query_as(
        "SELECT CASE WHEN quota_day = $2 THEN daily_sent_count ELSE 0 END, is_active
         FROM email_accounts WHERE email = $1",
    )
    .bind("a@legacy.example")
    .bind(today)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((sent_today, active), (40, true));
    let (b_sent, b_active, b_tls): (i32, bool, String) = sqlx::query_as(
        "SELECT daily_sent_count, is_active, tls_mode FROM email_accounts WHERE email = $1",
    )
    .bind("b@legacy.example")
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((b_sent, b_active, b_tls.as_str()), (0, false, "implicit"));
    let (key_id, scheme): (String, String) = sqlx::query_as(
        "SELECT smtp_password_key_id, tls_mode FROM email_accounts WHERE email = $1",
    )
    .bind("a@legacy.example")
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((key_id.as_str(), scheme.as_str()), ("k1", "none"));

    // Re-running changes nothing.
    let after_first = snapshot(&env.pool).await;
    let again = import(&env, &db, &args).await;
    assert_eq!(again["accounts"]["unchanged"], 2, "{again}");
    assert_eq!(again["keys"]["unchanged"], 7, "{again}");
    assert_eq!(again["quota_carried"], 0);
    assert_eq!(again["messages"]["imported"], 0);
    assert_eq!(again["messages"]["unchanged"], 4);
    assert_eq!(
        snapshot(&env.pool).await,
        after_first,
        "a re-run wrote nothing"
    );

    // The applications' credentials keep working, by whatever hash the
    // Python platform stored them with.
    env.start_api().await;
    for s in schemes {
        let (status, body) = token_status(&env, &key(s), &secret(s)).await;
        assert_eq!(status, StatusCode::OK, "{s}: {body}");
        let (status, _) = token_status(&env, &key(s), &format!("{}x", secret(s))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{s} with a wrong secret");
    }
    for refused in ["revoked", "expired", "md5", "clear"] {
        let (status, _) = token_status(&env, &key(refused), &secret(refused)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    }
    let token = |body: &Value| body["data"]["access_token"].as_str().unwrap().to_string();
    let admin = token(
        &token_status(&env, &key("sha256"), &secret("sha256"))
            .await
            .1,
    );
    let sender = token(
        &token_status(&env, &key("bcrypt"), &secret("bcrypt"))
            .await
            .1,
    );
    let accounts = env.api().get("/api/v1/admin/email-accounts", &admin).await;
    assert_eq!(accounts.status, StatusCode::OK, "{}", accounts.body);
    let listed = env.api().get("/api/v1/admin/email-accounts", &sender).await;
    assert_eq!(listed.status, StatusCode::FORBIDDEN, "not an admin key");

    // A send through the imported account reaches the SMTP server with the
    // Python platform's username and password.
    env.start_worker();
    env.send_until(
        &sender,
        "reader@example.com",
        "sent",
        Duration::from_secs(30),
    )
    .await;
    let mails = env.smtp.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].auth_user.as_deref(), Some("legacy-a"));
    let used: i32 = sqlx::query_scalar(
        "SELECT daily_sent_count FROM email_accounts WHERE email = 'a@legacy.example'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(used, 41, "the carried count goes on");

    // A Python producer's task for a message the Python platform already
    // sent (imported as `sent`, e.g. redelivered during the switch) is
    // claimed by its task id and not sent again; a new one is.
    let task = |id: &str, subject: &str| {
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("to".into(), json!("reader@example.com"));
        kwargs.insert("subject".into(), json!(subject));
        kwargs.insert("content".into(), json!("<p>again</p>"));
        platform::celery::TaskMessage::new(platform::tasks::SEND_EMAIL, id, vec![], kwargs)
    };
    publish_tasks(
        &env.queue,
        &[
            task("py-1", "resent py-1"),
            task("py-new", "new from Python"),
        ],
    )
    .await;
    eventually(
        "the new Python task is sent",
        Duration::from_secs(30),
        || async {
            env.smtp
                .received()
                .iter()
                .any(|m| subject_of(m) == "new from Python")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !env.smtp
            .received()
            .iter()
            .any(|m| subject_of(m) == "resent py-1"),
        "an imported `sent` task was sent again"
    );
    assert_eq!(env.smtp.count(), 2);

    // Imported history belongs to the key that sent it.
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_records m JOIN api_keys k ON k.id = m.api_key_id
         WHERE m.task_id LIKE 'py-%' AND k.name = 'bcrypt key'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(owned, 4);
    db.drop().await;
}

/// The Python worker process, stopped with SIGTERM (Celery's warm
/// shutdown) or killed when dropped.
struct LegacyWorker {
    child: tokio::process::Child,
}

impl LegacyWorker {
    fn start(python: &Path, queue: &str, db: &PythonDb) -> LegacyWorker {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "celery", "-A", "legacy_worker", "worker", "-Q", queue])
            .args(["-c", "2", "-P", "threads", "-n", &format!("legacy@{queue}")])
            .args([
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-l",
                "warning",
            ])
            .current_dir(repo_root().join("tests/python"))
            .env("BROKER_URL", RABBITMQ)
            .env("PYTHON_DATABASE_URL", &db.url)
            .env("ENCRYPTION_KEY", FERNET_KEY)
            .env("LEGACY_QUOTA_RETRY_SECONDS", "2")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if std::env::var("E2E_QUIET").is_ok() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        LegacyWorker {
            child: cmd.spawn().expect("start the Python Celery worker"),
        }
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the Python worker stops within 60 s of SIGTERM")
            .expect("wait for the Python worker");
    }
}

/// The Python platform's API: records each message and publishes
/// `app.tasks.send_email(to, subject, content)` to its queue.
async fn produce(python: &Path, db: &PythonDb, queue: &str, start: usize, count: usize) {
    let report = legacy(
        python,
        &[
            "produce",
            "--database-url",
            &db.url,
            "--count",
            &count.to_string(),
            "--start",
            &start.to_string(),
            "--prefix",
            "cutover",
            "--to",
            "someone@example.com",
        ],
        &[("BROKER_URL", RABBITMQ), ("QUEUE", queue)],
    )
    .await;
    assert_eq!(report["published"], count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_our_workers_share_the_queue_and_the_daily_limits_during_the_switch() {
    let mut env = TestEnv::new().await;
    let db = PythonDb::create().await;
    let python = python().await;
    let port = env.smtp.port();
    env.smtp.require_auth("legacy-a", "pw-a");
    env.smtp.require_auth("legacy-b", "pw-b");
    let today = Utc::now().date_naive().to_string();
    // `a` is preferred and has 120 sends left today: the overlap must not
    // let both platforms use them twice.
    let spec = json!({"accounts": [
        {"email": "a@legacy.example", "smtp_host": "127.0.0.1", "smtp_port": port,
         "smtp_username": "legacy-a", "password": "pw-a", "display_name": "A",
         "daily_limit": 150, "priority": 10, "is_active": true, "daily_sent_count": 30,
         "last_reset_date": today},
        {"email": "b@legacy.example", "smtp_host": "127.0.0.1", "smtp_port": port,
         "smtp_username": "legacy-b", "password": "pw-b", "display_name": "B",
         "daily_limit": 5000, "priority": 1, "is_active": true, "daily_sent_count": 0,
         "last_reset_date": today}],
        "keys": [], "messages": []});
    build_python_platform(&python, &db, &spec).await;
    let port_tls = format!("{port}=none");

    // 0. The Python platform at work: its producer and its worker on its
    //    queue.
    let legacy_queue = format!("{}_python", env.queue);
    env.extra_queues.push(legacy_queue.clone());
    let legacy_worker = LegacyWorker::start(&python, &legacy_queue, &db);
    produce(&python, &db, &legacy_queue, 0, 200).await;
    eventually(
        "the Python worker sends",
        Duration::from_secs(60),
        || async { (env.smtp.count() >= 20).then_some(()) },
    )
    .await;

    // 1. Import (accounts, keys, today's counts) while it runs.
    import(&env, &db, &["--port-tls", &port_tls]).await;

    // 2. Our worker beside theirs, on their queue too, sharing the limits.
    env.start_worker_with(&[
        ("CELERY_EXTRA_QUEUES", legacy_queue.as_str()),
        (
            "CELERY_TASK_ALIASES",
            "app.tasks.send_email=notifications.send_email",
        ),
        ("PYTHON_DATABASE_URL", db.url.as_str()),
    ]);
    produce(&python, &db, &legacy_queue, 200, 300).await;

    // 3. The API traffic moves to ours: its tasks go to our own queue, which
    //    the Python workers never see (they would discard a task name they
    //    do not know).
    env.start_api().await;
    let token = env.api().token(&env.pool, &["send"]).await.1;
    let sends = (0..200).map(|i| {
        let api = env.api();
        let token = token.clone();
        async move {
            let res = api
                .post(
                    "/api/v1/messages/email/send",
                    &token,
                    &json!({"to": "someone@example.com", "subject": format!("api {i}"),
                            "content": "<p>new</p>"}),
                )
                .await;
            assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
        }
    });
    futures_util::future::join_all(sends).await;

    // 4. Theirs stop (warm shutdown: what they prefetched goes back to the
    //    queue); the Python producers keep publishing to the same queue.
    legacy_worker.stop().await;
    produce(&python, &db, &legacy_queue, 500, 100).await;

    let expected: Vec<String> = (0..600)
        .map(|i| format!("cutover {i}"))
        .chain((0..200).map(|i| format!("api {i}")))
        .collect();
    eventually(
        "every message delivered",
        Duration::from_secs(240),
        || async {
            let got: std::collections::HashSet<String> =
                env.smtp.received().iter().map(subject_of).collect();
            expected.iter().all(|s| got.contains(s)).then_some(())
        },
    )
    .await;
    // Anything sent twice would arrive now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut times: HashMap<String, usize> = HashMap::new();
    let mut through_a = 0;
    for mail in env.smtp.received() {
        *times.entry(subject_of(&mail)).or_default() += 1;
        if mail.auth_user.as_deref() == Some("legacy-a") {
            through_a += 1;
        }
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(times.len(), 800);
    assert!(
        through_a <= 120,
        "account a had 120 sends left today; both platforms sent {through_a} through it"
    );

    // Both platforms did part of the work.
    let records = legacy(&python, &["records", "--database-url", &db.url], &[]).await;
    let python_sent = records["records"]
        .as_object()
        .unwrap()
        .values()
        .filter(|s| *s == "sent")
        .count();
    let ours_sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_records WHERE status = 'sent' AND subject LIKE 'cutover %'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    eprintln!(
        "sent by the Python worker {python_sent}, by ours {ours_sent}; through a: {through_a}"
    );
    assert!(
        python_sent > 0 && ours_sent > 0,
        "python {python_sent}, ours {ours_sent}"
    );
    assert_eq!(python_sent + ours_sent as usize, 600);

    // 5. The last step: today's total carried into our counts.
    let carried = import(&env, &db, &["--quota-only"]).await;
    assert_eq!(
        carried["accounts"]["imported"], 0,
        "--quota-only imports nothing"
    );
    let accounts = legacy(&python, &["accounts", "--database-url", &db.url], &[]).await;
    let python_a = accounts["accounts"]["a@legacy.example"]["daily_sent_count"]
        .as_i64()
        .unwrap();
    let ours_a: i32 = sqlx::query_scalar(
        "SELECT daily_sent_count FROM email_accounts WHERE email = 'a@legacy.example'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    // The Python count holds the day's total of both platforms.
    assert!(
        30 + through_a as i64 <= python_a && python_a <= 150,
        "python {python_a}"
    );
    assert_eq!(
        i64::from(ours_a),
        python_a,
        "ours raised to the day's total"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_python_database_is_unreachable_sends_wait_and_none_is_lost() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.api()
        .add_account(&token, env.smtp.port(), "a@legacy.example", 100, 0)
        .await;
    // Limits shared with a Python database that does not answer (nothing
    // listens on port 1): no send may go out that it could not count.
    env.start_worker_with(&[(
        "PYTHON_DATABASE_URL",
        "postgres://postgres@127.0.0.1:1/gone?sslmode=disable",
    )]);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("held{i}@example.com"))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.smtp.count(), 0, "sent without the shared count");
    for id in &ids {
        assert_eq!(env.status(*id).await, "queued");
    }
    // Once the switch is over (a worker without the setting), every one
    // is delivered, once.
    env.start_worker();
    for id in &ids {
        env.wait_status(*id, "sent", Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.smtp.count(), 3);
}
