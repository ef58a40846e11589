//! A small SMTP server for tests and development.
//!
//! It speaks enough ESMTP for real clients (EHLO, AUTH PLAIN/LOGIN, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT), records every message
//! it accepts, and can be told to reject with any reply code or to drop the
//! connection at a chosen stage, globally or for one recipient. For
//! benchmarks it can answer as slowly as a real provider ([`Latency`]) and
//! cap the connections each login may hold at once, as providers do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Largest message accepted, advertised with SIZE.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    pub auth_user: Option<String>,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as transmitted, without the terminating dot.
    pub data: Vec<u8>,
    /// When its transaction began (MAIL FROM) and when the data was taken
    /// (before the final reply): what tests of rates and concurrency read.
    pub started_at: SystemTime,
    pub received_at: SystemTime,
}

impl ReceivedMail {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Where in the conversation a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Connect,
    Auth,
    MailFrom,
    RcptTo,
    /// After the message data has been received, before the final reply.
    DataEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Reply with this code and text instead of accepting.
    Reply(u16, String),
    /// Close the TCP connection without replying.
    Drop,
    /// Say nothing for this long, then carry on (a hung server).
    Stall(Duration),
}

/// A delay: fixed, or drawn evenly from `min..=max` for each reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delay {
    pub min: Duration,
    pub max: Duration,
}

impl Delay {
    pub fn fixed(d: Duration) -> Self {
        Delay { min: d, max: d }
    }

    /// `150` (ms) or `100-200` (ms, drawn evenly).
    pub fn parse(text: &str) -> Result<Self, String> {
        let ms = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("not a number of milliseconds: {t:?}"))
        };
        match text.split_once('-') {
            Some((lo, hi)) => {
                let (min, max) = (ms(lo)?, ms(hi)?);
                if min > max {
                    return Err(format!("{text:?}: the low end is above the high end"));
                }
                Ok(Delay { min, max })
            }
            None => Ok(Delay::fixed(ms(text)?)),
        }
    }

    fn draw(&self, seed: &mut u64) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        // xorshift64: no dependency, and evenness is all a benchmark needs.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let span = (self.max - self.min).as_micros() as u64 + 1;
        self.min + Duration::from_micros(*seed % span)
    }
}

/// How long the server takes before each reply, as a real provider does
/// (greeting, MAIL, each RCPT, and the final reply after the data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub greeting: Delay,
    pub mail: Delay,
    pub rcpt: Delay,
    pub data_end: Delay,
}

impl Latency {
    /// `greeting=50,mail=0,rcpt=50,data=150-250` (ms); stages left out
    /// answer at once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut latency = Latency::default();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (stage, delay) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected stage=milliseconds"))?;
            let delay = Delay::parse(delay)?;
            match stage.trim() {
                "greeting" => latency.greeting = delay,
                "mail" => latency.mail = delay,
                "rcpt" => latency.rcpt = delay,
                "data" => latency.data_end = delay,
                other => {
                    return Err(format!(
                        "unknown stage {other:?} (greeting, mail, rcpt, data)"
                    ))
                }
            }
        }
        Ok(latency)
    }
}

#[derive(Default)]
struct State {
    received: Vec<ReceivedMail>,
    faults: HashMap<Stage, Fault>,
    recipient_faults: HashMap<String, Fault>,
    /// When non-empty, AUTH must match one of these user → password pairs.
    credentials: HashMap<String, String>,
    connections: usize,
    /// Mail transactions in progress now, and the most seen at once.
    transactions: usize,
    peak_transactions: usize,
    /// Connections waiting for their greeting now, and the most at once.
    greeting: usize,
    peak_greeting: usize,
    latency: Latency,
    /// Connections one login may hold at once (0: no limit); the next is
    /// refused with 421 at AUTH, as providers do.
    max_connections_per_login: usize,
    /// Authenticated connections per login now, the most seen at once,
    /// and how many were refused for the limit.
    logins: HashMap<String, usize>,
    peak_logins: HashMap<String, usize>,
    refused_for_limit: usize,
}

pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("loopback address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let arrived = Arc::new(Notify::new());
        let task = tokio::spawn(accept_loop(listener, state.clone(), arrived.clone()));
        Ok(SmtpSink {
            addr,
            state,
            arrived,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requires AUTH before MAIL, accepting this user with this password
    /// (call again to accept more users).
    pub fn require_auth(&self, user: &str, password: &str) {
        self.lock()
            .credentials
            .insert(user.to_string(), password.to_string());
    }

    pub fn set_fault(&self, stage: Stage, fault: Fault) {
        self.lock().faults.insert(stage, fault);
    }

    /// Applies `fault` at RCPT TO for this recipient only.
    pub fn set_recipient_fault(&self, recipient: &str, fault: Fault) {
        self.lock()
            .recipient_faults
            .insert(recipient.to_ascii_lowercase(), fault);
    }

    /// Answers as slowly as `latency` says from now on.
    pub fn set_latency(&self, latency: Latency) {
        self.lock().latency = latency;
    }

    /// Refuses (421 at AUTH) a login's connection beyond `max` at once;
    /// 0 lifts the limit.
    pub fn limit_connections_per_login(&self, max: usize) {
        self.lock().max_connections_per_login = max;
    }

    /// The most connections any one login held at once.
    pub fn peak_connections_per_login(&self) -> usize {
        self.lock().peak_logins.values().copied().max().unwrap_or(0)
    }

    /// Connections refused because their login was at its limit.
    pub fn refused_for_limit(&self) -> usize {
        self.lock().refused_for_limit
    }

    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.faults.clear();
        state.recipient_faults.clear();
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.lock().received.clone()
    }

    /// How many messages have arrived (without copying them).
    pub fn count(&self) -> usize {
        self.lock().received.len()
    }

    /// The most mail transactions (MAIL FROM to the end of DATA) that were
    /// in progress at the same time.
    pub fn peak_transactions(&self) -> usize {
        self.lock().peak_transactions
    }

    /// The most connections that were waiting for their greeting at the
    /// same time (opened at once).
    pub fn peak_greeting(&self) -> usize {
        self.lock().peak_greeting
    }

    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Waits until at least `count` messages have arrived, or the timeout.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.received();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, arrived: Arc<Notify>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let arrived = arrived.clone();
        tokio::spawn(async move {
            let _ = Session::new(stream, state, arrived).run().await;
        });
    }
}

struct Session {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    auth_user: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    in_transaction: bool,
    transaction_started: Option<SystemTime>,
    /// For drawing delays.
    seed: u64,
}

enum Step {
    Continue,
    Close,
}

impl Session {
    fn new(stream: TcpStream, state: Arc<Mutex<State>>, arrived: Arc<Notify>) -> Self {
        let (read, write) = stream.into_split();
        Session {
            reader: BufReader::new(read),
            writer: write,
            state,
            arrived,
            auth_user: None,
            in_transaction: false,
            transaction_started: None,
            mail_from: None,
            rcpt_to: Vec::new(),
            seed: {
                static NEXT: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(0x9E37_79B9_7F4A_7C15);
                NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed) | 1
            },
        }
    }

    /// Waits as long as the configured latency says for this stage.
    async fn pause(&mut self, stage: fn(&Latency) -> Delay) {
        let delay = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            stage(&state.latency)
        };
        let d = delay.draw(&mut self.seed);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Counts an authenticated connection of `user`; false when the login
    /// is at its limit.
    fn take_login(&mut self, user: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let limit = state.max_connections_per_login;
        let held = state.logins.get(user).copied().unwrap_or(0);
        if limit > 0 && held >= limit {
            state.refused_for_limit += 1;
            return false;
        }
        state.logins.insert(user.to_string(), held + 1);
        let peak = state.peak_logins.entry(user.to_string()).or_default();
        *peak = (*peak).max(held + 1);
        true
    }

    fn release_login(&mut self) {
        if let Some(user) = &self.auth_user {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = state.logins.get_mut(user) {
                *held = held.saturating_sub(1);
            }
        }
    }

    fn begin_transaction(&mut self) {
        if !self.in_transaction {
            self.in_transaction = true;
            self.transaction_started = Some(SystemTime::now());
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.transactions += 1;
            state.peak_transactions = state.peak_transactions.max(state.transactions);
        }
    }

    fn end_transaction(&mut self) {
        if self.in_transaction {
            self.in_transaction = false;
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.transactions = state.transactions.saturating_sub(1);
        }
    }

    fn fault(&self, stage: Stage) -> Option<Fault> {
        self.state.lock().ok()?.faults.get(&stage).cloned()
    }

    /// Applies an injected fault. `Some(step)` means the fault replaced the reply.
    async fn inject(&mut self, fault: Option<Fault>) -> std::io::Result<Option<Step>> {
        match fault {
            None => Ok(None),
            Some(Fault::Drop) => Ok(Some(Step::Close)),
            Some(Fault::Stall(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(Fault::Reply(code, text)) => {
                self.reply(code, &text).await?;
                Ok(Some(if code == 421 {
                    Step::Close
                } else {
                    Step::Continue
                }))
            }
        }
    }

    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        self.writer
            .write_all(format!("{code} {text}\r\n").as_bytes())
            .await
    }

    async fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    }

    async fn run(mut self) -> std::io::Result<()> {
        if let Ok(mut s) = self.state.lock() {
            s.connections += 1;
        }
        let fault = self.fault(Stage::Connect);
        if let Some(Step::Close) = self.inject(fault).await? {
            return Ok(());
        }
        if let Ok(mut s) = self.state.lock() {
            s.greeting += 1;
            s.peak_greeting = s.peak_greeting.max(s.greeting);
        }
        self.pause(|l| l.greeting).await;
        if let Ok(mut s) = self.state.lock() {
            s.greeting -= 1;
        }
        self.reply(220, "smtp-sink ESMTP ready").await?;
        let mut ended = Ok(());
        loop {
            match self.read_line().await {
                Ok(Some(line)) => match self.command(&line).await {
                    Ok(Step::Continue) => {}
                    Ok(Step::Close) => break,
                    Err(e) => {
                        ended = Err(e);
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    ended = Err(e);
                    break;
                }
            }
        }
        self.end_transaction();
        self.release_login();
        ended?;
        let _ = self.writer.shutdown().await;
        Ok(())
    }

    async fn command(&mut self, line: &str) -> std::io::Result<Step> {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                let banner = format!(
                    "250-smtp-sink greets {rest}\r\n250-SIZE {MAX_MESSAGE}\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n"
                );
                self.writer.write_all(banner.as_bytes()).await?;
            }
            "HELO" => self.reply(250, "smtp-sink").await?,
            "AUTH" => return self.auth(rest).await,
            "MAIL" => {
                let fault = self.fault(Stage::MailFrom);
                if let Some(step) = self.inject(fault).await? {
                    return Ok(step);
                }
                let needs_auth = self
                    .state
                    .lock()
                    .map(|s| !s.credentials.is_empty())
                    .unwrap_or(false);
                self.pause(|l| l.mail).await;
                if needs_auth && self.auth_user.is_none() {
                    self.reply(530, "5.7.0 Authentication required").await?;
                } else {
                    self.mail_from = Some(path_of(rest));
                    self.begin_transaction();
                    self.rcpt_to.clear();
                    self.reply(250, "2.1.0 Ok").await?;
                }
            }
            "RCPT" => {
                let recipient = path_of(rest);
                let fault = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| {
                        s.recipient_faults
                            .get(&recipient.to_ascii_lowercase())
                            .cloned()
                    })
                    .or_else(|| self.fault(Stage::RcptTo));
                if let Some(step) = self.inject(fault).await? {
                    return Ok(step);
                }
                self.pause(|l| l.rcpt).await;
                if self.mail_from.is_none() {
                    self.reply(503, "5.5.1 MAIL first").await?;
                } else {
                    self.rcpt_to.push(recipient);
                    self.reply(250, "2.1.5 Ok").await?;
                }
            }
            "DATA" => return self.data().await,
            "RSET" => {
                self.mail_from = None;
                self.end_transaction();
                self.rcpt_to.clear();
                self.reply(250, "2.0.0 Ok").await?;
            }
            "NOOP" => self.reply(250, "2.0.0 Ok").await?,
            "QUIT" => {
                self.reply(221, "2.0.0 Bye").await?;
                return Ok(Step::Close);
            }
            _ => self.reply(502, "5.5.2 Command not recognized").await?,
        }
        Ok(Step::Continue)
    }

    async fn auth(&mut self, rest: &str) -> std::io::Result<Step> {
        let fault = self.fault(Stage::Auth);
        if let Some(step) = self.inject(fault).await? {
            return Ok(step);
        }
        let mut parts = rest.split_whitespace();
        let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
        let (user, password) = match mechanism.as_str() {
            "PLAIN" => {
                let payload = match parts.next() {
                    Some(p) => p.to_string(),
                    None => {
                        self.writer.write_all(b"334 \r\n").await?;
                        self.read_line().await?.unwrap_or_default()
                    }
                };
                let decoded = decode(&payload);
                let mut fields = decoded.split('\0').skip(1);
                (
                    fields.next().unwrap_or("").to_string(),
                    fields.next().unwrap_or("").to_string(),
                )
            }
            "LOGIN" => {
                self.writer.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                let user = decode(&self.read_line().await?.unwrap_or_default());
                self.writer.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                let password = decode(&self.read_line().await?.unwrap_or_default());
                (user, password)
            }
            _ => {
                self.reply(504, "5.5.4 Unrecognized authentication type")
                    .await?;
                return Ok(Step::Continue);
            }
        };
        let accepted = self
            .state
            .lock()
            .map(|s| s.credentials.is_empty() || s.credentials.get(&user) == Some(&password))
            .unwrap_or(false);
        if accepted && self.auth_user.is_none() && !self.take_login(&user) {
            self.reply(421, "4.7.0 Too many connections for this login")
                .await?;
            return Ok(Step::Close);
        }
        if accepted {
            self.auth_user = Some(user);
            self.reply(235, "2.7.0 Authentication successful").await?;
        } else {
            self.reply(535, "5.7.8 Authentication credentials invalid")
                .await?;
        }
        Ok(Step::Continue)
    }

    async fn data(&mut self) -> std::io::Result<Step> {
        if self.rcpt_to.is_empty() {
            self.reply(503, "5.5.1 RCPT first").await?;
            return Ok(Step::Continue);
        }
        self.reply(354, "End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok(Step::Close);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let content = if line.starts_with(b"..") {
                &line[1..]
            } else {
                &line[..]
            };
            data.extend_from_slice(content);
            if data.len() > MAX_MESSAGE {
                self.reply(552, "5.3.4 Message too big").await?;
                return Ok(Step::Close);
            }
        }
        if data.ends_with(b"\r\n") {
            data.truncate(data.len() - 2);
        }
        self.pause(|l| l.data_end).await;
        let fault = self.fault(Stage::DataEnd);
        let injected = self.inject(fault).await?;
        self.end_transaction();
        if let Some(step) = injected {
            return Ok(step);
        }
        let id = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.received.push(ReceivedMail {
                auth_user: self.auth_user.clone(),
                mail_from: self.mail_from.take().unwrap_or_default(),
                rcpt_to: std::mem::take(&mut self.rcpt_to),
                data,
                started_at: self
                    .transaction_started
                    .take()
                    .unwrap_or_else(SystemTime::now),
                received_at: SystemTime::now(),
            });
            state.received.len()
        };
        self.arrived.notify_waiters();
        self.reply(250, &format!("2.0.0 Ok: queued as SINK{id:06}"))
            .await?;
        Ok(Step::Continue)
    }
}

fn decode(b64: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `FROM:<a@b> SIZE=10` → `a@b`.
fn path_of(argument: &str) -> String {
    let after_colon = argument.split_once(':').map_or(argument, |(_, r)| r);
    let path = after_colon.split_whitespace().next().unwrap_or("");
    path.trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_parse_and_draw_within_their_range() {
        let l = Latency::parse("greeting=50,rcpt=40-60,data=150").unwrap();
        assert_eq!(l.greeting, Delay::fixed(Duration::from_millis(50)));
        assert_eq!(l.mail, Delay::default());
        assert_eq!(l.data_end, Delay::fixed(Duration::from_millis(150)));
        let mut seed = 7;
        for _ in 0..1000 {
            let d = l.rcpt.draw(&mut seed);
            assert!(d >= Duration::from_millis(40) && d <= Duration::from_millis(60));
        }
        assert!(Latency::parse("helo=5").is_err());
        assert!(Latency::parse("data=9-3").is_err());
        assert!(Latency::parse("data").is_err());
    }

    #[test]
    fn paths_are_extracted() {
        assert_eq!(path_of("FROM:<a@b.c> SIZE=10"), "a@b.c");
        assert_eq!(path_of("TO: <x@y.z>"), "x@y.z");
    }
}
