//! Headless Chromium (Debian's `chromium` and `chromium-driver`, installed
//! by scripts/tools.sh) driven over WebDriver: each test starts its own
//! chromedriver on a free port, in a process group of its own, and kills
//! that group by its id when done (the browser with it).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

/// Where the test run saves its screenshots (`target/console-screenshots/`).
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("console-screenshots")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new("chromedriver");
        driver
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let driver = driver
            .spawn()
            .expect("chromedriver (scripts/tools.sh installs chromium-driver)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("console-chromium-{}", uuid::Uuid::new_v4()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1366,900", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        Browser {
            client,
            driver,
            profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Types `text` into the field `#id` (after clearing it).
    pub async fn fill(&self, id: &str, text: &str) {
        let field = self.client.find(Locator::Id(id)).await.expect(id);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    pub async fn h1(&self) -> String {
        self.text("h1").await.unwrap_or_default()
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Waits until the page's `h1` reads `title`.
    pub async fn wait_h1(&self, title: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let h1 = self.h1().await;
            if h1 == title {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected a page titled {title:?}, at {:?} titled {h1:?}: {:?}",
                self.client.current_url().await.map(|u| u.to_string()),
                self.text("main").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves what the browser shows as `<name>.png` under
    /// `target/console-screenshots/`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Signs in on the console at `base` with `key` and `secret` and waits
    /// for the overview.
    pub async fn sign_in(&self, base: &str, key: &str, secret: &str) {
        self.goto(&format!("{base}/console/sign-in")).await;
        self.fill("api_key", key).await;
        self.fill("api_secret", secret).await;
        self.click("form.card button[type=submit]").await;
        self.wait_h1("Overview").await;
    }

    /// The value of the session cookie, as the browser holds it.
    pub async fn session_cookie(&self) -> fantoccini::cookies::Cookie<'static> {
        self.client
            .get_named_cookie("notify_console")
            .await
            .expect("the session cookie")
    }

    /// Ends the session, then the driver's process group (the browser).
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.kill();
        let _ = self.driver.wait().await;
    }

    fn kill(&mut self) {
        if let Some(pid) = self.driver.id() {
            // The whole group: chromedriver and the browser it started.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
