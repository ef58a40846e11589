//! The API running in the test process, and a small JSON client for it.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct RunningApi {
    pub base: String,
    pub client: reqwest::Client,
    pub state: notify_api::state::AppState,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Response {
    /// The machine-readable error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
}

impl RunningApi {
    pub async fn start(settings: platform::Settings, shutdown: CancellationToken) -> RunningApi {
        let app = notify_api::Application::build(settings)
            .await
            .expect("build api");
        let base = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        tokio::spawn(app.run(shutdown));
        RunningApi {
            base,
            client: reqwest::Client::new(),
            state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("http request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 from {path}: {body}"
        );
        Response {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Creates a resource (`POST`, answered 201); returns its id.
    pub async fn create(&self, path: &str, token: &str, body: &Value) -> String {
        let res = self.post(path, token, body).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
        res.body["data"]["id"].as_str().expect("id").to_string()
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Exchanges an API key and secret for tokens (`POST /api/v1/auth/token`).
    pub async fn sign_in(
        &self,
        key: impl serde::Serialize,
        secret: impl serde::Serialize,
    ) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/v1/auth/token",
            None,
            Some(&json!({"api_key": key, "api_secret": secret})),
        )
        .await
    }

    /// Creates an API key directly in the database and exchanges it for an
    /// access token. Returns the key id and the token.
    pub async fn token(&self, pool: &PgPool, scopes: &[&str]) -> (Uuid, String) {
        let credentials = platform::crypto::generate_api_credentials();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let key = platform::db::api_keys::insert(pool, "test", "", &scopes, &credentials)
            .await
            .expect("insert api key");
        let res = self.sign_in(&credentials.key, &credentials.secret).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        (
            key.id,
            res.body["data"]["access_token"]
                .as_str()
                .expect("token")
                .to_string(),
        )
    }

    pub async fn admin_token(&self, pool: &PgPool) -> String {
        self.token(pool, &["send", "read", "admin"]).await.1
    }

    /// Adds an account that sends through the test SMTP server.
    pub async fn add_account(
        &self,
        token: &str,
        smtp_port: u16,
        email: &str,
        daily_limit: i64,
        priority: i64,
    ) -> Value {
        let res = self
            .post(
                "/api/v1/admin/email-accounts",
                token,
                &json!({
                    "email": email, "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                    "smtp_username": email, "smtp_password": format!("pw-{email}"),
                    "display_name": "Test Sender", "daily_limit": daily_limit, "priority": priority,
                    "tls_mode": "none",
                }),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
        res.body["data"].clone()
    }

    /// Sends a simple email; returns the message id.
    pub async fn send_simple(&self, token: &str, to: &str) -> Uuid {
        let res = self
            .post(
                "/api/v1/messages/email/send",
                token,
                &json!({"to": to, "subject": "Hello", "content": "<p>Hello</p>"}),
            )
            .await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
        res.body["data"]["message_id"]
            .as_str()
            .expect("message id")
            .parse()
            .expect("uuid")
    }

    /// Sends one simple email to each of `recipients` in one batch request
    /// (one `send_email_batch` task), all of them accepted.
    pub async fn send_simple_batch(&self, token: &str, recipients: &[String]) {
        let messages: Vec<Value> = recipients
            .iter()
            .map(|to| json!({"to": to, "subject": "Hi", "content": "<p>Hi</p>"}))
            .collect();
        let res = self
            .post(
                "/api/v1/messages/email/batch",
                token,
                &json!({"messages": messages}),
            )
            .await;
        assert_eq!(
            res.body["data"]["accepted"],
            recipients.len(),
            "{}",
            res.body
        );
    }

    /// An admin campaign (on a new, empty list) mailing `template`, which
    /// declares the one variable `who`; returns the campaign's id.
    pub async fn admin_campaign(&self, admin: &str, template: &str) -> String {
        let res = self
            .post(
                "/api/v1/lists",
                admin,
                &json!({"name": format!("l{}", Uuid::new_v4().simple())}),
            )
            .await;
        let list = res.body["data"]["id"]
            .as_str()
            .expect("list id")
            .to_string();
        let res = self
            .post(
                "/api/v1/campaigns",
                admin,
                &json!({"name": "weekly", "template_id": template, "list_ids": [list],
                        "variables": {"who": "all"}, "cron": "0 0 9 * * MON", "time_zone": "UTC"}),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
        res.body["data"]["id"]
            .as_str()
            .expect("campaign id")
            .to_string()
    }
}
