//! A real IMAP server for a test: a Dovecot instance of its own (from
//! Debian's `dovecot-imapd`, installed by scripts/tools.sh) on a loopback
//! port, with its own users and maildirs in a temporary directory. Tests
//! deliver reports into a mailbox with IMAP APPEND, as an MTA's local
//! delivery would, and read flags back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_imap::types::Flag;
use futures_util::TryStreamExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use uuid::Uuid;

use super::eventually;

pub struct Dovecot {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

fn dovecot_binary() -> PathBuf {
    ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("dovecot is not installed: run scripts/tools.sh")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Who Dovecot's processes and mail files run as: its own system users
/// when the tests run as root (it refuses root for them), else the
/// current user.
fn run_as() -> (String, String) {
    let user = std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if user == "root" || user.is_empty() {
        ("dovecot".into(), "dovenull".into())
    } else {
        (user.clone(), user)
    }
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    let (internal, login) = run_as();
    format!(
        "protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = notify-test-{port}
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={internal} gid={internal} home={d}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"
    )
}

impl Dovecot {
    /// Starts a server with `users` (address, password).
    pub async fn start(users: &[(&str, &str)]) -> Dovecot {
        // Short: Dovecot's sockets live under it (108-byte path limit).
        let dir = std::env::temp_dir().join(format!(
            "ndv-{}",
            &Uuid::new_v4().simple().to_string()[..12]
        ));
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dovecot dirs");
        }
        // The mail processes run as Dovecot's user.
        let open = |p: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        open(&dir, 0o755);
        open(&dir.join("mail"), 0o777);
        let passwd: String = users
            .iter()
            .map(|(user, password)| format!("{user}:{{PLAIN}}{password}\n"))
            .collect();
        std::fs::write(dir.join("users"), passwd).expect("users file");
        open(&dir.join("users"), 0o644);
        let port = free_port();
        let conf = dir.join("dovecot.conf");
        std::fs::write(&conf, config(&dir, port)).expect("dovecot.conf");
        let child = Command::new(dovecot_binary())
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        let server = Dovecot { child, dir, port };
        eventually("dovecot to listen", Duration::from_secs(20), || async {
            // Wait for a greeting, not just a port: a bare connect
            // before auth is ready makes Dovecot drop the client.
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let mut client = async_imap::Client::new(tcp);
            client.read_response().await.ok().flatten().map(|_| ())
        })
        .await;
        server
    }

    async fn session(&self, user: &str, password: &str) -> async_imap::Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to dovecot");
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.expect("greeting");
        let mut session = client
            .login(user, password)
            .await
            .map_err(|(e, _)| e)
            .unwrap_or_else(|e| panic!("login {user}: {e}; log: {}", self.log()));
        session.select("INBOX").await.expect("select INBOX");
        session
    }

    /// Delivers `raw` into the user's INBOX.
    pub async fn deliver(&self, user: &str, password: &str, raw: &[u8]) {
        let mut session = self.session(user, password).await;
        session
            .append("INBOX", None, None, raw)
            .await
            .unwrap_or_else(|e| panic!("append: {e}; log: {}", self.log()));
        let _ = session.logout().await;
    }

    /// Each message's UID and flags, by UID.
    pub async fn flags(&self, user: &str, password: &str) -> Vec<(u32, Vec<String>)> {
        let mut session = self.session(user, password).await;
        let fetches: Vec<_> = session
            .uid_fetch("1:*", "(UID FLAGS)")
            .await
            .expect("fetch flags")
            .try_collect()
            .await
            .expect("fetch flags");
        let mut out: Vec<(u32, Vec<String>)> = fetches
            .iter()
            .map(|f| {
                let flags = f
                    .flags()
                    .filter_map(|flag| match flag {
                        Flag::Seen => Some("\\Seen".to_string()),
                        Flag::Custom(name) => Some(name.to_string()),
                        _ => None,
                    })
                    .collect();
                (f.uid.unwrap_or(0), flags)
            })
            .collect();
        drop(fetches);
        let _ = session.logout().await;
        out.sort();
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    /// SIGTERM, so the master stops its children (a SIGKILL would leave
    /// them behind), then the directory goes.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
