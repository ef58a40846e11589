//! Deployment and operations files, each checked by the real tool: nginx in
//! front of two API processes, docker-compose config, promtool, shellcheck,
//! the backup/restore and key-rotation scripts, the health-check
//! subcommands, and RabbitMQ's management API. A missing tool fails the test
//! with a message naming scripts/tools.sh, which installs them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use smtp_sink::Fault;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::python_interop::repo_root;
use crate::support::{binary, eventually, TestEnv, POSTGRES};

/// A tool on PATH, or a clear failure: nothing is skipped silently.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/tools.sh"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Output {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A command with only the given variables (and PATH), run away from the
/// repository so a developer's .env is not read.
fn isolated(program: impl AsRef<std::ffi::OsStr>, vars: &HashMap<String, String>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(vars)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NOTIFY_ENV_FILE", "/dev/null")
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    cmd
}

fn script(name: &str, vars: &HashMap<String, String>) -> Command {
    let mut cmd = isolated("bash", vars);
    cmd.arg(repo_root().join("scripts").join(name));
    cmd
}

/// A long-running process of ours, killed when dropped.
fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    if std::env::var("E2E_QUIET").is_ok() {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd.spawn().expect("spawn")
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

/// `notify-api serve` as a separate process on its own port.
async fn spawn_api(env: &TestEnv, extra: &[(&str, &str)]) -> (Child, u16) {
    let port = free_port();
    let mut cmd = isolated(binary("notify-api"), &env.vars);
    cmd.arg("serve").env("API_PORT", port.to_string());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = spawn(cmd);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    eventually(
        &format!("notify-api on {port}"),
        Duration::from_secs(30),
        || async { http_ok(&client, &url).await.then_some(()) },
    )
    .await;
    (child, port)
}

// ---------------------------------------------------------------- nginx

/// nginx.conf with the lines marked "# test:" pointed at loopback ports,
/// two API processes, a throwaway certificate and a private prefix.
fn nginx_test_config(dir: &Path, http: u16, https: u16, apis: &[u16]) -> String {
    let conf = std::fs::read_to_string(repo_root().join("nginx/nginx.conf")).expect("nginx.conf");
    let d = dir.display();
    let upstreams: String = apis
        .iter()
        .map(|p| format!("server 127.0.0.1:{p} max_fails=2 fail_timeout=10s;\n        "))
        .collect();
    let replacements = [
        ("user nginx;", String::new()),
        ("pid /var/run/nginx.pid;", format!("pid {d}/nginx.pid;")),
        (
            "error_log /var/log/nginx/error.log warn;",
            format!("error_log {d}/error.log warn;"),
        ),
        (
            "access_log /var/log/nginx/access.log main;",
            format!("access_log {d}/access.log main;"),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{http};")),
        (
            "listen 443 ssl http2;",
            format!("listen 127.0.0.1:{https} ssl http2;"),
        ),
        ("server api:8000 max_fails=2 fail_timeout=10s;", upstreams),
        ("/etc/nginx/ssl/cert.pem", format!("{d}/cert.pem")),
        ("/etc/nginx/ssl/key.pem", format!("{d}/key.pem")),
        // Temporary files under the private prefix, not the system's.
        (
            "http {",
            format!(
                "http {{\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
                 fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
            ),
        ),
    ];
    let mut out = conf;
    for (from, to) in replacements {
        assert_eq!(
            out.matches(from).count(),
            1,
            "nginx.conf no longer has exactly one {from:?}; update the test's rewrite"
        );
        out = out.replace(from, &to);
    }
    out
}

/// nginx's master, stopped gracefully on drop: a SIGKILL (tokio's
/// kill_on_drop) would leave its worker processes behind.
struct NginxProcess(Child);

impl Drop for NginxProcess {
    fn drop(&mut self) {
        let Some(pid) = self.0.id() else { return };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        // The master stops its workers first; give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One curl over one connection: the status code of each URL in order.
async fn curl_codes(urls: &[String], extra: &[&str]) -> Vec<u16> {
    let mut cmd = Command::new(tool("curl"));
    cmd.args(["-sk", "--max-time", "20"]).args(extra);
    for url in urls {
        cmd.args(["-o", "/dev/null", "-w", "%{http_code}\\n", url]);
    }
    let out = run(&mut cmd).await;
    out.stdout
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// Status and lower-cased headers of one request.
async fn curl_head(url: &str, extra: &[&str]) -> (u16, HashMap<String, String>) {
    let out = run(Command::new(tool("curl"))
        .args(["-sk", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .args(extra)
        .arg(url))
    .await;
    let mut lines = out.stdout.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_config_validates_and_fronts_two_apis_with_failover_limits_and_headers() {
    let nginx = tool("nginx");
    let openssl = tool("openssl");
    // The API's own per-key limit off, so a 429 here is nginx's.
    let env = TestEnv::with_vars(&[("RATE_LIMIT_ENABLED", "false")]).await;
    let (mut first, first_port) = spawn_api(&env, &[]).await;
    let (_second, second_port) = spawn_api(&env, &[]).await;

    let dir = TempDir::new("notify-nginx");
    let cert = run(Command::new(&openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem")))
    .await;
    assert!(cert.ok, "openssl: {cert}");
    let (http, https) = (free_port(), free_port());
    let conf = nginx_test_config(dir.path(), http, https, &[first_port, second_port]);
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();

    let check = run(Command::new(&nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path))
    .await;
    assert!(check.ok, "nginx -t: {check}");
    assert!(check.stderr.contains("test is successful"), "{check}");

    let mut server = Command::new(&nginx);
    server
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"]);
    let _nginx = NginxProcess(spawn(server));
    let base = format!("https://127.0.0.1:{https}");
    eventually("nginx to answer", Duration::from_secs(20), || async {
        (curl_codes(&[format!("{base}/health")], &[]).await == [200]).then_some(())
    })
    .await;

    // Plain HTTP redirects to HTTPS; nginx answers its own probe there.
    let (status, headers) =
        curl_head(&format!("http://127.0.0.1:{http}/api/v1/version"), &[]).await;
    assert_eq!(status, 301);
    assert!(
        headers["location"].starts_with("https://"),
        "{:?}",
        headers.get("location")
    );
    assert_eq!(
        curl_codes(&[format!("http://127.0.0.1:{http}/nginx-health")], &[]).await,
        [200]
    );

    // TLS 1.2 and 1.3 only.
    assert_eq!(
        curl_codes(&[format!("{base}/health")], &["--tls-max", "1.1"]).await,
        [0],
        "TLS 1.1 must be refused"
    );
    assert_eq!(
        curl_codes(&[format!("{base}/health")], &["--tlsv1.3"]).await,
        [200]
    );

    // Routed: API, docs and the OpenAPI document; security headers on each.
    for path in [
        "/api/v1/version",
        "/docs/",
        "/openapi.json",
        "/health/ready",
    ] {
        let (status, headers) = curl_head(&format!("{base}{path}"), &[]).await;
        assert_eq!(status, 200, "{path}");
        for header in [
            "strict-transport-security",
            "x-content-type-options",
            "x-frame-options",
            "referrer-policy",
            "content-security-policy",
        ] {
            assert!(headers.contains_key(header), "{path} lacks {header}");
        }
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let (status, _) = curl_head(&format!("{base}/metrics"), &[]).await;
    assert_eq!(status, 404, "metrics are not public");

    // One API process dies: traffic continues on the other, GETs and POSTs.
    first.kill().await.unwrap();
    let urls: Vec<String> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                format!("{base}/health")
            } else {
                format!("{base}/api/v1/version")
            }
        })
        .collect();
    let codes = curl_codes(&urls, &[]).await;
    assert!(
        codes.iter().all(|c| *c == 200),
        "after one API died: {codes:?}"
    );
    let login = curl_codes(
        &[format!("{base}/api/v1/auth/token")],
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"api_key":"noti_nope","api_secret":"secret_nope"}"#,
        ],
    )
    .await;
    assert_eq!(login, [401], "a POST reaches the surviving API");

    // Bodies: one the size of a maximum send (20 MiB of content is about
    // 27 MiB as JSON with base64) passes nginx and is read and judged by the
    // API (here: not JSON, a 400); past nginx's limit the 413 still comes in
    // the API's JSON envelope, not as an HTML page.
    let token_url = format!("{base}/api/v1/auth/token");
    for (mib, want) in [(28usize, 400u16), (40, 413)] {
        let body = dir.path().join(format!("body-{mib}.json"));
        std::fs::write(&body, vec![b'x'; mib * 1024 * 1024]).unwrap();
        let out = run(Command::new(tool("curl"))
            .args([
                "-sk",
                "--max-time",
                "30",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
            ])
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(&token_url))
        .await;
        let (answer, code) = out.stdout.rsplit_once('\n').unwrap_or_default();
        assert_eq!(code.trim(), want.to_string(), "{mib} MiB: {out}");
        let answer: serde_json::Value = serde_json::from_str(answer)
            .unwrap_or_else(|_| panic!("{mib} MiB: not JSON: {answer}"));
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }

    // /health is not logged; API requests are.
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    assert!(log.contains("/api/v1/version"), "{log}");
    assert!(
        !log.contains("GET /health "),
        "health checks are logged:\n{log}"
    );

    // Past the burst, the rate-limit zone answers 429 (with the headers).
    let flood: Vec<String> = (0..150).map(|_| format!("{base}/api/v1/version")).collect();
    let codes = curl_codes(&flood, &[]).await;
    let limited = codes.iter().filter(|c| **c == 429 || **c == 503).count();
    let passed = codes.iter().filter(|c| **c == 200).count();
    assert!(limited > 0, "no 429 past the burst: {codes:?}");
    // Earlier requests in this second used part of the burst.
    assert!(passed >= 15, "the burst should pass: {codes:?}");
    let (status, headers) = curl_head(&format!("{base}/api/v1/version"), &[]).await;
    if status == 429 {
        assert!(headers.contains_key("strict-transport-security"));
    }
}

// ---------------------------------------------------------------- compose

async fn compose_config(dir: &Path, files: &[&str]) -> serde_yaml::Value {
    let standalone = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("docker-compose"))
        .find(|p| p.is_file());
    let mut cmd = if let Some(path) = standalone {
        Command::new(path)
    } else {
        let plugin = run(Command::new(tool("docker")).args(["compose", "version"])).await;
        assert!(
            plugin.ok,
            "neither docker-compose nor the docker compose plugin is installed: run scripts/tools.sh"
        );
        let mut cmd = Command::new(tool("docker"));
        cmd.arg("compose");
        cmd
    };
    for f in files {
        cmd.args(["-f", f]);
    }
    let out = run(cmd.arg("config").current_dir(dir)).await;
    assert!(out.ok, "compose config {files:?}: {out}");
    serde_yaml::from_str(&out.stdout).expect("compose config output is YAML")
}

fn service<'a>(config: &'a serde_yaml::Value, name: &str) -> &'a serde_yaml::Value {
    &config["services"][name]
}

/// Container ports a service publishes, from either syntax compose prints
/// ("127.0.0.1:15672:15672/tcp" or {published, target}).
fn container_ports(service: &serde_yaml::Value) -> Vec<u64> {
    let Some(ports) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| match p {
            serde_yaml::Value::String(s) => s
                .split('/')
                .next()
                .and_then(|s| s.rsplit(':').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("port {s:?}")),
            other => other["target"].as_u64().expect("target port"),
        })
        .collect()
}

#[tokio::test]
async fn compose_files_validate_with_health_checks_and_no_published_database_ports() {
    let dir = TempDir::new("notify-compose");
    let root = repo_root();
    for f in ["docker-compose.yml", "docker-compose.override.yml"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(root.join(".env.example"), dir.path().join(".env")).unwrap();

    let prod = compose_config(dir.path(), &["docker-compose.yml"]).await;
    let services: BTreeSet<String> = prod["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let want: BTreeSet<String> = [
        "postgres",
        "redis",
        "rabbitmq",
        "api",
        "worker",
        "scheduler",
        "nginx",
        "prometheus",
        "grafana",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(services, want);
    for name in &services {
        let s = service(&prod, name);
        assert!(
            s["healthcheck"]["test"].as_sequence().is_some(),
            "{name} has no health check"
        );
        if let Some(deps) = s["depends_on"].as_mapping() {
            for (dep, cond) in deps {
                assert_eq!(
                    cond["condition"].as_str(),
                    Some("service_healthy"),
                    "{name} -> {dep:?}"
                );
            }
        }
    }
    for name in ["postgres", "redis"] {
        assert!(
            service(&prod, name)["ports"].is_null(),
            "{name} publishes a port in production"
        );
    }
    let rabbit_ports = container_ports(service(&prod, "rabbitmq"));
    assert_eq!(rabbit_ports, [15672], "only the management UI is published");
    assert!(
        service(&prod, "api")["ports"].is_null(),
        "api is reached through nginx"
    );
    assert_eq!(
        service(&prod, "api")["deploy"]["replicas"].as_u64(),
        Some(2)
    );
    for (name, probe) in [
        ("api", "notify-api"),
        ("worker", "notify-worker"),
        ("scheduler", "notify-scheduler"),
    ] {
        let s = service(&prod, name);
        let test = format!("{:?}", s["healthcheck"]["test"]);
        assert!(
            test.contains(probe) && test.contains("health-check"),
            "{name}: {test}"
        );
        for dep in ["postgres", "redis", "rabbitmq"] {
            assert!(
                !s["depends_on"][dep].is_null(),
                "{name} must wait for {dep}"
            );
        }
        let url = s["environment"]["DATABASE_URL"]
            .as_str()
            .unwrap_or_default();
        assert!(url.contains("@postgres:5432/"), "{name}: {url}");
    }
    for volume in ["postgres_data", "redis_data", "rabbitmq_data"] {
        assert!(!prod["volumes"][volume].is_null(), "volume {volume}");
    }
    assert_eq!(container_ports(service(&prod, "nginx")), [80, 443]);

    // Development: the override adds the SMTP capture server and ports.
    let dev = compose_config(
        dir.path(),
        &["docker-compose.yml", "docker-compose.override.yml"],
    )
    .await;
    let sink = service(&dev, "smtp-sink");
    assert!(format!("{:?}", sink["command"]).contains("smtp-sink"));
    assert!(sink["healthcheck"]["test"].as_sequence().is_some());
    assert_eq!(container_ports(service(&dev, "postgres")), [5432]);
    assert_eq!(container_ports(service(&dev, "smtp-sink")), [2525]);
    assert!(!service(&dev, "worker")["depends_on"]["smtp-sink"].is_null());

    // The image compose runs: built in stages, small, non-root, no curl.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(" AS build"), "multi-stage");
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("USER notify"));
    let runtime = dockerfile
        .split("FROM debian:bookworm-slim")
        .nth(1)
        .unwrap_or_default();
    let installs: String = runtime
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !installs.contains("curl") && !installs.contains("wget"),
        "the runtime image probes with health-check, not curl"
    );
    for bin in [
        "notify-api",
        "notify-worker",
        "notify-scheduler",
        "smtp-sink",
    ] {
        assert!(
            dockerfile.contains(&format!("target/release/{bin}")),
            "{bin}"
        );
    }
}

// ---------------------------------------------------------------- prometheus

/// Metric names in a PromQL expression: identifiers that are not functions,
/// keywords, label names or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may be followed by `by (...)` rather than `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Drop string literals, label matchers and range selectors first.
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    let mut escaped = false;
    for c in expr.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
    }
    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number, exponent included.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let followed_by_paren = chars.get(j) == Some(&'(');
            if LISTS.contains(&word.as_str()) {
                // Skip the label list.
                if followed_by_paren {
                    while j < chars.len() && chars[j] != ')' {
                        j += 1;
                    }
                    i = j + 1;
                }
                continue;
            }
            if KEYWORDS.contains(&word.as_str()) || followed_by_paren {
                continue;
            }
            names.insert(word);
            continue;
        }
        i += 1;
    }
    names
}

fn exposition_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names = metric_names(
        r#"sum by (account) (rate(messages_failed_total{queue!~".*\\.delay"}[5m])) / clamp_min(x_total offset 5m, 1e-9) > 0.05 and on (account) max(up{job="a"}) == 1"#,
    );
    let want: BTreeSet<String> = ["messages_failed_total", "x_total", "up"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_files_pass_promtool_and_alerts_name_only_exported_metrics() {
    let promtool = tool("promtool");
    let monitoring = repo_root().join("monitoring");
    let rules = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(monitoring.join("alerts.yml")))
    .await;
    assert!(rules.ok, "promtool check rules: {rules}");
    let config = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(monitoring.join("prometheus.yml")))
    .await;
    assert!(config.ok, "promtool check config: {config}");

    // Live metrics: an API with an account, a worker that sent one message
    // and failed another.
    let metrics_port = free_port();
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.api()
        .add_account(&token, env.smtp.port(), "metrics@example.com", 100, 0)
        .await;
    env.start_worker_with(&[("METRICS_PORT", &metrics_port.to_string())]);
    let scheduler_port = free_port();
    env.vars
        .insert("METRICS_PORT".into(), scheduler_port.to_string());
    env.start_scheduler();
    env.smtp.set_recipient_fault(
        "nobody@example.org",
        Fault::Reply(550, "5.1.1 No such user".into()),
    );
    let sent = env.api().send_simple(&token, "someone@example.org").await;
    let failed = env.api().send_simple(&token, "nobody@example.org").await;
    env.wait_status(sent, "sent", Duration::from_secs(30)).await;
    env.wait_status(failed, "failed", Duration::from_secs(30))
        .await;

    let client = reqwest::Client::new();
    let api_metrics = client
        .get(env.api().url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let worker_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let worker_metrics = eventually(
        "worker metrics with sends",
        Duration::from_secs(10),
        || async {
            let text = client
                .get(&worker_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("messages_failed_total").then_some(text)
        },
    )
    .await;
    let rabbit_metrics = client
        .get("http://127.0.0.1:15692/metrics/per-object")
        .send()
        .await
        .expect("RabbitMQ's Prometheus endpoint on 15692 (scripts/tools.sh enables it)")
        .text()
        .await
        .unwrap();
    assert!(
        api_metrics.contains("email_account_quota_remaining{account=\"metrics@example.com\"} 99"),
        "{api_metrics}"
    );
    assert!(api_metrics.contains("email_account_circuit_open{account=\"metrics@example.com\"} 0"));
    assert!(api_metrics.contains("email_account_active{account=\"metrics@example.com\"} 1"));
    assert!(api_metrics.contains("email_account_daily_limit{account=\"metrics@example.com\"} 100"));
    let scheduler_url = format!("http://127.0.0.1:{scheduler_port}/metrics");
    let scheduler_metrics = eventually(
        "scheduler metrics with the webhook backlog",
        Duration::from_secs(10),
        || async {
            let text = client
                .get(&scheduler_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("webhook_delivery_backlog_age_seconds")
                .then_some(text)
        },
    )
    .await;
    let mut exported = exposition_names(&api_metrics);
    exported.extend(exposition_names(&worker_metrics));
    exported.extend(exposition_names(&scheduler_metrics));
    exported.extend(exposition_names(&rabbit_metrics));
    // Made by Prometheus itself for every scrape target.
    exported.insert("up".into());

    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(monitoring.join("alerts.yml")).unwrap())
            .unwrap();
    let mut named = BTreeSet::new();
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            named.extend(metric_names(rule["expr"].as_str().unwrap()));
        }
    }
    for required in [
        "messages_failed_total",
        "messages_sent_total",
        "rabbitmq_queue_messages",
        "up",
        "email_account_circuit_open",
        "email_account_quota_remaining",
        "outbox_pending_messages",
        "webhook_delivery_backlog_age_seconds",
    ] {
        assert!(named.contains(required), "no alert uses {required}");
    }
    let missing: Vec<_> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "alerts name metrics nobody exports: {missing:?}"
    );

    // Jobs named in up{job=...} exist in the scrape config.
    let prometheus = std::fs::read_to_string(monitoring.join("prometheus.yml")).unwrap();
    for job in [
        "notify-api",
        "notify-worker",
        "notify-scheduler",
        "rabbitmq",
    ] {
        assert!(prometheus.contains(&format!("job_name: {job}")), "{job}");
    }

    // The Grafana dashboard only graphs metrics that exist.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring.join("grafana/dashboards/notify-platform.json"))
            .unwrap(),
    )
    .unwrap();
    let mut graphed = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            graphed.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    // Counters that only appear after their event (a retry, an outbox relay
    // error...) are known from the code instead of this run.
    let in_code = metric_names_in_code();
    let unknown: Vec<_> = graphed
        .iter()
        .filter(|m| {
            let base = m
                .strip_suffix("_bucket")
                .or_else(|| m.strip_suffix("_count"))
                .or_else(|| m.strip_suffix("_sum"))
                .unwrap_or(m);
            !exported.contains(*m) && !in_code.contains(base)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboard graphs unknown metrics: {unknown:?}"
    );
}

/// Names passed to metrics::counter!/gauge!/histogram! in the workspace.
fn metric_names_in_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["platform", "api", "worker", "scheduler"]
        .iter()
        .map(|d| repo_root().join(d).join("src"))
        .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for mac in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                for piece in text.split(mac).skip(1) {
                    if let Some(name) = piece.split('"').next() {
                        names.insert(name.to_string());
                    }
                }
            }
            // Names listed for zero-initialisation.
            for piece in text.split('"').skip(1).step_by(2) {
                if piece.ends_with("_total") {
                    names.insert(piece.to_string());
                }
            }
        }
    }
    names
}

// ---------------------------------------------------------------- scripts

#[tokio::test]
async fn shell_scripts_pass_shellcheck() {
    let shellcheck = tool("shellcheck");
    let scripts = repo_root().join("scripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&scripts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    files.sort();
    for required in [
        "create_api_key.sh",
        "backup_database.sh",
        "restore_database.sh",
        "health_check.sh",
        "rotate_encryption_key.sh",
        "import_python.sh",
    ] {
        assert!(
            files.contains(&scripts.join(required)),
            "scripts/{required} is missing"
        );
    }
    let out = run(Command::new(shellcheck)
        .arg("-x")
        .args(&files)
        .current_dir(&scripts))
    .await;
    assert!(out.ok, "shellcheck: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_api_key_script_prints_a_key_that_gets_a_token() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    let mut vars = env.vars.clone();
    vars.insert(
        "NOTIFY_API_BIN".into(),
        binary("notify-api").display().to_string(),
    );
    let out = run(script("create_api_key.sh", &vars).args([
        "--name",
        "ops",
        "--description",
        "made by the script",
        "--admin",
    ]))
    .await;
    assert!(out.ok, "create_api_key.sh: {out}");
    let field = |label: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {label} in {out}"))
    };
    let (key, secret) = (field("API Key:"), field("API Secret:"));
    assert!(key.starts_with("noti_"), "{key}");
    let res = env.api().sign_in(key, secret).await;
    assert_eq!(res.status, reqwest::StatusCode::OK, "{}", res.body);
    let missing = run(&mut script("create_api_key.sh", &vars)).await;
    assert!(!missing.ok, "no arguments must fail: {missing}");
}

async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', id::text, email, smtp_password_key_id, encode(smtp_password_ciphertext, 'hex'),
                daily_limit, priority, is_active)
         FROM email_accounts ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let messages: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', id::text, task_id, status) FROM message_records ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.extend(messages);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_drop_then_restore_keeps_the_data() {
    tool("pg_dump");
    tool("pg_restore");
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    for n in 0..3 {
        env.api()
            .add_account(
                &token,
                env.smtp.port(),
                &format!("b{n}@example.com"),
                50 + n,
                n,
            )
            .await;
    }
    env.api().send_simple(&token, "kept@example.org").await;
    let before = snapshot(&env.pool).await;
    assert_eq!(before.len(), 4);

    let dir = TempDir::new("notify-backup");
    // Retention: a 10-day-old backup goes, a 3-day-old one stays.
    let old = dir.path().join("notify_db_20000101_000000.dump.gz");
    let recent = dir.path().join("notify_db_20000102_000000.dump.gz");
    for (file, age) in [(&old, "10 days ago"), (&recent, "3 days ago")] {
        std::fs::write(file, b"old").unwrap();
        let touched = run(Command::new("touch").args(["-d", age]).arg(file)).await;
        assert!(touched.ok, "{touched}");
    }
    let backup = run(script("backup_database.sh", &env.vars)
        .arg("--dir")
        .arg(dir.path())
        .args(["--keep-days", "7"]))
    .await;
    assert!(backup.ok, "backup: {backup}");
    let file = PathBuf::from(backup.stdout.lines().last().unwrap_or_default());
    assert!(file.is_file(), "{backup}");
    assert!(file.to_string_lossy().ends_with(".dump.gz"));
    assert!(!old.exists(), "retention kept a 10-day-old backup");
    assert!(recent.exists(), "retention removed a 3-day-old backup");

    // The database is lost.
    let database = env.vars["DATABASE_URL"]
        .rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_string();
    let admin = PgPool::connect(&format!("{POSTGRES}/postgres?sslmode=disable"))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    // A corrupt file is refused before anything is touched.
    let bad = dir.path().join("bad.dump.gz");
    std::fs::write(&bad, b"not a backup").unwrap();
    let refused = run(script("restore_database.sh", &env.vars)
        .arg("--yes")
        .arg(&bad))
    .await;
    assert!(!refused.ok, "a corrupt backup was restored: {refused}");

    let restore = run(script("restore_database.sh", &env.vars)
        .arg("--yes")
        .arg(&file))
    .await;
    assert!(restore.ok, "restore: {restore}");
    assert!(
        restore.stderr.contains("3 email accounts, 1 messages"),
        "{restore}"
    );
    let pool = PgPool::connect(&env.vars["DATABASE_URL"]).await.unwrap();
    assert_eq!(snapshot(&pool).await, before);
    pool.close().await;
}

// ---------------------------------------------------------------- key rotation

const K1: &str = "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=";
const K2: &str = "c2Vjb25kIDMyIGJ5dGUga2V5IGZvciByb3RhdGlvbiE=";
const K3: &str = "dGhpcmQgMzIgYnl0ZSBrZXksIG5ldmVyIHVzZWQhISE=";

async fn key_ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT smtp_password_key_id FROM email_accounts ORDER BY email")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reencrypts_and_every_account_sends_with_only_the_new_key() {
    let mut env = TestEnv::with_vars(&[("ENCRYPTION_KEY", K1), ("ENCRYPTION_KEY_ID", "k1")]).await;
    let token = env.start_api_as_admin().await;
    // A limit of one each: three sends must go through all three accounts.
    for n in 0..3 {
        env.api()
            .add_account(&token, env.smtp.port(), &format!("r{n}@example.com"), 1, 0)
            .await;
    }
    assert_eq!(key_ids(&env.pool).await, ["k1", "k1", "k1"]);
    // A webhook endpoint whose secret was rotated: two sealed secrets.
    let hook = env
        .api()
        .create(
            "/api/v1/webhooks",
            &token,
            &json!({"url": "https://hooks.example.com/in", "event_types": ["email.sent"]}),
        )
        .await;
    let rotated = env
        .api()
        .post(
            &format!("/api/v1/webhooks/{hook}/rotate-secret"),
            &token,
            &json!({}),
        )
        .await;
    assert!(rotated.status.is_success(), "{}", rotated.body);
    let secret_key_ids = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT secret_key_id, previous_secret_key_id FROM webhook_endpoints",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    assert_eq!(secret_key_ids().await, ("k1".into(), Some("k1".into())));
    // A DKIM key of the accounts' domain: its private half is sealed too.
    let dkim = env
        .api()
        .post(
            "/api/v1/admin/dkim-keys",
            &token,
            &json!({"domain": "example.com", "selector": "s1", "algorithm": "ed25519"}),
        )
        .await;
    assert!(dkim.status.is_success(), "{}", dkim.body);
    let dkim_key_id = || async {
        sqlx::query_scalar::<_, String>("SELECT private_key_key_id FROM dkim_keys")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    assert_eq!(dkim_key_id().await, "k1");

    let mut rotated_vars = env.vars.clone();
    rotated_vars.insert("ENCRYPTION_KEY".into(), K2.into());
    rotated_vars.insert("ENCRYPTION_KEY_ID".into(), "k2".into());
    rotated_vars.insert("ENCRYPTION_PREVIOUS_KEYS".into(), format!("k1:{K1}"));
    rotated_vars.insert(
        "NOTIFY_API_BIN".into(),
        binary("notify-api").display().to_string(),
    );
    let rotation = run(&mut script("rotate_encryption_key.sh", &rotated_vars)).await;
    assert!(rotation.ok, "rotation: {rotation}");
    assert!(rotation.stdout.contains("6 re-encrypted"), "{rotation}");
    assert_eq!(key_ids(&env.pool).await, ["k2", "k2", "k2"]);
    assert_eq!(secret_key_ids().await, ("k2".into(), Some("k2".into())));
    assert_eq!(dkim_key_id().await, "k2");

    // Re-running is harmless.
    let again = run(&mut script("rotate_encryption_key.sh", &rotated_vars)).await;
    assert!(again.ok, "{again}");
    assert!(
        again.stdout.contains("0 re-encrypted, 6 already current"),
        "{again}"
    );

    // A key that opens nothing fails loudly and changes nothing.
    let mut wrong = rotated_vars.clone();
    wrong.insert("ENCRYPTION_KEY".into(), K3.into());
    wrong.insert("ENCRYPTION_KEY_ID".into(), "k3".into());
    wrong.remove("ENCRYPTION_PREVIOUS_KEYS");
    let failed = run(&mut script("rotate_encryption_key.sh", &wrong)).await;
    assert!(!failed.ok, "{failed}");
    assert!(failed.stderr.contains("r0@example.com"), "{failed}");
    assert_eq!(key_ids(&env.pool).await, ["k2", "k2", "k2"]);
    // A different key under the same id: rows "already current" by their
    // id no longer open, and the rotation says so instead of succeeding.
    let mut same_id = rotated_vars.clone();
    same_id.insert("ENCRYPTION_KEY".into(), K3.into());
    same_id.remove("ENCRYPTION_PREVIOUS_KEYS");
    let failed = run(&mut script("rotate_encryption_key.sh", &same_id)).await;
    assert!(!failed.ok, "{failed}");
    assert!(failed.stderr.contains("r2@example.com"), "{failed}");

    // The old key is gone: a worker with only k2 sends through every account.
    env.start_worker_with(&[("ENCRYPTION_KEY", K2), ("ENCRYPTION_KEY_ID", "k2")]);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            env.api()
                .send_simple(&token, &format!("to{n}@example.org"))
                .await,
        );
    }
    for id in ids {
        env.wait_status(id, "sent", Duration::from_secs(30)).await;
    }
    let used: Vec<i32> =
        sqlx::query_scalar("SELECT daily_sent_count FROM email_accounts ORDER BY email")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(used, [1, 1, 1]);
    let received = env.smtp.received();
    assert_eq!(received.len(), 3);
    // The re-sealed DKIM key opens with k2 alone: every email is signed.
    for mail in received {
        let text = String::from_utf8_lossy(&mail.data);
        assert!(
            text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------- health checks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_subcommands_and_script_report_every_service() {
    tool("curl");
    tool("redis-cli");
    tool("pg_isready");
    let mut env = TestEnv::new().await;
    let (_api, api_port) = spawn_api(&env, &[]).await;
    let (worker_port, scheduler_port) = (free_port(), free_port());
    env.start_worker_with(&[("METRICS_PORT", &worker_port.to_string())]);
    let mut scheduler_cmd = isolated(binary("notify-scheduler"), &env.vars);
    scheduler_cmd.env("METRICS_PORT", scheduler_port.to_string());
    let mut scheduler = spawn(scheduler_cmd);

    let probe = |bin: &str, var: &str, port: Option<u16>| {
        let mut cmd = isolated(binary(bin), &HashMap::new());
        cmd.arg("health-check");
        if let Some(port) = port {
            cmd.env(var, port.to_string());
        }
        cmd
    };
    let healthy = |bin: &'static str, var: &'static str, port: u16| {
        let mut cmd = probe(bin, var, Some(port));
        async move {
            let out = run(&mut cmd).await;
            out.ok.then_some(())
        }
    };
    eventually("api health-check", Duration::from_secs(10), || {
        healthy("notify-api", "API_PORT", api_port)
    })
    .await;
    eventually("worker health-check", Duration::from_secs(20), || {
        healthy("notify-worker", "METRICS_PORT", worker_port)
    })
    .await;
    eventually("scheduler health-check", Duration::from_secs(20), || {
        healthy("notify-scheduler", "METRICS_PORT", scheduler_port)
    })
    .await;
    let closed = free_port();
    let down = run(&mut probe("notify-api", "API_PORT", Some(closed))).await;
    assert_eq!(down.code, Some(1), "{down}");
    assert!(down.stderr.contains("unhealthy"), "{down}");
    let unset = run(&mut probe("notify-worker", "METRICS_PORT", None)).await;
    assert_eq!(unset.code, Some(1), "{unset}");
    assert!(unset.stderr.contains("METRICS_PORT"), "{unset}");

    let mut vars = env.vars.clone();
    vars.insert("API_URL".into(), format!("http://127.0.0.1:{api_port}"));
    vars.insert(
        "WORKER_METRICS_URL".into(),
        format!("http://127.0.0.1:{worker_port}"),
    );
    vars.insert(
        "SCHEDULER_METRICS_URL".into(),
        format!("http://127.0.0.1:{scheduler_port}"),
    );
    let all = run(&mut script("health_check.sh", &vars)).await;
    assert!(all.ok, "health_check.sh: {all}");
    for name in [
        "api",
        "ready",
        "worker",
        "scheduler",
        "postgres",
        "redis",
        "rabbitmq",
    ] {
        assert!(
            all.stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" ok ")),
            "{name} not reported ok: {all}"
        );
    }

    scheduler.kill().await.unwrap();
    let one_down = run(&mut script("health_check.sh", &vars)).await;
    assert_eq!(one_down.code, Some(1), "{one_down}");
    assert!(
        one_down
            .stdout
            .lines()
            .any(|l| l.starts_with("scheduler") && l.contains("FAIL")),
        "{one_down}"
    );
}

// ---------------------------------------------------------------- RabbitMQ

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_management_api_shows_durable_platform_queues_with_consumers() {
    let mut env = TestEnv::new().await;
    let token = env.start_api_as_admin().await;
    env.api()
        .add_account(&token, env.smtp.port(), "mq@example.com", 10, 0)
        .await;
    env.start_worker();
    // The worker is up and consuming once a message goes through.
    env.send_until(&token, "mq@example.org", "sent", Duration::from_secs(30))
        .await;

    let client = reqwest::Client::new();
    let dead_letter = format!("{}.dead_letter", env.queue);
    let queues = eventually(
        "the management API to list the queues with a consumer",
        Duration::from_secs(30),
        || async {
            let res = client
                .get("http://127.0.0.1:15672/api/queues?columns=name,vhost,durable,consumers")
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .ok()?;
            let all: Vec<Value> = res.json().await.ok()?;
            let find = |name: &str| all.iter().find(|q| q["name"] == name).cloned();
            let (tasks, dead) = (find(&env.queue)?, find(&dead_letter)?);
            (tasks["consumers"].as_u64()? >= 1).then_some((tasks, dead))
        },
    )
    .await;
    let (tasks, dead) = queues;
    assert_eq!(tasks["durable"], json!(true), "{tasks}");
    assert_eq!(dead["durable"], json!(true), "{dead}");
    assert_eq!(tasks["vhost"], json!("/"));
}
